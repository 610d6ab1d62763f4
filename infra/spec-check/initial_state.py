#!/usr/bin/env python3
# Recomputes the `tiny` preset's initial state hash (seed 0) from docs/FORMAT.md sections 1.1, 1.2
# and 1.4 alone, with no cairn code: the check that the spec is complete. Needs the blake3
# module (`pip install blake3==1.0.8`); pure Python, about a minute. Prints the hash, which must
# equal the check value in section 1.4.
import struct, math, blake3
M32 = 0xffffffff
def rotl(x, n): return ((x << n) | (x >> (32 - n))) & M32
def qr(s, a, b, c, d):
    s[a]=(s[a]+s[b])&M32; s[d]=rotl(s[d]^s[a],16)
    s[c]=(s[c]+s[d])&M32; s[b]=rotl(s[b]^s[c],12)
    s[a]=(s[a]+s[b])&M32; s[d]=rotl(s[d]^s[a],8)
    s[c]=(s[c]+s[d])&M32; s[b]=rotl(s[b]^s[c],7)
def chacha8_words(key):
    k = list(struct.unpack('<8I', key))
    const = list(struct.unpack('<4I', b'expand 32-byte k'))
    counter = 0
    while True:
        init = const + k + [counter & M32, counter >> 32, 0, 0]
        s = init[:]
        for _ in range(4):
            qr(s,0,4,8,12); qr(s,1,5,9,13); qr(s,2,6,10,14); qr(s,3,7,11,15)
            qr(s,0,5,10,15); qr(s,1,6,11,12); qr(s,2,7,8,13); qr(s,3,4,9,14)
        for w in range(16): yield (s[w] + init[w]) & M32
        counter += 1
def values(seed, name, n):
    key = blake3.blake3(struct.pack('<Q', seed) + name.encode(), derive_key_context='cairn init v1').digest()
    words = chacha8_words(key)
    def w64(): lo = next(words); hi = next(words); return lo | (hi << 32)
    unit = lambda x: float((x >> 11) + 1) * (1.0 / 2**53)
    out = []
    while len(out) < n:
        u1 = unit(w64()); u2 = unit(w64())
        r = math.sqrt(-2.0 * math.log(u1)); t = (2.0 * math.pi) * u2
        out.append(0.02 * (r * math.cos(t))); out.append(0.02 * (r * math.sin(t)))
    return out[:n]
v, d, layers, heads, kvh, h = 256, 128, 4, 4, 4, 384
kv = kvh * (d // heads)
specs = [("model.embed_tokens.weight", [v, d]), ("model.norm.weight", [d]), ("lm_head.weight", [v, d])]
for i in range(layers):
    p = f"model.layers.{i}"
    specs += [(f"{p}.input_layernorm.weight",[d]),(f"{p}.self_attn.q_proj.weight",[d,d]),(f"{p}.self_attn.k_proj.weight",[kv,d]),
              (f"{p}.self_attn.v_proj.weight",[kv,d]),(f"{p}.self_attn.o_proj.weight",[d,d]),(f"{p}.post_attention_layernorm.weight",[d]),
              (f"{p}.mlp.gate_proj.weight",[h,d]),(f"{p}.mlp.up_proj.weight",[h,d]),(f"{p}.mlp.down_proj.weight",[d,h])]
specs.sort(key=lambda t: t[0].encode())
layout = struct.pack('<I', len(specs))
for name, shape in specs:
    layout += struct.pack('<I', len(name.encode())) + name.encode() + struct.pack('<I', len(shape)) + b''.join(struct.pack('<Q', x) for x in shape)
hasher = blake3.blake3(derive_key_context='cairn state v1'); hasher.update(layout)
for name, shape in specs:
    n = math.prod(shape)
    vals = [1.0]*n if name.endswith('norm.weight') else values(0, name, n)
    hasher.update(struct.pack(f'<{n}f', *vals))
print(hasher.hexdigest())
