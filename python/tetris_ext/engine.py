"""One speculative decoding step and the continuous-batching loop, written once.

The live loop (``decoding.generate``) and the trace replay (``sim.replay``) both run
``Engine``; they differ only in the target they plug in:

- ``decoding.LiveTarget`` runs the model's forward over a ragged KV cache, rolls back the
  rejected slots, and reports the wall-clock time of each phase;
- ``sim.ReplayTarget`` reads the target's greedy tokens from a recorded continuation and
  prices each step with a cost model on a simulated clock.

One step for the batch of active requests (rows):

    propose -> the drafter's candidates, ``policy.num_draft`` per request,    (drafters)
               but none past a request's budget of new tokens                 (Proposal.usable)
    choose  -> the candidates the target verifies                              (policy.choose)
    block   -> slots, positions and tree mask of the selection                 (build_block)
    verify  -> the target's decision: accepted slots, output tokens            (target.verify)
    outcome -> the decision in candidate indices; the drafter learns from it   (drafter.update)
    advance -> every request takes its accepted tokens and the bonus token     (request.advance)
    time    -> what the step cost; the policy observes it                      (target.times)
    record  -> totals and per-step records                                     (RunStats)

The loop admits waiting requests while the batch has room (and, in a replay, once they have
arrived), runs a step, and retires the finished requests; the drafter and the target follow
the batch's rows through ``add`` / ``admit`` and ``keep``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from .policies import Policy, StepFeedback
from .proposal import Outcome, Proposal
from .stats import RunStats
from .verification import Block, Verified, build_block

__all__ = ["Engine", "StepRecord", "StepTimes", "Target", "DecodingRequest"]


class DecodingRequest(Protocol):
    """What the engine reads of a request (``decoding.Request``, the replay's requests)."""

    index: int  # a stable id: stats, per-request calibration
    arrival: float  # when it may join, on the target's clock
    finished: bool

    @property
    def root(self) -> int:
        """The last accepted token: slot 0 of the next block, not yet in the target's cache."""

    @property
    def prefix_len(self) -> int:
        """Tokens in the target's cache (prompt + output - the root) = the root's position."""

    @property
    def tokens_left(self) -> int:
        """Tokens it may still generate (>= 1 while not finished): its budget less its output,
        an upper bound (an EOS may end it earlier). ``Proposal.tokens_left``."""

    @property
    def output_len(self) -> int:
        """Tokens it has generated so far. ``Proposal.output_lens``."""

    def advance(self, out_tokens: list[int]) -> int:
        """Take the step's accepted tokens + bonus (-1 padded); returns how many were taken."""


@dataclass(frozen=True)
class StepTimes:
    """Seconds of one step: drafting, selection, verification (target forward, acceptance,
    rollback, drafter update) and the whole step (a replay also charges the prefill of joining
    requests to it). A cost model prices selection within verification (select = 0).
    ``fused_prefill_tokens``: the prompt tokens of joining requests that the verification
    forward computed too (a chunked-prefill engine; None: prefilled apart), which added
    ``fused_prefill`` seconds to it; the policy is then told the whole forward's seconds and
    that token count, as vLLM's proposer is (``StepFeedback.prefill_tokens``)."""

    draft: float
    select: float
    verify: float
    step: float
    fused_prefill: float = 0.0
    fused_prefill_tokens: int | None = None

    def as_dict(self) -> dict[str, float]:
        return {"draft": self.draft, "select": self.select, "verify": self.verify, "step": self.step}


@dataclass
class StepRecord:
    """Everything a target needs to price one step (``Target.times``)."""

    requests: Sequence[DecodingRequest]
    joining: Sequence[DecodingRequest]  # admitted right before this step
    num_draft: int
    proposal: Proposal
    block: Block
    outcome: Outcome
    prefix_lens: Tensor  # [B] int64
    measured: StepTimes  # the wall clock of this process


class Target(Protocol):
    """The model side of a step, and the clock requests arrive on."""

    # The engine's shape: the verification forward computes the padded [B, width] block (True)
    # or the real tokens only (False; None: unknown, e.g. a replay of recorded step times).
    # The policy is told before the first step (``Policy.bind_engine``).
    padded: bool | None
    loop: str  # names this loop in error messages

    def now(self) -> float:
        """The current time on this target's clock."""

    def wait_until(self, when: float) -> None:
        """Idle until ``when`` (no request is active and the next one has not arrived)."""

    def admit(self, joining: list) -> None:
        """Requests join as the last rows (live: prefill all their tokens but the root)."""

    def keep(self, rows: list[int], leaving: list) -> None:
        """Only ``rows`` stay, in this order; ``leaving`` are the finished requests."""

    def verify(
        self, requests: list, block: Block, proposal: Proposal, temperature: float, generator
    ) -> Verified:
        """The target's decision on ``block`` (and, live, the KV cache rolled back to it)."""

    def times(self, record: StepRecord) -> StepTimes:
        """What the step cost: measured (live) or priced (replay)."""

    def fused_prefill_tokens(self, joining: Sequence) -> int | None:
        """The prompt tokens of ``joining`` that this step's forward computes beside the
        decoding tokens (a chunked-prefill engine; ``Proposal.prefill_tokens``), or None when
        they are prefilled apart (``admit``)."""


class Engine:
    """Runs steps of ``policy`` with ``drafter`` (or None: no drafts) against ``target``,
    recording into ``stats``. ``temperature`` 0 is greedy; above 0, ``generator`` drives the
    drafter's and the verification's sampling."""

    def __init__(
        self,
        target: Target,
        drafter,
        policy: Policy,
        stats: RunStats,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        self.target, self.drafter, self.policy, self.stats = target, drafter, policy, stats
        self.temperature, self.generator = temperature, generator
        # The shape the feedback reports: the target's, or (a replay of recorded step times)
        # the policy's own flag; unknown to both, only a policy that prices nothing runs.
        self.padded = policy.bind_engine(target.padded, target.loop)

    def run(self, waiting: deque, max_batch_size: int, progress=None) -> list:
        """Decode every request of ``waiting`` (in arrival order), at most ``max_batch_size``
        at a time; returns the requests in the order they finished. ``progress``: a tqdm-like
        object updated with the number of generated tokens."""
        active: list = []
        done: list = []
        while waiting or active:
            joining = []
            while (
                waiting
                and len(active) + len(joining) < max_batch_size
                and waiting[0].arrival <= self.target.now()
            ):
                joining.append(waiting.popleft())
            if not active and not joining:
                self.target.wait_until(waiting[0].arrival)
                continue
            if joining:
                self._admit(joining)
                active += joining
            # Progress for the policy (Proposal.waiting): an arrived request still waits to join.
            queued = bool(waiting) and waiting[0].arrival <= self.target.now()
            generated = self.step(active, joining, queued)
            if progress is not None:
                progress.update(sum(generated))
            if any(r.finished for r in active):
                rows = [i for i, r in enumerate(active) if not r.finished]
                leaving = [r for r in active if r.finished]
                self.target.keep(rows, leaving)
                if self.drafter is not None:
                    self.drafter.keep(rows)
                done += leaving
                active = [active[i] for i in rows]
        return done

    def _admit(self, joining: list) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        self.target.admit(joining)
        if self.drafter is not None:
            self.drafter.add(joining)
        self.stats.add_prefill(time.perf_counter() - start, time.process_time() - cpu_start)

    def step(self, requests: list, joining: Sequence = (), waiting: bool | None = None) -> list[int]:
        """One draft-select-verify step for every active request; returns the tokens each
        request generated. ``waiting``: a request waits to join (``Proposal.waiting``)."""
        t0 = time.perf_counter()
        num_draft = self.policy.num_draft(len(requests))
        proposal = self._propose(requests, num_draft)
        # What the engine knows of each request's progress, for the policy (tetris_ext.drain).
        left = torch.tensor([r.tokens_left for r in requests], dtype=torch.long)
        lengths = torch.tensor([r.output_len for r in requests], dtype=torch.long)
        prefix_lens = torch.tensor([r.prefix_len for r in requests], dtype=torch.long)  # cached tokens
        prefill = self.target.fused_prefill_tokens(joining)  # a chunked-prefill engine's prompts
        proposal = replace(
            proposal,
            tokens_left=left,
            output_lens=lengths,
            waiting=waiting,
            prefill_tokens=prefill,
            context_tokens=int(prefix_lens.sum()),
        ).usable()
        t1 = time.perf_counter()
        selected = self.policy.choose(proposal)
        t2 = time.perf_counter()
        roots = torch.tensor([r.root for r in requests], dtype=torch.long)
        block = build_block(proposal, selected, roots, prefix_lens)
        verified = self.target.verify(requests, block, proposal, self.temperature, self.generator)
        outcome = verified.outcome(block, selected)
        if num_draft > 0:
            self.drafter.update(requests, proposal, outcome)  # rollback, calibration
        t3 = time.perf_counter()
        generated = [r.advance(tokens) for r, tokens in zip(requests, verified.out_tokens.tolist())]
        added = torch.tensor(generated, dtype=torch.long)
        measured = StepTimes(draft=t1 - t0, select=t2 - t1, verify=t3 - t2, step=t3 - t0)
        record = StepRecord(requests, joining, num_draft, proposal, block, outcome, prefix_lens, measured)
        times = self.target.times(record)
        # What the policy learns from; stats.py says how a per-step record rebuilds it.
        padded = self.padded is not False  # unknown: the block, as stats counts it
        self.policy.observe(
            StepFeedback(
                verified=outcome.num_verified(),
                accepted=outcome.num_accepted(),
                computed_tokens=len(requests) * block.width if padded else int(block.real.sum()),
                draft_seconds=times.draft,
                verify_seconds=times.select + times.verify + times.fused_prefill,
                padded=padded,
                prefill_tokens=times.fused_prefill_tokens,
                output_lens=lengths + added,  # after the step
                generated=added,
                ended_early=torch.tensor([r.finished and r.tokens_left > 0 for r in requests]),
            )
        )
        request_ids = [r.index for r in requests]
        self.stats.add_step(request_ids, proposal, outcome, block.width, generated, times.as_dict())
        return generated

    def _propose(self, requests: list, num_draft: int) -> Proposal:
        if num_draft == 0:
            return Proposal.empty(len(requests))
        if self.drafter is None:
            raise ValueError("the policy drafts tokens; pass a drafter")
        return self.drafter.propose(requests, num_draft, self.temperature, self.generator)
