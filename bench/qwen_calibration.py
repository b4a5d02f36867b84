"""How well the 0.5B draft's own probabilities predict acceptance by the 1.5B target (Qwen2.5-Coder).

    python bench/qwen_calibration.py [--dtype bfloat16] [--max-new-tokens 48] [--tune-prompts 12] [--prompts 6]

Teacher-forced: the target greedy-decodes every prompt (the live loop, Autoregressive); along
that text, the draft's most likely next token is exactly what a greedy ModelDrafter drafts
there once everything before it was accepted, and the target accepts it exactly when it is
the target's argmax. So (draft top probability, agreed) pairs are the per-token acceptance
estimates TETRIS ranks by, with their outcomes; products over 1..5 consecutive positions are
the path estimates of a chain.

Split by prompt source: temperature scaling p_T = softmax(logits / T)[top] is fitted (log loss,
grid) on the bundled completion prompts (tetris_ext/data/prompts.jsonl) and reported on the
chat-formatted prompts of bench/prompts/qwen_chat_code.jsonl, code and chat separately. The
ranking test: rows of 8 chains of 5 drafts, TETRIS selects the best 3 x 8 by path score; we
count the accepted drafts with T = 1 (the draft as it is) and the fitted T, beside StandardSD(3).
Writes bench/results/qwen_calibration.json and .txt.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qwen_pair import chat_prompts, load_pair  # noqa: E402

from common import RESULTS_DIR, run_metadata, write_json  # noqa: E402
from tetris_ext import ops  # noqa: E402
from tetris_ext.calibration import brier_score, reliability  # noqa: E402
from tetris_ext.decoding import generate  # noqa: E402
from tetris_ext.models import QWEN_STOP_TOKEN_IDS  # noqa: E402
from tetris_ext.policies import Autoregressive  # noqa: E402

TEMPERATURES = torch.round(torch.arange(0.5, 2.51, 0.05), decimals=2)
DEPTH, BATCH, CAPACITY = 5, 8, 3


def tuning_prompts(tokenizer, limit: int) -> list[dict]:
    text = resources.files("tetris_ext").joinpath("data/prompts.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()][:limit]
    return [
        {"id": r["id"], "source": "completion", "tokens": tokenizer(r["prompt"]).input_ids} for r in records
    ]


@torch.inference_mode()
def teacher_forced(target, draft, prompts: list[dict], max_new_tokens: int) -> list[dict]:
    """Per prompt: log p_T of the draft's top token for every T in TEMPERATURES [n, len(T)] and
    whether it equals the target's argmax [n], at each position of the target's greedy output."""
    result = generate(
        target,
        [p["tokens"] for p in prompts],
        Autoregressive(),
        max_new_tokens=max_new_tokens,
        max_batch_size=BATCH,
        eos_token_id=list(QWEN_STOP_TOKEN_IDS),
    )
    out = []
    for prompt, output in zip(prompts, result.tokens):
        sequence = torch.tensor(
            [prompt["tokens"] + output[:-1]]
        )  # the last output token predicts nothing we need
        first = len(prompt["tokens"]) - 1
        target_next = target(sequence).logits[0, first:].argmax(-1)
        draft_logits = draft(sequence).logits[0, first:].float()
        top_logit, draft_next = draft_logits.max(-1)
        scaled = draft_logits[:, None, :] / TEMPERATURES[None, :, None]
        log_p = top_logit[:, None] / TEMPERATURES[None, :] - scaled.logsumexp(-1)
        out.append(
            {
                "id": prompt["id"],
                "source": prompt["source"],
                "log_p": log_p,
                "agreed": draft_next == target_next,
            }
        )
    return out


def token_metrics(records: list[dict], t_index: int) -> dict:
    p = torch.cat([r["log_p"][:, t_index] for r in records]).exp().double()
    y = torch.cat([r["agreed"] for r in records]).double()
    return {
        "tokens": len(y),
        "agreement": float(y.mean()),
        "mean_predicted": float(p.mean()),
        "brier": brier_score(p, y),
        "brier_constant_rate": brier_score(torch.full_like(y, float(y.mean())), y),
        "log_loss": float(F.binary_cross_entropy(p.clamp(1e-6, 1 - 1e-6), y)),
    }


def chains(records: list[dict], t_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of DEPTH positions as a drafted chain: cumulative log-scores [R, DEPTH] and
    per-token agreement [R, DEPTH]. Rows interleave prompts, so a batch mixes requests."""
    per_prompt = []
    for r in records:
        n = len(r["agreed"]) - DEPTH + 1
        if n > 0:
            idx = torch.arange(n)[:, None] + torch.arange(DEPTH)[None, :]
            per_prompt.append((r["log_p"][:, t_index][idx].cumsum(1), r["agreed"][idx]))
    rows = [
        (s[i], a[i]) for i in range(max(len(s) for s, _ in per_prompt)) for s, a in per_prompt if i < len(s)
    ]
    return torch.stack([s for s, _ in rows]), torch.stack([a for _, a in rows])


