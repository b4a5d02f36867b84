"""Per-step CPU cost of n-gram drafting and acceptance estimation, outside any model.

    python bench/drafting_overhead.py --label after                      # this tree
    PYTHONPATH=/work/main/python python bench/drafting_overhead.py --label before  # another tree

Two workloads on the tokens of the *tuning* trace (bench/results/traces/
gemma3-270m-bf16_ngram_d8_t64.npz: its prompts and recorded greedy continuations; never the
held-out prompt files), one thread:

- proposer: `tetris_ext.vllm.proposer.DraftSelection.step` (n-gram index, NgramLogistic,
  policy) for the policies sd / tetris / cost-aware at batch 8 and 32, fed as vLLM feeds it: a
  persistent batch whose rows hold prompt + continuation, each step's accepted drafts being the
  prefix that matches the recorded continuation (a greedy target); a request that reaches the
  end of its text leaves and the next trace row joins (its state is released).
- live: the decoding loop's `NgramDrafter.propose` + `update` at batch 8, each request's context
  being trace texts laid end to end, cut at --context tokens (prompt) and growing by what the
  greedy target accepts (all drafts verified) each step.

Each figure is ms per step, CPU (time.process_time) and wall, the median over --repeat runs
(warm-up steps excluded); beside them, the collections of Python's cyclic garbage collector
during the runs (full ones, and ms per step in any, warm-up and the simulated engine's part
included). The script also writes digests of every step's drafts and estimates
(the proposer's NgramLogistic outputs, the live drafter's token log-probabilities), computed on
a separate pass with a fake clock (the cost-fitted policies read the step time): a run of other
code on the same inputs must give the same digests (--compare FILE checks it, bit for bit).
Results: bench/results/drafting_overhead_{label}.json.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tetris_ext  # noqa: E402, F401
from common import RESULTS_DIR, run_metadata, write_json  # noqa: E402
from tetris_ext.drafters import NgramDrafter  # noqa: E402
from tetris_ext.proposal import Outcome  # noqa: E402
from tetris_ext.sim import Trace  # noqa: E402
from tetris_ext.vllm import proposer as proposer_module  # noqa: E402
from tetris_ext.vllm.config import ProposerOptions  # noqa: E402
from tetris_ext.vllm.proposer import DraftSelection  # noqa: E402

TRACE = RESULTS_DIR / "traces" / "gemma3-270m-bf16_ngram_d8_t64.npz"
POLICIES = ("sd", "tetris", "cost-aware")


def trace_texts(trace: Trace) -> list[list[int]]:
    """Every trace row's prompt + recorded continuation (what a greedy target writes)."""
    return [list(map(int, p)) + trace.continuation[r].tolist() for r, p in enumerate(trace.prompts)]


class FakeClock:
    """A perf_counter that advances 1 ms a call: the cost-fitted policies see the same step
    times in every run, so their choices (hence the digests) depend on the code only."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-3
        return self.now


class Digest:
    """Running sha256 of a run's outputs (drafts as ints, estimates as their float bytes)."""

    def __init__(self):
        self.drafts, self.estimates = hashlib.sha256(), hashlib.sha256()

    def add_drafts(self, drafts) -> None:
        self.drafts.update(json.dumps(drafts).encode())

    def add_estimates(self, values: torch.Tensor) -> None:
        self.estimates.update(values.detach().contiguous().numpy().tobytes())

    def result(self) -> dict:
        return {"drafts": self.drafts.hexdigest(), "estimates": self.estimates.hexdigest()}


