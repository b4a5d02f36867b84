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

`replay` runs the live loop's own step and continuous-batching loop (`tetris_ext.engine`)
with a `ReplayTarget` in place of the model: the policy object's num_draft / choose / observe,
the drafter's `proposal_from_matches` (the n-gram drafter's online calibration runs on the
replayed outcomes, so its confidences evolve exactly as in a live run) or the recorded
proposals of other drafters, `verification.build_block` (`tetris.tree_mask`) and
`tetris.verify_greedy` against the recorded continuation, and the same statistics. Time comes
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
from torch import Tensor

from .calibration import NGRAM_FEATURES
from .cost_models import CostModel, RooflineCostModel, StepShape, price_step
from .decoding import Request, generate
from .drafters import NgramDrafter, NgramMatch, transition_agreements
from .engine import Engine, StepRecord, StepTimes
from .policies import Autoregressive, Policy
from .proposal import Outcome, Proposal
from .stats import RunStats
from .verification import Block, Verified, verify_greedy_tokens

__all__ = ["Trace", "record", "redraft", "replay", "ReplayResult", "oracle_estimates"]

# An oracle's estimate for a candidate off the target's path: small, not 0, so that log
# probabilities stay finite and policies that rank (rather than threshold) still see order.
ORACLE_MISS = 1e-4

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
            if self.prompts
            else np.zeros(0, np.int64),
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
        meta = {
            "version": TRACE_VERSION,
            "drafter": self.drafter,
            "max_new_tokens": self.max_new_tokens,
            "eos_token_ids": self.eos_token_ids,
        }
        np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            if meta["version"] != TRACE_VERSION:
                raise ValueError(f"{path}: trace version {meta['version']}, expected {TRACE_VERSION}")
            ends = np.cumsum(z["prompt_lens"])
            flat = z["prompt_tokens"]
            prompts = [flat[e - n : e].tolist() for e, n in zip(ends, z["prompt_lens"])]
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
        return {
            "kind": "ngram",
            "max_draft": drafter.max_draft,
            "max_ngram": drafter.max_ngram,
            "min_ngram": drafter.min_ngram,
            # Drafts continue past the context's end (drafters.overlapping_copy, 2026-11-30);
            # a trace without this key was drafted by the rule before, which stopped there.
            "copy": "overlapping",
        }
    return {
        "kind": type(drafter).__name__,
        "max_draft": getattr(drafter, "max_draft", None),
        "tree_width": getattr(drafter, "tree_width", 1),
    }


def _nothing_accepted(proposal: Proposal) -> Outcome:
    none = torch.zeros(proposal.tokens.shape, dtype=torch.bool)
    return Outcome(
        selected=none,
        accepted=none.clone(),
        accepted_path=torch.zeros(proposal.batch_size, 0, dtype=torch.long),
    )


def _greedy_accept_len(
    tokens: np.ndarray, parents: np.ndarray | None, continuation: np.ndarray
) -> np.ndarray:
    """Accepted tokens when every proposed candidate is verified: [R, T] from draft_tokens
    [R, T, D] and continuation [R, L] (the first child on the path whose token is the target's)."""
    R, T, D = tokens.shape
    out = np.zeros((R, T), dtype=np.int64)
    for r in range(R):
        for t in range(T):
            current, depth = -1, 0
            while True:
                want = continuation[r, t + depth]
                kids = [
                    n
                    for n in range(current + 1, D)
                    if tokens[r, t, n] == want
                    and tokens[r, t, n] >= 0
                    and (n - 1 if parents is None else parents[r, t, n]) == current
                ]
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
    eos = (
        []
        if eos_token_id is None
        else [eos_token_id]
        if isinstance(eos_token_id, int)
        else list(eos_token_id)
    )
    continuation, out_len = _record_continuation(
        target, prompts, max_new_tokens, max_draft, eos, batch_size, progress
    )
    return _drafted_trace(
        [list(p) for p in prompts],
        continuation,
        out_len,
        drafter,
        max_new_tokens,
        max_draft,
        eos,
        batch_size,
        progress,
    )


