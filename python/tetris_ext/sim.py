"""Trace recording and exact replay of greedy speculative decoding at serving scale.

At temperature 0 the target's output does not depend on the policy: every request produces
the target's greedy continuation, whatever was drafted, selected and verified. So one
recording run can store, for every request and every output position, what the drafter would
propose from that prefix and what the target would emit, and any policy can then be replayed
on it step by step, at any batch size and with thousands of requests, without a model:

    trace = record(target, NgramDrafter(8), prompts, max_new_tokens=64, max_draft=8)
    trace.save("trace.npz")
    result = replay(Trace.load("trace.npz"), Tetris(3, 2), batch_size=256,
                    cost_model=h100x4_llama70b(), num_requests=10_000)
    result.metrics  # throughput, latency percentiles, verification success rate, waste

`replay` runs the live loop's own pieces (tetris_ext.decoding.step, minus the models): the
policy object's num_draft / choose / observe, the drafter's `proposal_from_matches` (the n-gram
drafter's online calibration runs on the replayed outcomes, so its confidences evolve exactly as
in a live run) or the recorded proposals of other drafters, `verification.build_block`
(`tetris.tree_mask`) and `tetris.verify_greedy` against the recorded continuation. Time comes
from a cost model (tetris_ext.cost_models): step latencies fitted on a real machine, a GPU
roofline, or a live run's own measured step times (`RecordedStepTimes`). With the same batch
size and no arrival process, a replay reproduces the live run's per-step drafted / verified /
accepted / generated counts exactly (tests/test_sim.py); policies that adapt to measured
latency (GoodputSD, GoodputTetris) do too when fed the live run's step times, and otherwise
see the cost model's latencies, which is the point of simulating another machine.

Limits: greedy decoding only; a drafter's proposal must depend only on the prefix (and, for
the n-gram drafter, on the calibration the replay re-runs). Chains of recorded proposals are
truncated to the policy's draft length (a shorter chain is a prefix of a longer one); trees
are replayed at the recorded size only.
"""

from __future__ import annotations

import json
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .cost_models import CostModel, StepShape, price_step
from .decoding import Request, generate
from .drafters import NgramDrafter, NgramMatch
from .policies import Autoregressive, Policy, StepFeedback
from .proposal import Outcome, Proposal
from .verification import Verified, build_block

__all__ = ["Trace", "record", "replay", "ReplayResult"]

TRACE_VERSION = 1