def proposer_run(texts, policy: str, batch: int, steps: int, warmup: int, digest: Digest | None):
    """ms per step (CPU, wall) of DraftSelection.step over `steps` steps after `warmup`."""
    selection = DraftSelection(ProposerOptions(policy, 3, 2), 4096)
    if digest is not None:  # record the estimator's outputs (where a version computes them)
        name = "predict_design" if hasattr(selection.estimator, "predict_design") else "predict_batch"
        predict = getattr(selection.estimator, name)

        def spy(*args):
            out = predict(*args)
            digest.add_estimates(out)
            return out

        setattr(selection.estimator, name, spy)
    width = max(map(len, texts)) + 16
    token_ids = np.zeros((batch, width), dtype=np.int64)
    lengths = np.zeros(batch, dtype=np.int64)
    rows, req_ids, next_row = [0] * batch, [""] * batch, 0

    def admit(slot):  # the next trace row joins in this slot, its prompt prefilled
        nonlocal next_row
        rows[slot], req_ids[slot] = next_row % len(texts), f"r{next_row}"
        text = texts[rows[slot]]
        prompt = len(text) - 64
        token_ids[slot, : len(text)] = text
        lengths[slot] = prompt
        next_row += 1

    for slot in range(batch):
        admit(slot)
    drafts = [[] for _ in range(batch)]
    cpu, wall = [], []
    for step in range(warmup + steps):
        sampled = []
        for b in range(batch):
            text, pos = texts[rows[b]], int(lengths[b])
            accepted = 0
            while accepted < len(drafts[b]) and drafts[b][accepted] == text[pos + accepted]:
                accepted += 1
            sampled.append(text[pos : pos + accepted + 1])
            lengths[b] = pos + accepted + 1
        verified = {req_ids[b]: len(drafts[b]) for b in range(batch)}
        step_tokens = batch + sum(map(len, drafts))
        for b in range(batch):  # finished requests leave after this step's sampling
            if lengths[b] + 10 >= len(texts[rows[b]]):
                admit(b)
                sampled[b] = []  # a request in prefill samples nothing
        c0, w0 = time.process_time(), time.perf_counter()
        drafts = selection.step(list(req_ids), sampled, lengths.copy(), token_ids, verified, step_tokens)
        if step >= warmup:
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        if digest is not None:
            digest.add_drafts(drafts)
    return 1e3 * sum(cpu) / steps, 1e3 * sum(wall) / steps


class LiveRequest:
    def __init__(self, index: int, tokens: list[int]):
        self.index, self.tokens = index, tokens


def live_contexts(texts, batch: int, context: int, steps: int) -> list[list[int]]:
    """Per request: trace texts laid end to end (starting at a different row each), long
    enough for the prompt of `context` tokens and every step's output."""
    out = []
    for b in range(batch):
        tokens, row = [], b
        while len(tokens) < context + 9 * steps + 16:
            tokens += texts[row % len(texts)]
            row += 3
        out.append(tokens)
    return out


def live_run(texts, batch, context, num_draft, steps, warmup, digest: Digest | None):
    """ms per step (CPU, wall) of NgramDrafter.propose + update on growing contexts."""
    full = live_contexts(texts, batch, context, warmup + steps)
    requests = [LiveRequest(b, full[b][:context]) for b in range(batch)]
    drafter = NgramDrafter(8)
    drafter.add(requests)
    cpu, wall = [], []
    for step in range(warmup + steps):
        c0, w0 = time.process_time(), time.perf_counter()
        proposal = drafter.propose(requests, num_draft)
        c1, w1 = time.process_time(), time.perf_counter()
        outcome, gains = greedy_outcome(proposal.tokens, requests, full)  # the target's part: untimed
        c2, w2 = time.process_time(), time.perf_counter()
        drafter.update(requests, proposal, outcome)
        if step >= warmup:
            cpu.append(c1 - c0 + time.process_time() - c2)
            wall.append(w1 - w0 + time.perf_counter() - w2)
        if digest is not None:
            digest.add_drafts(proposal.tokens.tolist())
            digest.add_estimates(proposal.token_logprobs)
        for request, gained in zip(requests, gains):
            request.tokens += gained
    drafter.keep([])
    return 1e3 * sum(cpu) / steps, 1e3 * sum(wall) / steps


def greedy_outcome(tokens: torch.Tensor, requests, full) -> tuple[Outcome, list[list[int]]]:
    """Every draft verified by a greedy target that writes `full`: the matching prefix is
    accepted; the tokens each request gains (accepted drafts + the target's next token)."""
    B, N = tokens.shape
    accepted = torch.zeros(B, N, dtype=torch.bool)
    gains = []
    for b, request in enumerate(requests):
        pos, a = len(request.tokens), 0
        row = tokens[b].tolist()
        while a < N and row[a] == full[b][pos + a]:
            a += 1
        accepted[b, :a] = True
        gains.append(full[b][pos : pos + a + 1])
    path = torch.where(accepted, torch.arange(N), -1)
    return Outcome(tokens >= 0, accepted, path), gains


class GcTally:
    """Python's cyclic garbage collections while it is on (gc.callbacks): how many full
    (generation 2) collections ran and the seconds spent in collections of any generation.
    Objects a step leaves behind (an n-gram index per joining request) set off full
    collections, each a pass over every tracked object of the process."""

    def __init__(self):
        self.full, self.seconds, self._start = 0, 0.0, 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.full += info["generation"] == 2

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc):
        gc.callbacks.remove(self._callback)


