"""Does the target's own confidence help the n-gram acceptance estimates? A held-out probe.

A live step could hand the estimator the target's confidence on the request's recent tokens
for free (the verify forward computes those logits). Before wiring that through the engine, this
probe measures what it would buy: the target (Gemma 3 270M bf16, as the traces) is run once over
prompt + recorded output of every trace request (teacher forcing, one forward per request,
cached beside the trace as ``<trace>.target_confidence.npz``), and each tested token gets

- ``conf_root``: the target's top-1 probability when it produced the root (the last output token);
- ``conf_min4`` / ``conf_mean4``: min and mean of that over the last 4 output tokens;

(the mean tuning confidence before the first output token). A frozen logistic fit
(``estimators.fit_logistic``) on the tuning source with and without these columns, on top of
``NgramLogistic``'s features, is scored on the held-out sources.

    python bench/estimates_target_signal.py   # writes results/estimates_target_signal.{json,txt}
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from estimates import SOURCES, TUNING, _Recording, load_token_classes  # noqa: E402

from common import RESULTS_DIR, run_metadata  # noqa: E402
from tetris_ext import heldout  # noqa: E402
from tetris_ext.calibration import brier_score  # noqa: E402
from tetris_ext.estimators import fit_logistic  # noqa: E402
from tetris_ext.sim import Trace  # noqa: E402

SIGNALS = ("conf_root", "conf_min4", "conf_mean4")


def target_confidence(path: Path, trace: Trace, load_model) -> np.ndarray:
    """[R, L] the target's top-1 probability at every continuation position (cached; the
    model is loaded only when a cache is missing)."""
    cache = path.with_name(path.stem + ".target_confidence.npz")
    if cache.exists():
        return np.load(cache)["confidence"]
    model = load_model()
    out = np.zeros(trace.continuation.shape, dtype=np.float32)
    with torch.inference_mode():
        for r, prompt in enumerate(trace.prompts):
            ids = torch.tensor([prompt + trace.continuation[r].tolist()])
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
            out[r] = logits.softmax(-1).max(-1).values.numpy()
    np.savez_compressed(cache, confidence=out)
    return out


class _Positions(_Recording):
    """The recorder that also knows each tested token's request output position (t)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.t: dict[int, int] = {}
        self.positions = []

    def update_batch(self, features, requests, tested, accepted, tokens=None, roots=None):
        t = torch.tensor([self.t.get(r, 0) for r in requests])
        self.positions.append(t[:, None].expand_as(tested)[tested])
        super().update_batch(features, requests, tested, accepted, tokens, roots)
        for r, n in zip(requests, accepted.sum(1).tolist()):  # chains: accepted + the bonus token
            self.t[r] = self.t.get(r, 0) + n + 1


def rows_with_signals(trace: Trace, confidence: np.ndarray, token_classes, fill: float):
    """(inputs [M, F + 3], outcomes [M]) of the trace's tested tokens."""
    recorder = _Positions(token_classes=token_classes)
    heldout.collect(trace, recorder)
    x, y = torch.cat(recorder.rows), torch.cat(recorder.outcomes)
    rows, ts = torch.cat(recorder.requests).numpy(), torch.cat(recorder.positions).numpy()
    signals = np.full((len(y), 3), fill)
    for i, (r, t) in enumerate(zip(rows, ts)):
        recent = confidence[r, max(0, t - 4) : t]
        if len(recent):
            signals[i] = (recent[-1], recent.min(), recent.mean())
    return torch.cat([x, torch.from_numpy(signals)], 1), y


def main(argv=None) -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    from tetris_ext.models import load_gemma3_270m

    torch.set_num_threads(1)
    classes = load_token_classes("gemma3-270m")
    model = functools.cache(lambda: load_gemma3_270m(dtype=torch.bfloat16)[0])
    confidence = {name: target_confidence(path, Trace.load(path), model) for name, path in SOURCES.items()}
    fill = float(np.mean([confidence[s].mean() for s in TUNING]))
    data = {
        name: rows_with_signals(Trace.load(path), confidence[name], classes, fill)
        for name, path in SOURCES.items()
    }
    x_tune = torch.cat([data[s][0] for s in TUNING])
    y_tune = torch.cat([data[s][1] for s in TUNING])
    rate = float(y_tune.double().mean())
    width = x_tune.shape[1] - len(SIGNALS)
    results = {}
    for label, columns in (("without", slice(0, width)), ("with target confidence", slice(None))):
        w = fit_logistic(x_tune[:, columns], y_tune)
        per_source = {}
        for name in (s for s in SOURCES if s not in TUNING):
            x, y = data[name]
            per_source[name] = brier_score(torch.sigmoid(x[:, columns] @ w).clamp(0.02, 0.98), y)
        held_x = torch.cat([data[s][0] for s in per_source])
        held_y = torch.cat([data[s][1] for s in per_source])
        brier = brier_score(torch.sigmoid(held_x[:, columns] @ w).clamp(0.02, 0.98), held_y)
        constant = brier_score(torch.full((len(held_y),), rate), held_y)
        results[label] = {"brier": brier, "vs_constant": brier / constant - 1, "per_source": per_source}
        if label != "without":
            results[label]["signal_weights"] = dict(zip(SIGNALS, w[width:].tolist()))
        print(
            f"frozen tuning fit {label:24s} held-out Brier {brier:.4f} ({brier / constant - 1:+.1%} vs constant)"
        )
    meta = run_metadata("cpu") | {"command": "python bench/estimates_target_signal.py", "fill": fill}
    out = RESULTS_DIR / "estimates_target_signal.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=lambda v: None))
    print(f"wrote {out}")
    return 0 if all(math.isfinite(r["brier"]) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