@dataclass
class Trace:
    """Recorded drafts and target continuations of R requests.

    prompts: R token lists. continuation [R, T + D + 1] int64: the target's greedy tokens after
    each prompt (past EOS and past T, so that a draft proposed near the end is still judged
    exactly). out_len [R]: the request's output length (T, or up to and including its first
    EOS). draft_tokens [R, T, D] int64: the drafter's proposal from prefix prompt +
    continuation[:t], -1 padded. draft_parents [R, T, D] int64 or None (chains).
    draft_features [R, T, D, F] float32 or None: raw drafter statistics (n-gram drafter), from
    which replay recomputes the confidences. draft_token_logprobs / draft_cum_logprobs
    [R, T, D] float32: the confidences at recording time (used as-is for drafters that keep
    no calibration state). accept_len [R, T]: how many of the proposed tokens the target
    accepts when all are verified. drafter: the drafter's kind and settings.
    """

    prompts: list[list[int]]
    continuation: np.ndarray
    out_len: np.ndarray
    draft_tokens: np.ndarray
    draft_parents: np.ndarray | None
    draft_features: np.ndarray | None
    draft_token_logprobs: np.ndarray
    draft_cum_logprobs: np.ndarray
    accept_len: np.ndarray
    drafter: dict
    max_new_tokens: int
    eos_token_ids: list[int] = field(default_factory=list)

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    @property
    def max_draft(self) -> int:
        return self.draft_tokens.shape[2]

    @property
    def is_tree(self) -> bool:
        return self.draft_parents is not None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        arrays = {
            "prompt_tokens": np.concatenate([np.asarray(p, dtype=np.int64) for p in self.prompts])
            if self.prompts else np.zeros(0, np.int64),
            "prompt_lens": np.array([len(p) for p in self.prompts], dtype=np.int64),
            "continuation": self.continuation,
            "out_len": self.out_len,
            "draft_tokens": self.draft_tokens.astype(np.int32),
            "draft_token_logprobs": self.draft_token_logprobs,
            "draft_cum_logprobs": self.draft_cum_logprobs,
            "accept_len": self.accept_len.astype(np.int16),
        }
        if self.draft_parents is not None:
            arrays["draft_parents"] = self.draft_parents.astype(np.int16)
        if self.draft_features is not None:
            arrays["draft_features"] = self.draft_features
        meta = {"version": TRACE_VERSION, "drafter": self.drafter, "max_new_tokens": self.max_new_tokens,
                "eos_token_ids": self.eos_token_ids}
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta["version"] != TRACE_VERSION:
                raise ValueError(f"{path}: trace version {meta['version']}, expected {TRACE_VERSION}")
            ends = np.cumsum(z["prompt_lens"])
            flat = z["prompt_tokens"]
            prompts = [flat[e - n:e].tolist() for e, n in zip(ends, z["prompt_lens"])]
            return cls(
                prompts=prompts,
                continuation=z["continuation"],
                out_len=z["out_len"],
                draft_tokens=z["draft_tokens"].astype(np.int64),
                draft_parents=z["draft_parents"].astype(np.int64) if "draft_parents" in z else None,
                draft_features=z["draft_features"] if "draft_features" in z else None,
                draft_token_logprobs=z["draft_token_logprobs"],
                draft_cum_logprobs=z["draft_cum_logprobs"],
                accept_len=z["accept_len"].astype(np.int64),
                drafter=meta["drafter"],
                max_new_tokens=meta["max_new_tokens"],
                eos_token_ids=meta["eos_token_ids"],
            )


# ------------------------------------------------------------------------------------------
# recording


def _drafter_config(drafter) -> dict:
    if isinstance(drafter, NgramDrafter):
        return {"kind": "ngram", "max_draft": drafter.max_draft, "max_ngram": drafter.max_ngram,
                "min_ngram": drafter.min_ngram}
    return {"kind": type(drafter).__name__, "max_draft": getattr(drafter, "max_draft", None),
            "tree_width": getattr(drafter, "tree_width", 1)}


def _nothing_accepted(proposal: Proposal) -> Outcome:
    none = torch.zeros(proposal.tokens.shape, dtype=torch.bool)
    return Outcome(selected=none, accepted=none.clone(),
                   accepted_path=torch.zeros(proposal.batch_size, 0, dtype=torch.long))


def _greedy_accept_len(tokens: np.ndarray, parents: np.ndarray | None, continuation: np.ndarray) -> np.ndarray:
    """Accepted tokens when every proposed candidate is verified: [R, T] from draft_tokens
    [R, T, D] and continuation [R, L] (the first child on the path whose token is the target's)."""
    R, T, D = tokens.shape
    out = np.zeros((R, T), dtype=np.int64)
    for r in range(R):
        for t in range(T):
            current, depth = -1, 0
            while True:
                want = continuation[r, t + depth]
                kids = [n for n in range(current + 1, D)
                        if tokens[r, t, n] == want and tokens[r, t, n] >= 0
                        and (n - 1 if parents is None else parents[r, t, n]) == current]
                if not kids:
                    break
                current, depth = kids[0], depth + 1
            out[r, t] = depth
    return out


