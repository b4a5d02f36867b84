"""Run statistics of the decoding loop: totals, per-step records, per-candidate predictions.

``result.stats`` is ``RunStats.as_dict()``:

- totals: steps, target_forwards, drafted_tokens (the drafts a request could use: none past
  its budget, ``Proposal.usable``), verified_tokens, accepted_tokens,
  generated_tokens, padded_tokens (requests * block width, summed over steps), wall_seconds,
  cpu_seconds (process CPU time: with one thread, robust to other processes on a shared
  machine), prefill_seconds and prefill_cpu_seconds (wall and process CPU time admitting
  requests: the live loop's prefill forwards, the same for every policy; a replay prices
  prefill within its steps instead), draft_seconds, select_seconds, verify_seconds;
- ``per_step``: one record per verification step: the active request ids (row order), and
  per request the drafted, verified, accepted and generated counts, plus the block width and
  the step's draft / select / verify / step seconds (``engine.StepTimes``);
- ``candidates``: one entry per verified candidate (parallel lists): step, request, depth,
  predicted (its estimated cumulative acceptance probability, exp(cum_logprob)),
  predicted_token (the estimate given its parent is accepted), tested (its parent was
  accepted, so its own acceptance was decided) and accepted.

The per-step counts are what a trace replay must reproduce. The policy's feedback of a step
is rebuilt exactly from its record: ``StepFeedback(verified, accepted, computed_tokens =
len(requests) * block_width on a padded loop, len(requests) + sum(verified) on a flat one,
draft_seconds, verify_seconds = select_seconds + verify_seconds, padded, generated)`` (but
``output_lens`` and ``ended_early``, which the record does not keep).
The candidate lists give the calibration of the acceptance estimates (Brier score,
reliability chart).
"""

from __future__ import annotations

from collections import defaultdict

from .proposal import Outcome, Proposal

__all__ = ["RunStats"]

_TOTALS = (
    "steps",
    "target_forwards",
    "drafted_tokens",
    "verified_tokens",
    "accepted_tokens",
    "generated_tokens",
    "padded_tokens",
    "wall_seconds",
    "cpu_seconds",
    "prefill_seconds",
    "prefill_cpu_seconds",
    "draft_seconds",
    "select_seconds",
    "verify_seconds",
)


class RunStats:
    """``keep_steps`` / ``keep_candidates``: whether to keep the per-step records and the
    per-candidate lists (a replay at scale keeps only the totals)."""

    def __init__(self, keep_steps: bool = True, keep_candidates: bool = True):
        self.keep_steps, self.keep_candidates = keep_steps, keep_candidates
        self.totals = dict.fromkeys(_TOTALS, 0)
        self.per_step: list[dict] = []
        self.candidates: dict[str, list] = defaultdict(list)

    def add_prefill(self, seconds: float, cpu_seconds: float = 0.0) -> None:
        self.totals["target_forwards"] += 1
        self.totals["prefill_seconds"] += seconds
        self.totals["prefill_cpu_seconds"] += cpu_seconds

    def add_step(
        self,
        request_ids: list[int],
        proposal: Proposal,
        outcome: Outcome,
        block_width: int,
        generated: list[int],
        seconds: dict[str, float],
    ) -> None:
        """One step: ``seconds`` has at least draft, select and verify (totals add those);
        the per-step record keeps every entry as ``<key>_seconds``."""
        drafted = proposal.counts()
        verified, accepted = outcome.num_verified(), outcome.num_accepted()
        step = self.totals["steps"]
        t = self.totals
        t["steps"] += 1
        t["target_forwards"] += 1
        t["drafted_tokens"] += int(drafted.sum())
        t["verified_tokens"] += int(verified.sum())
        t["accepted_tokens"] += int(accepted.sum())
        t["generated_tokens"] += sum(generated)
        t["padded_tokens"] += len(request_ids) * block_width
        for key in ("draft", "select", "verify"):
            t[f"{key}_seconds"] += seconds[key]
        if self.keep_steps:
            self._add_record(request_ids, drafted, verified, accepted, generated, block_width, seconds)
        if self.keep_candidates:
            self._add_candidates(step, request_ids, proposal, outcome)

    def _add_record(self, request_ids, drafted, verified, accepted, generated, block_width, seconds) -> None:
        self.per_step.append(
            {
                "requests": request_ids,
                "drafted": drafted.tolist(),
                "verified": verified.tolist(),
                "accepted": accepted.tolist(),
                "generated": generated,
                "block_width": block_width,
                **{f"{key}_seconds": value for key, value in seconds.items()},
            }
        )

    def _add_candidates(
        self, step: int, request_ids: list[int], proposal: Proposal, outcome: Outcome
    ) -> None:
        rows, columns = outcome.selected.nonzero(as_tuple=True)
        if len(rows) == 0:
            return
        depth = proposal.depths()
        tested = outcome.tested(proposal)
        c = self.candidates
        c["step"] += [step] * len(rows)
        c["request"] += [request_ids[r] for r in rows.tolist()]
        c["depth"] += depth[rows, columns].tolist()
        c["predicted"] += proposal.cum_logprobs[rows, columns].double().exp().tolist()
        c["predicted_token"] += proposal.token_logprobs[rows, columns].double().exp().tolist()
        c["tested"] += tested[rows, columns].tolist()
        c["accepted"] += outcome.accepted[rows, columns].tolist()

    def as_dict(self) -> dict:
        return {**self.totals, "per_step": self.per_step, "candidates": dict(self.candidates)}
