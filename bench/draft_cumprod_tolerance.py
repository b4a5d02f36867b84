"""draft_cumprod against its float32 references (docs/ops.md, "Tolerance"), per backend:

    PYTHONPATH=python .venv/bin/python bench/draft_cumprod_tolerance.py

Prints the largest error against the textbook reference log_softmax(logits * float32(1/T)),
in units of 2e-5 + 2^-24 * (|logit[token]| + |max|) / T (where that reference is finite), and
against the op's definition (the row maximum subtracted before scaling), in units of
2e-5 + 1e-6 * |value|, over V in {7, 513, 32000}, logits randn * {1, 4, 30}, T from 1e-38 to
1e300, half greedy and half random tokens.
"""

import sys
from pathlib import Path

import torch

import tetris_ext

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from refs.draft_cumprod import plain_log_softmax, scaled_log_softmax  # noqa: E402

TEMPERATURES = [1e-38, 1e-20, 1e-8, 1e-4, 0.01, 0.3, 1.0, 3.0, 1e3, 1e10, 1e30, 1e44, 1e300]


def worst_ratios(op, gen):
    worst_plain = worst_defined = 0.0
    for V in [7, 513, 32000]:
        for scale in [1.0, 4.0, 30.0]:
            logits = torch.randn(4, 8, V, generator=gen) * scale
            tokens = torch.randint(0, V, (4, 8), generator=gen)
            tokens[:, ::2] = logits.argmax(-1)[:, ::2]
            x_token = logits.gather(-1, tokens[..., None])[..., 0].abs()
            x_max = logits.amax(-1).abs()
            for T in TEMPERATURES:
                ours = op(logits, tokens, None, T)[0]
                inverse = torch.tensor(1 / T, dtype=torch.float32)
                plain = plain_log_softmax(logits, T).gather(-1, tokens[..., None])[..., 0]
                defined = scaled_log_softmax(logits, T).gather(-1, tokens[..., None])[..., 0]
                finite = plain.isfinite() & ours.isfinite()
                if finite.any():
                    unit = 2e-5 + 2**-24 * (x_token + x_max) * inverse
                    worst_plain = max(worst_plain, ((ours - plain).abs() / unit)[finite].max().item())
                finite = defined.isfinite() & ours.isfinite()
                assert torch.equal(defined.isfinite(), ours.isfinite()), (V, scale, T)
                if finite.any():
                    unit = 2e-5 + 1e-6 * defined.abs()
                    worst_defined = max(worst_defined, ((ours - defined).abs() / unit)[finite].max().item())
    return worst_plain, worst_defined


def main():
    namespaces = ["tetris"] + (["tetris_emu"] if tetris_ext.HAS_EMULATION else [])
    for namespace in namespaces:
        plain, defined = worst_ratios(
            getattr(torch.ops, namespace).draft_cumprod, torch.Generator().manual_seed(1)
        )
        print(
            f"{namespace:10s} vs log_softmax(x * float32(1/T)): {plain:.2f} units; "
            f"vs the definition (max subtracted first): {defined:.2f} units"
        )


if __name__ == "__main__":
    main()