def record(
    target,
    drafter,
    prompts: list[list[int]],
    max_new_tokens: int,
    max_draft: int,
    eos_token_id: int | list[int] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> Trace:
    """Greedy-decode `prompts` once and store, for every output position, the drafter's
    proposal of up to `max_draft` tokens from that prefix and the target's continuation.

    The continuation comes from the live loop itself (`generate` with `Autoregressive`),
    `max_draft + 1` tokens past `max_new_tokens` and past EOS, so that acceptance of any
    selection of any proposal is known exactly. Proposals come from the drafter's own
    `add` / `propose` / `update` protocol, advancing every request by one token per call and
    verifying nothing (so a calibrating drafter keeps its prior while recording: replay
    re-runs its calibration from the stored raw features).
    """
    if max_draft < 1 or max_new_tokens < 1:
        raise ValueError("record: need max_draft >= 1 and max_new_tokens >= 1")
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    R, T = len(prompts), max_new_tokens
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=R * (T + max_draft + 1), desc="record: target", unit="tok")
    result = generate(target, prompts, Autoregressive(), max_new_tokens=T + max_draft + 1,
                      max_batch_size=batch_size, progress=bar)
    if bar is not None:
        bar.close()
    continuation = np.array(result.tokens, dtype=np.int64).reshape(R, T + max_draft + 1)
    out_len = np.full(R, T, dtype=np.int64)
    for r in range(R):
        hits = [i for i, tok in enumerate(continuation[r, :T]) if tok in eos]
        if hits:
            out_len[r] = hits[0] + 1

    D = max_draft
    tokens = np.full((R, T, D), -1, dtype=np.int64)
    parents = None
    features = None
    token_lp = np.full((R, T, D), -np.inf, dtype=np.float32)
    cum_lp = np.full((R, T, D), -np.inf, dtype=np.float32)
    chunk = batch_size or R
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=R * T, desc="record: drafts", unit="pos")
    with torch.inference_mode():
        for lo in range(0, R, chunk):
            rows = list(range(lo, min(R, lo + chunk)))
            requests = [Request(r, list(prompts[r]), len(prompts[r]), T) for r in rows]
            drafter.add(requests)
            for t in range(T):
                proposal = drafter.propose(requests, D, 0.0, None)
                n = proposal.num_candidates
                block = np.s_[lo:lo + len(rows), t, :n]
                tokens[block] = proposal.tokens.numpy()
                token_lp[block] = proposal.token_logprobs.numpy()
                cum_lp[block] = proposal.cum_logprobs.numpy()
                if proposal.parents is not None:
                    if parents is None:
                        parents = np.tile(np.arange(-1, D - 1, dtype=np.int64), (R, T, 1))
                    parents[block] = proposal.parents.numpy()
                if proposal.features is not None:
                    if features is None:
                        features = np.zeros((R, T, D, proposal.features.shape[-1]), dtype=np.float32)
                    features[block] = proposal.features.numpy()
                drafter.update(requests, proposal, _nothing_accepted(proposal))
                for request, r in zip(requests, rows):
                    request.tokens.append(int(continuation[r, t]))
                if bar is not None:
                    bar.update(len(rows))
            drafter.keep([])  # the chunk leaves the drafter's batch
    if bar is not None:
        bar.close()
    return Trace(
        prompts=[list(p) for p in prompts],
        continuation=continuation,
        out_len=out_len,
        draft_tokens=tokens,
        draft_parents=parents,
        draft_features=features,
        draft_token_logprobs=token_lp,
        draft_cum_logprobs=cum_lp,
        accept_len=_greedy_accept_len(tokens, parents, continuation),
        drafter=_drafter_config(drafter),
        max_new_tokens=T,
        eos_token_ids=eos,
    )


# ------------------------------------------------------------------------------------------
# replay


class _SimRequest:
    """A replayed request: `index` is its id (the calibration keys on it), `row` its trace row,
    `t` its output length so far. `tokens` (prompt + output) is built only when asked for."""

    __slots__ = ("index", "row", "t", "arrival", "start", "finish", "finish_also", "_trace")

    def __init__(self, index: int, row: int, arrival: float, trace: Trace):
        self.index, self.row, self.arrival, self._trace = index, row, arrival, trace
        self.t, self.start, self.finish = 0, math.nan, math.nan
        self.finish_also: list[float] = []

    @property
    def tokens(self) -> list[int]:
        return self._trace.prompts[self.row] + self._trace.continuation[self.row, : self.t].tolist()

    @property
    def root(self) -> int:
        """The last accepted token (the last prompt token before any output)."""
        return self._trace.prompts[self.row][-1] if self.t == 0 else int(self._trace.continuation[self.row, self.t - 1])

    @property
    def prefix_len(self) -> int:
        """Tokens in the target's KV cache: prompt + output, minus the root."""
        return len(self._trace.prompts[self.row]) + self.t - 1