def redraft(
    trace: Trace,
    drafter,
    max_draft: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> Trace:
    """The trace's requests and target continuations with `drafter`'s proposals, no model run.

    At temperature 0 the continuation does not depend on the drafter, so a trace recorded
    with one drafter becomes the trace another drafter (or a later version of the same one)
    would have recorded: what `record` would return for the same target and prompts.
    ``max_draft`` (default the trace's) can only shrink: the continuation holds the trace's
    ``max_draft + 1`` tokens past the end.
    """
    D = trace.max_draft if max_draft is None else max_draft
    if not 1 <= D <= trace.max_draft:
        raise ValueError(f"redraft: max_draft must be in [1, {trace.max_draft}] (the trace's), got {D}")
    return _drafted_trace(
        trace.prompts,
        trace.continuation,
        trace.out_len,
        drafter,
        trace.max_new_tokens,
        D,
        trace.eos_token_ids,
        batch_size,
        progress,
    )


def _drafted_trace(
    prompts,
    continuation,
    out_len,
    drafter,
    max_new_tokens: int,
    max_draft: int,
    eos: list[int],
    batch_size,
    progress: bool,
) -> Trace:
    """The drafter's proposals at every output position of the recorded continuations."""
    drafts = _DraftArrays(len(prompts), max_new_tokens, max_draft)
    bar = _progress_bar(progress, len(prompts) * max_new_tokens, "record: drafts", "pos")
    chunk = batch_size or len(prompts)
    with torch.inference_mode():
        for lo in range(0, len(prompts), chunk):
            rows = list(range(lo, min(len(prompts), lo + chunk)))
            _record_chunk(drafter, prompts, rows, continuation, drafts, bar)
    if bar is not None:
        bar.close()
    return Trace(
        prompts=prompts,
        continuation=continuation,
        out_len=out_len,
        draft_tokens=drafts.tokens,
        draft_parents=drafts.parents,
        draft_features=drafts.features,
        draft_token_logprobs=drafts.token_logprobs,
        draft_cum_logprobs=drafts.cum_logprobs,
        accept_len=_greedy_accept_len(drafts.tokens, drafts.parents, continuation),
        drafter=_drafter_config(drafter),
        max_new_tokens=max_new_tokens,
        eos_token_ids=list(eos),
    )


def _progress_bar(enabled: bool, total: int, desc: str, unit: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def _record_continuation(
    target, prompts, max_new_tokens: int, max_draft: int, eos: list[int], batch_size, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The target's greedy continuation [R, T + D + 1] of every prompt (the live loop with
    `Autoregressive`), and each request's output length [R] (T, or through its first EOS)."""
    R, T = len(prompts), max_new_tokens
    bar = _progress_bar(progress, R * (T + max_draft + 1), "record: target", "tok")
    result = generate(
        target,
        prompts,
        Autoregressive(),
        max_new_tokens=T + max_draft + 1,
        max_batch_size=batch_size,
        progress=bar,
    )
    if bar is not None:
        bar.close()
    continuation = np.array(result.tokens, dtype=np.int64).reshape(R, T + max_draft + 1)
    out_len = np.full(R, T, dtype=np.int64)
    for r in range(R):
        hits = [i for i, tok in enumerate(continuation[r, :T]) if tok in eos]
        if hits:
            out_len[r] = hits[0] + 1
    return continuation, out_len


class _DraftArrays:
    """The proposals of R requests at T positions, up to D candidates each (Trace's draft_*)."""

    def __init__(self, R: int, T: int, D: int):
        self.shape = (R, T, D)
        self.tokens = np.full((R, T, D), -1, dtype=np.int64)
        self.token_logprobs = np.full((R, T, D), -np.inf, dtype=np.float32)
        self.cum_logprobs = np.full((R, T, D), -np.inf, dtype=np.float32)
        self.parents: np.ndarray | None = None  # allocated at the first tree proposal
        self.features: np.ndarray | None = None  # allocated at the first proposal with features

    def store(self, rows: slice, t: int, proposal: Proposal) -> None:
        R, T, D = self.shape
        at = np.s_[rows, t, : proposal.num_candidates]
        self.tokens[at] = proposal.tokens.numpy()
        self.token_logprobs[at] = proposal.token_logprobs.numpy()
        self.cum_logprobs[at] = proposal.cum_logprobs.numpy()
        if proposal.parents is not None:
            if self.parents is None:
                self.parents = np.tile(np.arange(-1, D - 1, dtype=np.int64), (R, T, 1))
            self.parents[at] = proposal.parents.numpy()
        if proposal.features is not None:
            if self.features is None:
                self.features = np.zeros((R, T, D, proposal.features.shape[-1]), dtype=np.float32)
            self.features[at] = proposal.features.numpy()


def _record_chunk(
    drafter, prompts, rows: list[int], continuation: np.ndarray, drafts: _DraftArrays, bar
) -> None:
    """Propose for requests `rows` at every output position, advancing them one target token
    at a time and verifying nothing."""
    _, T, D = drafts.shape
    requests = [Request(r, list(prompts[r]), len(prompts[r]), T) for r in rows]
    drafter.add(requests)
    for t in range(T):
        proposal = drafter.propose(requests, D, 0.0, None)
        drafts.store(slice(rows[0], rows[-1] + 1), t, proposal)
        drafter.update(requests, proposal, _nothing_accepted(proposal))
        for request, r in zip(requests, rows):
            request.tokens.append(int(continuation[r, t]))
        if bar is not None:
            bar.update(len(rows))
    drafter.keep([])  # the chunk leaves the drafter's batch


# ------------------------------------------------------------------------------------------
# replay


class _SimRequest:
    """A replayed request: `index` is its id (the calibration keys on it), `row` its trace row,
    `t` its output length so far. `tokens` (prompt + output) is built only when asked for."""

    __slots__ = ("index", "row", "t", "out_len", "arrival", "start", "finish", "finish_also", "_trace")

    def __init__(self, index: int, row: int, arrival: float, trace: Trace):
        self.index, self.row, self.arrival, self._trace = index, row, arrival, trace
        self.t, self.out_len = 0, int(trace.out_len[row])
        self.start, self.finish = math.nan, math.nan
        self.finish_also: list[float] = []

    @property
    def tokens(self) -> list[int]:
        return self._trace.prompts[self.row] + self._trace.continuation[self.row, : self.t].tolist()

    @property
    def root(self) -> int:
        """The last accepted token (the last prompt token before any output)."""
        return (
            self._trace.prompts[self.row][-1]
            if self.t == 0
            else int(self._trace.continuation[self.row, self.t - 1])
        )

    @property
    def prefix_len(self) -> int:
        """Tokens in the target's KV cache: prompt + output, minus the root."""
        return len(self._trace.prompts[self.row]) + self.t - 1

    @property
    def finished(self) -> bool:
        return self.t >= self.out_len

    @property
    def output_len(self) -> int:
        return self.t

    @property
    def tokens_left(self) -> int:
        """What an engine would know: the recording's max_new_tokens less the output so far,
        not the recorded length (an EOS, or the steady protocol's cut, ends it unannounced)."""
        return self._trace.max_new_tokens - self.t

    def summary(self) -> dict:
        """ReplayResult.requests' record of this request."""
        return {
            "id": self.index,
            "row": self.row,
            "arrival": self.arrival,
            "start": self.start,
            "finish": self.finish,
            "tokens": self.t,
        }

    def advance(self, out_tokens: list[int]) -> int:
        """The verified tokens are the recorded continuation's: only count them, up to the
        recorded output length (which ends at the first EOS)."""
        taken = min(sum(1 for token in out_tokens if token >= 0), self.out_len - self.t)
        self.t += taken
        return taken


def oracle_estimates(proposal: Proposal, truth: Tensor) -> Proposal:
    """The proposal with its estimates replaced by the true outcome (chains): a candidate whose
    path equals the target's continuation ``truth`` [B, N] gets probability 1, any other
    ``ORACLE_MISS``. No estimator can rank better, so a policy's replay with these is the
    ceiling of what better estimates could give it (bench/oracle_ceiling.py)."""
    real = proposal.tokens >= 0
    on_path = ((proposal.tokens == truth) & real).long().cumprod(1).bool()
    miss = math.log(ORACLE_MISS)
    token = torch.where(proposal.tokens == truth, 0.0, miss)
    cum = torch.where(on_path, 0.0, miss)
    return Proposal(
        proposal.tokens,
        proposal.parents,
        torch.where(real, token, -math.inf).float(),
        torch.where(real, cum, -math.inf).float(),
        features=proposal.features,
    )


def _with_transition_agreements(features: np.ndarray, tokens: np.ndarray, counts: list[int], requests):
    """Recorded n-gram features [B, n, 4] with the transition agreements appended, computed
    from each request's context as the drafter computes them live."""
    column = np.zeros(features.shape[:2] + (1,), dtype=features.dtype)
    for b, (k, request) in enumerate(zip(counts, requests)):
        if k:
            column[b, :k, 0] = transition_agreements(request.tokens, tokens[b, :k].tolist())
    return np.concatenate([features, column], -1)


class _ProposalSource:
    """The replay's drafter: rebuilds each step's Proposal from the trace, through the n-gram
    drafter's own `proposal_from_matches` (its calibration), or from the recorded confidences."""

    def __init__(self, trace: Trace, drafter, oracle: bool = False):
        self.trace, self.drafter, self.oracle = trace, drafter, oracle
        if oracle and trace.is_tree:
            raise ValueError("replay: oracle estimates are defined for chain drafts only")
        if drafter is not None and trace.drafter.get("kind") != "ngram":
            raise ValueError(
                "replay: a drafter is re-run only for n-gram traces; "
                f"this trace holds recorded {trace.drafter.get('kind')} proposals"
            )
        if trace.drafter.get("kind") == "ngram" and drafter is None:
            cfg = trace.drafter
            self.drafter = NgramDrafter(cfg["max_draft"], cfg["max_ngram"], cfg["min_ngram"])
        self.max_draft = (
            trace.max_draft if self.drafter is None else min(trace.max_draft, self.drafter.max_draft)
        )

    def propose(
        self, requests: list[_SimRequest], num_draft: int, temperature: float = 0.0, generator=None
    ) -> Proposal:
        tr = self.trace
        n = min(num_draft, self.max_draft)
        if tr.is_tree and n != tr.max_draft:
            raise ValueError(
                f"replay: the trace holds trees of {tr.max_draft} drafts; a policy drafting {n} per "
                "request needs a trace recorded with max_draft = that number"
            )
        rows = np.array([r.row for r in requests])
        ts = np.array([r.t for r in requests])
        proposal = self._recorded(rows, ts, n, requests)
        if not self.oracle:
            return proposal
        truth = tr.continuation[rows[:, None], ts[:, None] + np.arange(n)]  # [B, n]
        return oracle_estimates(proposal, torch.from_numpy(truth[:, : proposal.tokens.shape[1]]))

    def _recorded(self, rows: np.ndarray, ts: np.ndarray, n: int, requests) -> Proposal:
        tr = self.trace
        tokens = tr.draft_tokens[rows, ts, :n]
        if self.drafter is not None and tr.draft_features is not None:
            feats = tr.draft_features[rows, ts, :n]
            counts = (tokens >= 0).sum(1).tolist()
            if feats.shape[-1] < len(NGRAM_FEATURES):  # recorded before transition agreements
                feats = _with_transition_agreements(feats, tokens, counts, requests)
            matches = [
                NgramMatch(tokens[b, :k].tolist(), feats[b, :k].tolist()) for b, k in enumerate(counts)
            ]
            roots = [r.root for r in requests]
            return self.drafter.proposal_from_matches(matches, [r.index for r in requests], n, roots)
        parents = None if not tr.is_tree else torch.from_numpy(tr.draft_parents[rows, ts, :n].copy())
        return Proposal(
            torch.from_numpy(tokens.copy()),
            parents,
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


class ReplayTarget:
    """The engine's target (``engine.Target``) in a replay: the target's greedy tokens come
    from the trace's continuation, and each step is priced by ``cost_model`` (and by each of
    ``also_price``, on clocks of their own) on a simulated clock. ``padded``: the engine shape
    the cost model prices (``engine_shape``)."""

    def __init__(
        self,
        trace: Trace,
        cost_model: CostModel,
        also_price: tuple[CostModel, ...],
        max_draft: int,
        padded: bool | None = None,
    ):
        self.trace, self.cost_model, self.also_price = trace, cost_model, also_price
        self.padded = engine_shape(cost_model, padded)
        shape = {None: "shape unknown", True: "padded", False: "flat"}[self.padded]
        self.loop = f"sim.replay (cost model {cost_model.name}: {shape})"
        self.continuation = torch.from_numpy(trace.continuation)
        # Drafting costs a draft model one pass per drafted token; n-gram drafting costs none.
        self.draft_passes_per_token = 0 if trace.drafter.get("kind") == "ngram" else 1
        self.max_draft = max_draft
        self.clock = 0.0
        self.clocks_also = [0.0] * len(also_price)
        self.step_ends: list[float] = []  # the clock after each step (steady_window)

    def now(self) -> float:
        return self.clock

    def wait_until(self, when: float) -> None:
        self.clock = max(self.clock, when)

    def admit(self, joining: list[_SimRequest]) -> None:
        for r in joining:
            r.start = self.clock

    def keep(self, rows: list[int], leaving: list[_SimRequest]) -> None:
        for r in leaving:
            r.finish, r.finish_also = self.clock, list(self.clocks_also)

    def _prompt_tokens(self, joining) -> int:
        return sum(len(self.trace.prompts[r.row]) - 1 for r in joining)

    def fused_prefill_tokens(self, joining) -> int | None:
        """A chunked-prefill cost model computes the joining prompts in the step's forward."""
        return self._prompt_tokens(joining) if getattr(self.cost_model, "chunked_prefill", False) else None

    def verify(
        self, requests: list[_SimRequest], block: Block, proposal: Proposal, temperature: float, generator
    ) -> Verified:
        """The target's greedy token after each slot: the continuation at the slot's depth
        (exact on the accepted path, the only slots verification reads)."""
        rows = torch.tensor([r.row for r in requests], dtype=torch.long)
        ts = torch.tensor([r.t for r in requests], dtype=torch.long)
        depth = block.positions - block.positions[:, :1]  # slot 0 (the root) sits at the prefix length
        target_tokens = self.continuation[rows.unsqueeze(1), ts.unsqueeze(1) + depth]
        return verify_greedy_tokens(block, torch.where(block.real, target_tokens, -1))

    def times(self, record: StepRecord) -> StepTimes:
        shape = self._shape(record)
        cost = price_step(self.cost_model, shape)
        self.clock += cost.seconds
        self.step_ends.append(self.clock)
        for i, model in enumerate(self.also_price):
            self.clocks_also[i] += price_step(model, shape).seconds
        return StepTimes(
            draft=cost.draft_seconds,
            select=0.0,
            verify=cost.verify_seconds,
            step=cost.seconds,
            fused_prefill=cost.fused_prefill_seconds,
            fused_prefill_tokens=cost.fused_prefill_tokens,
        )

    def _shape(self, record: StepRecord) -> StepShape:
        B, prefix_lens = len(record.requests), record.prefix_lens
        num_verified = record.outcome.num_verified()
        return StepShape(
            requests=B,
            query_tokens=B + int(num_verified.sum()),
            padded_query_tokens=B * record.block.width,
            context_tokens=int(prefix_lens.sum()),
            attention_work=int(((num_verified + 1) * (prefix_lens + num_verified + 1)).sum()),
            drafting_requests=B if record.num_draft > 0 else 0,
            drafted_tokens=int(record.proposal.counts().sum()),
            draft_passes=self.draft_passes_per_token * min(record.num_draft, self.max_draft),
            prefill_tokens=self._prompt_tokens(record.joining),
            prefill_requests=len(record.joining),
        )


def engine_shape(cost_model: CostModel, padded: bool | None = None) -> bool | None:
    """The engine a cost model prices: a padded [B, width] block per step (True) or the real
    tokens only (False). A model with a ``padded`` flag says (``LinearCostModel``); a roofline
    prices the real tokens; others (``RecordedStepTimes``: a live run's seconds) say nothing,
    and ``padded`` (the replay's argument) must. ``padded`` contradicting the model raises."""
    known = False if isinstance(cost_model, RooflineCostModel) else getattr(cost_model, "padded", None)
    if padded is not None and known is not None and bool(padded) != bool(known):
        raise ValueError(f"replay: padded={padded} contradicts cost model {cost_model.name} (padded={known})")
    return known if padded is None else bool(padded)


@dataclass
class ReplayResult:
    """metrics: throughput, latency percentiles, verification success rate, waste, per-step
    means (under `cost_model`). also: the same metrics priced by each of `also_price`.
    per_step: one record per step (as the live loop's stats["per_step"], the seconds priced).
    requests: id, trace row, arrival, start and finish time, tokens of every request."""

    metrics: dict
    per_step: list[dict]
    requests: list[dict]
    also: dict[str, dict] = field(default_factory=dict)
    candidates: dict[str, list] = field(default_factory=dict)  # RunStats candidates (keep_candidates)


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


def _waiting_requests(
    trace: Trace, arrival, num_requests: int | None, seed: int, truncate_outputs: float | None = None
) -> deque:
    """The replay's requests in arrival order: every trace row once (ids = rows), or
    `num_requests` rows drawn with replacement (ids 0..n-1); with `truncate_outputs`, each
    output cut at a length drawn uniformly from [fraction x recorded length, recorded length]."""
    rng = np.random.default_rng(seed)
    if num_requests is None:
        rows = np.arange(trace.num_requests)
    else:
        rows = rng.integers(0, trace.num_requests, size=num_requests)
    arrivals = _arrival_times(arrival, len(rows), rng)
    requests = [_SimRequest(int(i), int(row), float(arrivals[i]), trace) for i, row in enumerate(rows)]
    if truncate_outputs is not None:
        if not 0.0 < truncate_outputs <= 1.0:
            raise ValueError("replay: truncate_outputs must be a fraction in (0, 1]")
        # its own generator: the rows and arrivals stay those of the untruncated replay
        cut = np.random.default_rng([seed, 1]).uniform(truncate_outputs, 1.0, size=len(rows))
        for r, fraction in zip(requests, cut):
            r.out_len = max(1, math.ceil(fraction * r.out_len))
    order = np.argsort(arrivals, kind="stable")
    return deque(requests[i] for i in order)


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
    keep_candidates: bool = False,
    oracle: bool = False,
    truncate_outputs: float | None = None,
    steady_window: bool = False,
    padded: bool | None = None,
) -> ReplayResult:
    """Simulate continuous batching of the trace's requests under `policy`.

    batch_size: most requests decoding together (a finished one leaves, the next arrived one
    joins at the next step, as in `generate`). arrival: "all" (every request waits at time 0),
    a Poisson rate in requests per second, or an array of arrival times. num_requests: None
    replays every trace request once, in order (ids = trace rows, as in the live run);
    otherwise that many requests drawn uniformly with replacement from the trace (seed).
    drafter: for n-gram traces, a fresh NgramDrafter to re-run (default: one with the
    recorded settings and NgramDrafter's default calibration, ``estimators.NgramLogistic()``
    without token classes: what a live ``NgramDrafter(...)`` uses). The policy object is used
    as is (pass a fresh one: policies keep state). also_price: more cost models that price the very same
    steps (valid when every request arrives at once and the policy's decisions do not depend
    on latency, i.e. not for GoodputSD / GoodputTetris, which see `cost_model`'s latencies).
    keep_candidates: keep every verified candidate's estimates and outcome (ReplayResult.candidates,
    the estimate calibration data of tetris_ext.heldout). oracle: the policy sees the true
    outcome as its estimates (``oracle_estimates``): the ceiling of any estimator. padded: the
    engine shape the replay stands for, told to the policy before its first step (a policy
    pricing steps needs it: ``GoodputSD``, ``GoodputTetris``, ``CostAwareTetris``); None
    takes ``cost_model``'s (``engine_shape``: a LinearCostModel's flag, a roofline: flat),
    needed for one that does not say (``RecordedStepTimes``: the recorded run's loop).

    A steady serving protocol (bench/README.md says what each favours): num_requests several
    times the batch (a closed loop: a finished request is replaced at once), truncate_outputs
    (each output cut at a seeded uniform length between that fraction of its recorded length
    and all of it, so requests stop finishing in waves) and steady_window (metrics also over
    the window between the first finish and the last admission, without the first prefill
    and the drain: ``_steady_metrics``).
    """
    if batch_size < 1:
        raise ValueError("replay: batch_size must be >= 1")
    if also_price and not (arrival is None or arrival == "all"):
        raise ValueError("replay: also_price needs arrival='all' (arrivals interact with the clock)")
    waiting = _waiting_requests(trace, arrival, num_requests, seed, truncate_outputs)
    source = _ProposalSource(trace, drafter, oracle)
    target = ReplayTarget(trace, cost_model, tuple(also_price), source.max_draft, padded)
    stats = RunStats(keep_steps=keep_steps or steady_window, keep_candidates=keep_candidates)
    bar = _progress_bar(progress, sum(r.out_len for r in waiting), f"replay {policy} B={batch_size}", "tok")
    with torch.inference_mode():
        done = Engine(target, source, policy, stats).run(waiting, batch_size, progress=bar)
    if bar is not None:
        bar.close()
    totals = stats.totals
    also = {
        model.name: _metrics(
            totals,
            [r.finish_also[i] - r.arrival for r in done],
            target.clocks_also[i],
            policy,
            batch_size,
            model,
        )
        for i, model in enumerate(also_price)
    }
    latencies = [r.finish - r.arrival for r in done]
    metrics = _metrics(totals, latencies, target.clock, policy, batch_size, cost_model)
    if steady_window:
        metrics |= _steady_metrics(done, target.step_ends, stats.per_step)
    requests = [r.summary() for r in sorted(done, key=lambda r: r.index)]
    return ReplayResult(metrics, stats.per_step if keep_steps else [], requests, also, dict(stats.candidates))


def _steady_metrics(done: list[_SimRequest], step_ends: list[float], per_step: list[dict]) -> dict:
    """Throughput over the steady window, from the first finish (the first batch is prefilled
    and starts turning over) to the last admission (then the queue is empty and the batch
    drains): the tokens of the steps that end inside it over its seconds, and over its decoding
    seconds alone (without the prefill of joining requests: every policy prefills the same
    prompts, but which of them fall inside the window varies by a percent or so, which the
    prefill-heavy window throughput then shows as a difference between policies). And each
    request's service time (admission to finish, without the wait in the queue), whole and per
    token."""
    first_finish, last_start = min(r.finish for r in done), max(r.start for r in done)
    ends = np.array(step_ends)
    generated = np.array([sum(s["generated"]) for s in per_step])
    decoding = np.array([s["draft_seconds"] + s["select_seconds"] + s["verify_seconds"] for s in per_step])
    inside = (ends > first_finish) & (ends <= last_start)
    seconds, tokens = last_start - first_finish, int(generated[inside].sum())
    decode_seconds = float(decoding[inside].sum())
    service = np.array([r.finish - r.start for r in done])
    per_token = service / np.array([max(1, r.t) for r in done])
    return {
        "steady_seconds": seconds,
        "steady_steps": int(inside.sum()),
        "steady_tokens": tokens,
        "steady_throughput_tokens_per_s": tokens / seconds if seconds > 0 else math.nan,
        "steady_decode_seconds": decode_seconds,
        "steady_decode_throughput_tokens_per_s": tokens / decode_seconds if decode_seconds > 0 else math.nan,
        "service_p50_s": float(np.percentile(service, 50)),
        "service_p90_s": float(np.percentile(service, 90)),
        "service_per_token_p50_s": float(np.percentile(per_token, 50)),
        "service_per_token_p90_s": float(np.percentile(per_token, 90)),
    }


def _metrics(totals: dict, latencies: list[float], clock: float, policy, batch_size, cost_model) -> dict:
    """Replay metrics from RunStats totals."""
    latency = np.array(latencies) if latencies else np.zeros(1)
    steps = max(1, totals["steps"])
    verified, accepted, generated = (
        totals["verified_tokens"],
        totals["accepted_tokens"],
        totals["generated_tokens"],
    )
    return {
        "policy": str(policy),
        "batch_size": batch_size,
        "cost_model": cost_model.name,
        "requests": len(latencies),
        "steps": totals["steps"],
        "simulated_seconds": clock,
        "throughput_tokens_per_s": generated / clock if clock > 0 else math.nan,
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p90_s": float(np.percentile(latency, 90)),
        "latency_p99_s": float(np.percentile(latency, 99)),
        "generated_tokens": generated,
        "drafted_tokens": totals["drafted_tokens"],
        "verified_tokens": verified,
        "accepted_tokens": accepted,
        "wasted_verified_tokens": verified - accepted,
        "verification_success_rate": accepted / verified if verified else math.nan,
        "accepted_per_step": accepted / steps,
        "verified_per_step": verified / steps,
        "generated_per_step": generated / steps,
        "padded_tokens_per_step": totals["padded_tokens"] / steps,
    }
