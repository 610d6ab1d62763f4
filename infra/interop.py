"""Loads a `cairn export-hf` directory with transformers and compares its logits with cairn's.

Usage: interop.py DIR, where DIR holds model.safetensors, config.json and cairn_logits.safetensors
(input_ids [1, T] and cairn's logits [1, T, vocab]). Exits 1 unless the max abs difference is
below TOLERANCE. As a control it also permutes the q/k projection rows into the other rotary
convention (interleaved pairs instead of rotate-half): that copy must disagree by far more than the
tolerance, or the comparison could not tell the two conventions apart.
"""

import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

TOLERANCE = 1e-4


def half_to_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorders each head's rows from [x_0..x_{d/2-1}, y_0..y_{d/2-1}] to [x_0, y_0, x_1, y_1, ...]."""
    out, d_in = w.shape
    d = out // heads
    return w.view(heads, 2, d // 2, d_in).transpose(1, 2).reshape(out, d_in)


def logits_of(model: LlamaForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def main() -> int:
    out = sys.argv[1]
    torch.manual_seed(0)
    ours = load_file(f"{out}/cairn_logits.safetensors")
    ids, cairn = ours["input_ids"], ours["logits"]
    model, info = LlamaForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    if problems:
        print(f"interop: FAIL loading {out}: {problems}")
        return 1
    hf = logits_of(model, ids)
    if hf.shape != cairn.shape:
        print(f"interop: FAIL shapes differ: transformers {tuple(hf.shape)}, cairn {tuple(cairn.shape)}")
        return 1
    diff = (hf - cairn).abs().max().item()

    config = model.config
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.q_proj.weight.data = half_to_interleaved(attn.q_proj.weight.data, config.num_attention_heads)
        attn.k_proj.weight.data = half_to_interleaved(attn.k_proj.weight.data, config.num_key_value_heads)
    control = (logits_of(model, ids) - cairn).abs().max().item()

    print(
        f"interop: transformers {__import__('transformers').__version__}, torch {torch.__version__}, "
        f"{ids.shape[1]} tokens x {cairn.shape[2]} vocab, logits std {cairn.std().item():.4f}"
    )
    print(f"interop: control (q/k rows permuted to the interleaved convention): max abs diff {control:.3e}")
    ok = diff < TOLERANCE and control > 100 * TOLERANCE
    print(f"interop: {'OK' if ok else 'FAIL'} max abs diff {diff:.3e} (tolerance {TOLERANCE:.0e})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