class _ProposalSource:
    """Rebuilds each step's Proposal from the trace: through the n-gram drafter's own
    `proposal_from_matches` (its calibration), or from the recorded confidences."""

    def __init__(self, trace: Trace, drafter):
        self.trace, self.drafter = trace, drafter
        if drafter is not None and trace.drafter.get("kind") != "ngram":
            raise ValueError("replay: a drafter is re-run only for n-gram traces; "
                             f"this trace holds recorded {trace.drafter.get('kind')} proposals")
        if trace.drafter.get("kind") == "ngram" and drafter is None:
            cfg = trace.drafter
            self.drafter = NgramDrafter(cfg["max_draft"], cfg["max_ngram"], cfg["min_ngram"])
        self.max_draft = trace.max_draft if self.drafter is None else min(trace.max_draft, self.drafter.max_draft)

    def propose(self, requests: list[_SimRequest], num_draft: int) -> Proposal:
        tr = self.trace
        n = min(num_draft, self.max_draft)
        if tr.is_tree and n != tr.max_draft:
            raise ValueError(
                f"replay: the trace holds trees of {tr.max_draft} drafts; a policy drafting {n} per "
                "request needs a trace recorded with max_draft = that number")
        rows = np.array([r.row for r in requests])
        ts = np.array([r.t for r in requests])
        tokens = tr.draft_tokens[rows, ts, :n]
        if self.drafter is not None and tr.draft_features is not None:
            feats = tr.draft_features[rows, ts, :n]
            matches = []
            counts = (tokens >= 0).sum(1).tolist()
            for b, k in enumerate(counts):
                matches.append(NgramMatch(tokens[b, :k].tolist(), feats[b, :k].tolist()))
            return self.drafter.proposal_from_matches(matches, [r.index for r in requests], n)
        parents = None if not tr.is_tree else torch.from_numpy(tr.draft_parents[rows, ts, :n].copy())
        return Proposal(
            torch.from_numpy(tokens.copy()), parents,
            torch.from_numpy(tr.draft_token_logprobs[rows, ts, :n].copy()),
            torch.from_numpy(tr.draft_cum_logprobs[rows, ts, :n].copy()),
        )

    def add(self, requests) -> None:
        if self.drafter is not None:
            self.drafter.add(requests)

    def keep(self, rows: list[int]) -> None:
        if self.drafter is not None:
            self.drafter.keep(rows)

    def update(self, requests, proposal: Proposal, outcome: Outcome) -> None:
        if self.drafter is not None:
            self.drafter.update(requests, proposal, outcome)


@dataclass
class ReplayResult:
    """metrics: throughput, latency percentiles, verification success rate, waste, per-step
    means (under `cost_model`). also: the same metrics priced by each of `also_price`.
    per_step: one record per step (as the live loop's stats["per_step"], plus seconds).
    requests: id, trace row, arrival, start and finish time, tokens of every request."""

    metrics: dict
    per_step: list[dict]
    requests: list[dict]
    also: dict[str, dict] = field(default_factory=dict)


def _arrival_times(arrival, n: int, rng: np.random.Generator) -> np.ndarray:
    if arrival is None or arrival == "all":
        return np.zeros(n)
    if isinstance(arrival, (int, float)):
        if arrival <= 0:
            raise ValueError("replay: a Poisson arrival rate must be > 0 requests per second")
        return np.cumsum(rng.exponential(1.0 / arrival, size=n))
    times = np.asarray(arrival, dtype=np.float64)
    if times.shape != (n,):
        raise ValueError(f"replay: arrival times need shape ({n},), got {times.shape}")
    return times