def path_and_selection_metrics(records: list[dict], t_index: int) -> dict:
    cum, agreed = chains(records, t_index)
    accepted_length = agreed.long().cumprod(1).sum(1)  # leading agreements = drafts accepted from the chain
    path_ok = agreed.long().cumprod(1).bool()
    usable = (len(cum) // BATCH) * BATCH
    tetris = standard = 0
    for start in range(0, usable, BATCH):
        rows = slice(start, start + BATCH)
        _, counts = ops.select(cum[rows].float().contiguous(), BATCH * CAPACITY)
        tetris += int(torch.minimum(counts, accepted_length[rows]).sum())
        standard += int(accepted_length[rows].clamp(max=CAPACITY).sum())
    return {
        "path_brier": brier_score(cum.exp().flatten(), path_ok.flatten()),
        "paths": path_ok.numel(),
        "selection_steps": usable // BATCH,
        "tetris_accepted": tetris,
        "standard_sd_accepted": standard,
        "verified_per_step": BATCH * CAPACITY,
    }


def fit_temperature(records: list[dict]) -> float:
    losses = [token_metrics(records, i)["log_loss"] for i in range(len(TEMPERATURES))]
    return float(TEMPERATURES[min(range(len(losses)), key=losses.__getitem__)])


def report(name: str, records: list[dict], temperature: float) -> dict:
    fitted = int((TEMPERATURES - temperature).abs().argmin())
    one = int((TEMPERATURES - 1.0).abs().argmin())
    row = {"set": name, "prompts": len(records)}
    for label, index in (("T=1", one), (f"T={temperature:g}", fitted)):
        row[label] = token_metrics(records, index) | path_and_selection_metrics(records, index)
    p = torch.cat([r["log_p"][:, one] for r in records]).exp()
    row["reliability_T=1"] = reliability(p, torch.cat([r["agreed"] for r in records]))
    return row


def format_rows(rows: list[dict], temperature: float) -> str:
    head = (
        f"{'set':<12} {'T':>5} {'tokens':>6} {'agree':>6} {'mean p':>6} {'Brier':>6} {'const':>6} {'logloss':>7} "
        f"{'pathBrier':>9} {'TETRIS acc':>10} {'SD(3) acc':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        for label in ("T=1", f"T={temperature:g}"):
            m = r[label]
            lines.append(
                f"{r['set']:<12} {label[2:]:>5} {m['tokens']:>6} {m['agreement']:>6.3f} {m['mean_predicted']:>6.3f} "
                f"{m['brier']:>6.3f} {m['brier_constant_rate']:>6.3f} {m['log_loss']:>7.3f} "
                f"{m['path_brier']:>9.3f} {m['tetris_accepted']:>10} {m['standard_sd_accepted']:>9}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--tune-prompts", type=int, default=12, help="bundled completion prompts to fit T on")
    ap.add_argument("--prompts", type=int, default=6, help="held-out prompts per source (code, chat)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "qwen_calibration")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    target, draft, tokenizer = load_pair(args.dtype)
    tuning = teacher_forced(target, draft, tuning_prompts(tokenizer, args.tune_prompts), args.max_new_tokens)
    held_out = teacher_forced(target, draft, chat_prompts(tokenizer, limit=args.prompts), args.max_new_tokens)
    temperature = fit_temperature(tuning)
    rows = [report("tuning", tuning, temperature)]
    for source in ("code", "chat"):
        rows.append(report(f"held-out {source}", [r for r in held_out if r["source"] == source], temperature))
    meta = run_metadata("cpu") | {
        "command": "python bench/qwen_calibration.py " + " ".join(argv or sys.argv[1:]),
        "dtype": args.dtype,
        "max_new_tokens": args.max_new_tokens,
        "fitted_temperature": temperature,
        "seconds": time.perf_counter() - t0,
    }
    table = format_rows(rows, temperature)
    print(table)
    write_json(args.out.with_suffix(".json"), {"meta": meta, "rows": rows})
    args.out.with_suffix(".txt").write_text(f"{meta['command']}\n{meta['date']}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
