#!/usr/bin/env python3
# Checks a cairn checkpoint note (c2sp.org/signed-note, c2sp.org/tlog-checkpoint) against verifier
# keys with no cairn code and nothing outside Python's standard library: Ed25519 verification
# written from RFC 8032 (sections 5.1.3 and 5.1.7), key IDs with hashlib's SHA-256, the note and
# vkey syntax from the C2SP text and docs/LEDGER.md ("Checkpoints"). The check that cairn's notes
# are what any signed-note verifier accepts.
#
#   python3 infra/spec-check/signed_note.py NOTE_FILE VKEYS_FILE
#
# VKEYS_FILE holds one vkey (`<name>+<hex key id>+<base64(0x01 | key)>`) a line. Signature lines
# of unknown keys are ignored; a known key's signature that fails refuses the note; at least one
# must verify. Prints `origin=... size=... root=<hex> verified=<n> names=<name,...>` and exits 0,
# or prints the reason on stderr and exits 1. With --any-text the text need not be a checkpoint
# (then only `verified=... names=...` is printed).
import base64, binascii, hashlib, sys

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
MAX_NOTE_BYTES = 64 * 1024
MAX_SIGNATURES = 100


class Refused(Exception):
    pass


# Points in extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x*y = T/Z (RFC 8032, 5.1.4).
def add(p, q):
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * p[3] * q[3] * D % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def mul(n, p):
    out = (0, 1, 1, 0)
    while n:
        if n & 1:
            out = add(out, p)
        p = add(p, p)
        n >>= 1
    return out


def same(p, q):
    return (p[0] * q[2] - q[0] * p[2]) % P == 0 and (p[1] * q[2] - q[1] * p[2]) % P == 0


def decode_point(b):
    # 5.1.3: y is the low 255 bits, x's sign the top bit; y >= p is refused.
    if len(b) != 32:
        raise Refused("a point is 32 bytes")
    n = int.from_bytes(b, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= P:
        raise Refused("a non-canonical point encoding")
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P == 0:
        pass
    elif (v * x * x + u) % P == 0:
        x = x * SQRT_M1 % P
    else:
        raise Refused("not a curve point")
    if x == 0 and sign == 1:
        raise Refused("x = 0 with the sign bit set")
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


GY = 4 * pow(5, P - 2, P) % P
B = decode_point(GY.to_bytes(32, "little"))


def ed25519_verify(key, message, sig):
    # 5.1.7, checking [S]B = R + [k]A (the cofactorless form RFC 8032 allows).
    if len(sig) != 64:
        return False
    try:
        a, r = decode_point(key), decode_point(sig[:32])
    except Refused:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(sig[:32] + key + message).digest(), "little") % L
    return same(mul(s, B), add(r, mul(k, a)))


def b64(text):
    # Standard alphabet, padded, one spelling per value (re-encoding must give the text back).
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refused(f"not base64: {text!r}")
    if base64.b64encode(raw).decode() != text:
        raise Refused(f"not canonical base64: {text!r}")
    return raw


def valid_name(name):
    return name != "" and "+" not in name and not any(c.isspace() for c in name)


def key_id(name, key):
    return hashlib.sha256(name.encode() + b"\n" + b"\x01" + key).digest()[:4]


def parse_vkey(line):
    name, _, rest = line.partition("+")
    hex_id, _, key64 = rest.partition("+")
    if not valid_name(name) or len(hex_id) != 8:
        raise Refused(f"not a vkey: {line!r}")
    raw = b64(key64)
    if len(raw) != 33 or raw[0] != 1:
        raise Refused(f"not an Ed25519 vkey: {line!r}")
    if key_id(name, raw[1:]) != bytes.fromhex(hex_id):
        raise Refused(f"the key ID of {name} is not SHA-256(name, 0x0A, 0x01, key)[:4]")
    return name, bytes.fromhex(hex_id), raw[1:]


def parse_note(data):
    if len(data) > MAX_NOTE_BYTES:
        raise Refused("over the size limit")
    text = data.decode("utf-8")  # UnicodeDecodeError is refused by the caller
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise Refused("a control character")
    split = text.rfind("\n\n")
    if split < 0:
        raise Refused("no blank line before the signatures")
    body, sigs = text[: split + 1], text[split + 2 :]
    if sigs == "" or not sigs.endswith("\n"):
        raise Refused("the signature block is empty or does not end in a newline")
    lines = sigs[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise Refused("too many signature lines")
    out = []
    for line in lines:
        if not line.startswith("\u2014 "):
            raise Refused(f"not a signature line: {line!r}")
        name, sep, sig64 = line[2:].partition(" ")
        raw = b64(sig64)
        if not sep or not valid_name(name) or len(raw) < 5:
            raise Refused(f"not a signature line: {line!r}")
        out.append((name, raw[:4], raw[4:]))
    return body, out


def parse_checkpoint(body):
    lines = body[:-1].split("\n")
    if len(lines) != 3:
        raise Refused("a cairn checkpoint is three lines: origin, size, root hash")
    origin, size, root64 = lines
    run = origin.removeprefix("cairn.run/")
    if run == origin or len(run) != 64 or any(c not in "0123456789abcdef" for c in run):
        raise Refused(f"origin {origin!r} is not cairn.run/<64 hex digits>")
    if not size.isascii() or not size.isdigit() or (len(size) > 1 and size[0] == "0") or int(size) >= 2**64:
        raise Refused(f"size {size!r} is not a decimal u64 without leading zeros")
    root = b64(root64)
    if len(root) != 32:
        raise Refused("the root hash is not 32 bytes")
    return origin, int(size), root


def check(note_bytes, vkey_lines, checkpoint=True):
    known = {}
    for line in vkey_lines:
        if line.strip() and not line.startswith("#"):
            name, kid, key = parse_vkey(line.strip())
            if known.get((name, kid), key) != key:
                raise Refused(f"two vkeys named {name} share a key ID")
            known[(name, kid)] = key
    body, sigs = parse_note(note_bytes)
    verified = []
    for name, kid, sig in sigs:
        key = known.get((name, kid))
        if key is None:
            continue
        if name in verified:
            raise Refused(f"{name} signed twice")
        if not ed25519_verify(key, body.encode(), sig):
            raise Refused(f"the signature of {name} does not verify")
        verified.append(name)
    if not verified:
        raise Refused("no signature of a known key")
    summary = f"verified={len(verified)} names={','.join(verified)}"
    if checkpoint:
        origin, size, root = parse_checkpoint(body)
        summary = f"origin={origin} size={size} root={root.hex()} {summary}"
    return summary


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        sys.exit("usage: signed_note.py [--any-text] NOTE_FILE VKEYS_FILE")
    note = open(args[0], "rb").read()
    vkeys = open(args[1], encoding="utf-8").read().splitlines()
    try:
        print(check(note, vkeys, checkpoint="--any-text" not in sys.argv))
    except (Refused, UnicodeDecodeError, ValueError) as e:
        print(f"refused: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