def measure(args, texts) -> dict:
    """Median ms/step of every workload over interleaved repeats (noise hits all alike)."""
    workloads = {f"proposer/{p}/b{b}": ("proposer", p, b) for b in args.batch for p in POLICIES}
    workloads |= {f"live/ctx{c}/b{args.live_batch}": ("live", c, args.live_batch) for c in args.context}
    samples = {name: [] for name in workloads}
    tallies = {name: GcTally() for name in workloads}
    for _ in range(args.repeat):
        for name, (kind, what, batch) in workloads.items():
            with tallies[name]:  # the whole run: warm-up and the simulated engine's part included
                if kind == "proposer":
                    samples[name].append(proposer_run(texts, what, batch, args.steps, args.warmup, None))
                else:
                    samples[name].append(
                        live_run(texts, batch, what, args.num_draft, args.steps, args.warmup, None)
                    )
    steps = args.repeat * (args.steps + args.warmup)
    return {
        name: {
            "cpu_ms_per_step": statistics.median(c for c, _ in runs),
            "wall_ms_per_step": statistics.median(w for _, w in runs),
            "cpu_ms_runs": [round(c, 4) for c, _ in runs],
            "gc_full_collections": tallies[name].full,
            "gc_ms_per_step": 1e3 * tallies[name].seconds / steps,
        }
        for name, runs in samples.items()
    }


def digests(args, texts) -> dict:
    """Digests of every workload's outputs, the proposer's under a fake clock."""
    out = {}
    real = proposer_module.time
    proposer_module.time = FakeClock()
    try:
        for b in args.batch:
            for policy in POLICIES:
                digest = Digest()
                proposer_run(texts, policy, b, args.steps, args.warmup, digest)
                out[f"proposer/{policy}/b{b}"] = digest.result()
    finally:
        proposer_module.time = real
    for c in args.context:
        digest = Digest()
        live_run(texts, args.live_batch, c, args.num_draft, args.steps, args.warmup, digest)
        out[f"live/ctx{c}/b{args.live_batch}"] = digest.result()
    return out


def profile(args, texts) -> None:
    """The 25 most expensive calls (cumulative) of one workload's timed steps."""
    import cProfile
    import pstats

    kind, what, batch = args.profile.split("/")
    batch = int(batch.lstrip("b"))
    if kind == "proposer":
        run = lambda: proposer_run(texts, what, batch, args.steps, args.warmup, None)  # noqa: E731
    else:
        context = int(what.removeprefix("ctx"))
        run = lambda: live_run(texts, batch, context, args.num_draft, args.steps, args.warmup, None)  # noqa: E731
    run()  # warm-up
    profiler = cProfile.Profile()
    profiler.runcall(run)
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", required=True, help="results go to drafting_overhead_{label}.json")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="proposer batch sizes")
    parser.add_argument("--live-batch", type=int, default=8)
    parser.add_argument("--context", type=int, nargs="+", default=[300, 1000], help="live prompt lengths")
    parser.add_argument("--num-draft", type=int, default=5, help="live drafts per request (k + extra)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="a result file whose digests must be equal")
    parser.add_argument("--profile", metavar="WORKLOAD", help="cProfile one run, e.g. proposer/cost-aware/b8")
    args = parser.parse_args()
    torch.set_num_threads(1)
    texts = trace_texts(Trace.load(TRACE))
    if args.profile:
        return profile(args, texts)
    result = {"meta": run_metadata("cpu"), "tetris_ext": str(Path(tetris_ext.__file__).parent)}
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result["digests"] = digests(args, texts)
    result["ms_per_step"] = measure(args, texts)
    for name, row in result["ms_per_step"].items():
        print(
            f"{name:28s} cpu {row['cpu_ms_per_step']:.3f} ms/step  wall {row['wall_ms_per_step']:.3f}  "
            f"gc {row['gc_ms_per_step']:.3f} ms/step ({row['gc_full_collections']} full)"
        )
    if args.compare is not None:
        other = json.loads(args.compare.read_text())
        same = {name: other["digests"].get(name) == d for name, d in result["digests"].items()}
        result["identical_to"] = {"file": str(args.compare), "workloads": same}
        print("outputs identical to", args.compare, ":", same)
        if not all(same.values()):
            print("OUTPUTS DIFFER", file=sys.stderr)
    write_json(RESULTS_DIR / f"drafting_overhead_{args.label}.json", result)
    if args.compare is not None and not all(result["identical_to"]["workloads"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