def replay(
    trace: Trace,
    policy: Policy,
    batch_size: int,
    cost_model: CostModel,
    arrival="all",
    num_requests: int | None = None,
    seed: int = 0,
    drafter=None,
    also_price: tuple[CostModel, ...] = (),
    keep_steps: bool = True,
    progress: bool = False,
) -> ReplayResult:
    """Simulate continuous batching of the trace's requests under `policy`.

    batch_size: most requests decoding together (a finished one leaves, the next arrived one
    joins at the next step, as in `generate`). arrival: "all" (every request waits at time 0),
    a Poisson rate in requests per second, or an array of arrival times. num_requests: None
    replays every trace request once, in order (ids = trace rows, as in the live run);
    otherwise that many requests drawn uniformly with replacement from the trace (seed).
    drafter: for n-gram traces, a fresh NgramDrafter to re-run (default: one with the
    recorded settings and the default calibration). The policy object is used as is (pass a
    fresh one: policies keep state). also_price: more cost models that price the very same
    steps (valid when every request arrives at once and the policy's decisions do not depend
    on latency, i.e. not for GoodputSD / GoodputTetris, which see `cost_model`'s latencies).
    """
    if batch_size < 1:
        raise ValueError("replay: batch_size must be >= 1")
    if also_price and not (arrival is None or arrival == "all"):
        raise ValueError("replay: also_price needs arrival='all' (arrivals interact with the clock)")
    rng = np.random.default_rng(seed)
    if num_requests is None:
        rows = np.arange(trace.num_requests)
    else:
        rows = rng.integers(0, trace.num_requests, size=num_requests)
    arrivals = _arrival_times(arrival, len(rows), rng)
    order = np.argsort(arrivals, kind="stable")
    waiting = deque(_SimRequest(int(i), int(rows[i]), float(arrivals[i]), trace) for i in order)
    source = _ProposalSource(trace, drafter)
    draft_passes_per_token = 0 if trace.drafter.get("kind") == "ngram" else 1
    continuation = torch.from_numpy(trace.continuation)

    active: list[_SimRequest] = []
    done: list[_SimRequest] = []
    per_step: list[dict] = []
    totals = dict.fromkeys(("steps", "drafted", "verified", "accepted", "generated", "padded_tokens"), 0)
    clock = 0.0
    clocks_also = [0.0] * len(also_price)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=int(trace.out_len[rows].sum()), desc=f"replay {policy} B={batch_size}", unit="tok")
    with torch.inference_mode():
        while waiting or active:
            joining = []
            while waiting and len(active) + len(joining) < batch_size and waiting[0].arrival <= clock:
                joining.append(waiting.popleft())
            if not active and not joining:
                clock = waiting[0].arrival  # idle until the next request arrives
                continue
            for r in joining:
                r.start = clock
            source.add(joining)
            active += joining
            B = len(active)

            num_draft = policy.num_draft(B)
            proposal = source.propose(active, num_draft) if num_draft > 0 else Proposal.empty(B)
            selected = policy.choose(proposal)
            prefix_lens = torch.tensor([r.prefix_len for r in active], dtype=torch.long)
            roots = torch.tensor([r.root for r in active], dtype=torch.long)
            block = build_block(proposal, selected, roots, prefix_lens)
            # The target's greedy token after each slot: the continuation at the slot's depth
            # (exact on the accepted path, the only slots verification reads).
            rows_t = torch.tensor([r.row for r in active], dtype=torch.long)
            ts = torch.tensor([r.t for r in active], dtype=torch.long)
            depth = block.positions - prefix_lens.unsqueeze(1)
            target_tokens = continuation[rows_t.unsqueeze(1), ts.unsqueeze(1) + depth]
            target_tokens = torch.where(block.real, target_tokens, -1)
            verified = Verified(*torch.ops.tetris.verify_greedy(block.tokens, block.slot_parent, target_tokens))
            outcome = verified.outcome(block, selected)
            if num_draft > 0:
                source.update(active, proposal, outcome)

            num_verified, num_accepted = outcome.num_verified(), outcome.num_accepted()
            out_len = trace.out_len[rows_t.numpy()]
            generated = np.minimum(num_accepted.numpy() + 1, out_len - ts.numpy())
            drafted = proposal.counts()
            shape = StepShape(
                requests=B,
                query_tokens=B + int(num_verified.sum()),
                padded_query_tokens=B * block.width,
                context_tokens=int(prefix_lens.sum()),
                attention_work=int(((num_verified + 1) * (prefix_lens + num_verified + 1)).sum()),
                drafting_requests=B if num_draft > 0 else 0,
                drafted_tokens=int(drafted.sum()),
                draft_passes=draft_passes_per_token * min(num_draft, source.max_draft),
                prefill_tokens=sum(len(trace.prompts[r.row]) - 1 for r in joining),
                prefill_requests=len(joining),
            )
            cost = price_step(cost_model, shape)
            seconds = cost.seconds
            policy.observe(StepFeedback(verified=num_verified, accepted=num_accepted,
                                        padded_tokens=B * block.width, draft_seconds=cost.draft_seconds,
                                        verify_seconds=cost.verify_seconds))
            clock += seconds
            for i, model in enumerate(also_price):
                clocks_also[i] += price_step(model, shape).seconds

            totals["steps"] += 1
            totals["drafted"] += int(drafted.sum())
            totals["verified"] += int(num_verified.sum())
            totals["accepted"] += int(num_accepted.sum())
            totals["generated"] += int(generated.sum())
            totals["padded_tokens"] += B * block.width
            if keep_steps:
                per_step.append({
                    "requests": [r.index for r in active],
                    "drafted": drafted.tolist(),
                    "verified": num_verified.tolist(),
                    "accepted": num_accepted.tolist(),
                    "generated": generated.tolist(),
                    "block_width": block.width,
                    "seconds": seconds,
                })
            for r, g in zip(active, generated.tolist()):
                r.t += g
            if bar is not None:
                bar.update(int(generated.sum()))
            keep = [i for i, r in enumerate(active) if r.t < trace.out_len[r.row]]
            if len(keep) < B:
                for r in active:
                    if r.t >= trace.out_len[r.row]:
                        r.finish, r.finish_also = clock, list(clocks_also)
                        done.append(r)
                source.keep(keep)
                active = [active[i] for i in keep]
    if bar is not None:
        bar.close()
    also = {model.name: _metrics(totals, [r.finish_also[i] - r.arrival for r in done], clocks_also[i],
                                 policy, batch_size, model)
            for i, model in enumerate(also_price)}
    return ReplayResult(
        _metrics(totals, [r.finish - r.arrival for r in done], clock, policy, batch_size, cost_model),
        per_step,
        [{"id": r.index, "row": r.row, "arrival": r.arrival, "start": r.start, "finish": r.finish,
          "tokens": r.t} for r in sorted(done, key=lambda r: r.index)],
        also,
    )


def _metrics(totals: dict, latencies: list[float], clock: float, policy, batch_size, cost_model) -> dict:
    latency = np.array(latencies) if latencies else np.zeros(1)
    steps = max(1, totals["steps"])
    return {
        "policy": str(policy),
        "batch_size": batch_size,
        "cost_model": cost_model.name,
        "requests": len(latencies),
        "steps": totals["steps"],
        "simulated_seconds": clock,
        "throughput_tokens_per_s": totals["generated"] / clock if clock > 0 else math.nan,
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p90_s": float(np.percentile(latency, 90)),
        "latency_p99_s": float(np.percentile(latency, 99)),
        "generated_tokens": totals["generated"],
        "drafted_tokens": totals["drafted"],
        "verified_tokens": totals["verified"],
        "accepted_tokens": totals["accepted"],
        "wasted_verified_tokens": totals["verified"] - totals["accepted"],
        "verification_success_rate": totals["accepted"] / totals["verified"] if totals["verified"] else math.nan,
        "accepted_per_step": totals["accepted"] / steps,
        "verified_per_step": totals["verified"] / steps,
        "generated_per_step": totals["generated"] / steps,
        "padded_tokens_per_step": totals["padded_tokens"] / steps,
    }
