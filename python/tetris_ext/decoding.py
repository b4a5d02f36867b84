"""Batch speculative decoding with continuous batching: the reference loop for the TETRIS ops.

One step for the batch of active requests:

    draft   -> the drafter proposes candidates for every request        (draft_cumprod)
    choose  -> the policy picks which candidates the target verifies    (select)
    verify  -> one target forward over the verification block           (tree_mask,
               and acceptance of the longest agreeing path               verify_greedy / verify_sampling)
    advance -> accepted tokens + one bonus token join each request; rejected tokens are
               rolled back in the KV caches; finished requests leave, waiting ones join.

Every request's last accepted token (the root) is not yet in the target's KV cache: it is
slot 0 of the next verification block, so each step costs exactly one target forward and the
prefix is never re-encoded. KV cache layout and rollback: ``tetris_ext.kv_cache``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .kv_cache import RaggedKVCache
from .policies import Policy, StepFeedback
from .proposal import Proposal
from .stats import RunStats
from .verification import Block, Verified, build_block, verify

__all__ = ["generate", "GenerationResult", "Request"]


@dataclass
class Request:
    """One prompt being decoded. ``tokens`` = prompt + accepted output; the last is the root."""

    index: int
    tokens: list[int]
    prompt_len: int
    max_new_tokens: int
    finished: bool = False

    @property
    def output(self) -> list[int]:
        return self.tokens[self.prompt_len :]


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens of each prompt, in prompt order
    stats: dict = field(default_factory=dict)


class Batch:
    """The active requests (rows) with the target's KV cache and the drafter kept in step."""

    def __init__(self, target, drafter):
        self.target, self.drafter = target, drafter
        self.requests: list[Request] = []
        self.cache = RaggedKVCache(target)

    def admit(self, joining: list[Request]) -> None:
        """Prefill the joining requests (all prompt tokens but the root) and append them as rows."""
        prefill = RaggedKVCache(self.target)
        prefill.append([r.tokens[:-1] for r in joining])
        self.cache.extend(prefill)
        if self.drafter is not None:
            self.drafter.add(joining)
        self.requests += joining

    def retire(self) -> list[Request]:
        """Remove finished requests; returns them."""
        done = [r for r in self.requests if r.finished]
        if done:
            rows = [i for i, r in enumerate(self.requests) if not r.finished]
            self.cache.select_rows(torch.tensor(rows, dtype=torch.long, device=self.cache.device))
            if self.drafter is not None:
                self.drafter.keep(rows)
            self.requests = [self.requests[i] for i in rows]
        return done

    def draft(self, num_draft: int, temperature: float, generator) -> Proposal:
        if num_draft == 0:
            return Proposal.empty(len(self.requests))
        if self.drafter is None:
            raise ValueError("the policy drafts tokens; pass a drafter")
        return self.drafter.propose(self.requests, num_draft, temperature, generator)

    def verify(self, proposal: Proposal, selected: Tensor, temperature: float, generator) -> tuple[Block, Verified]:
        """One target forward over the selected candidates, then keep what the target accepts."""
        roots = torch.tensor([r.tokens[-1] for r in self.requests], dtype=torch.long)
        prefix_lens = torch.tensor([len(r.tokens) - 1 for r in self.requests], dtype=torch.long)
        block = build_block(proposal, selected, roots, prefix_lens)
        first_column = self.cache.width
        logits = self.cache.forward(block.tokens.clamp(min=0), block.positions, block.mask, logits_at=block.real)
        verified = verify(block, logits, proposal, temperature, generator)
        # Roll back: only the root and the accepted slots of each row stay in the cache.
        kept_slots = torch.cat([torch.zeros_like(roots[:, None]), verified.accepted_slots], dim=1)
        self.cache.commit(torch.where(kept_slots >= 0, first_column + kept_slots, -1))
        self.cache.maybe_compact()
        return block, verified


def generate(
    target,
    prompts: list[list[int]],
    policy: Policy,
    drafter=None,
    max_new_tokens: int | list[int] = 64,
    max_batch_size: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
    eos_token_id: int | list[int] | None = None,
    progress=None,
) -> GenerationResult:
    """Decode ``prompts`` (lists of token ids) with ``target`` under ``policy``.

    At most ``max_batch_size`` requests decode together (None: all); a request finishes at an
    EOS token (kept in its output) or after ``max_new_tokens`` (one int, or one per prompt),
    and the next waiting prompt joins at the next step. ``temperature`` 0 is greedy (the output
    is exactly the target's greedy output); above 0, outputs are samples from the target's
    distribution (``seed`` fixes them). ``progress``: a tqdm-like object updated with the
    number of generated tokens.
    """
    budgets = _budgets(prompts, max_new_tokens)
    eos = _eos_set(eos_token_id)
    max_batch_size = max_batch_size or max(1, len(prompts))
    generator = torch.Generator().manual_seed(seed)
    waiting = deque(Request(i, list(p), len(p), n) for i, (p, n) in enumerate(zip(prompts, budgets)))
    outputs: list[list[int]] = [[] for _ in prompts]
    batch, stats = Batch(target, drafter), RunStats()
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        while waiting or batch.requests:
            joining = [waiting.popleft() for _ in range(min(len(waiting), max_batch_size - len(batch.requests)))]
            if joining:
                t0 = time.perf_counter()
                batch.admit(joining)
                stats.add_prefill(time.perf_counter() - t0)
            generated = step(batch, policy, temperature, generator, eos, stats)
            if progress is not None:
                progress.update(generated)
            for request in batch.retire():
                outputs[request.index] = request.output
    stats.totals["wall_seconds"] = time.perf_counter() - start
    stats.totals["cpu_seconds"] = time.process_time() - cpu_start
    return GenerationResult(outputs, stats.as_dict())


def step(batch: Batch, policy: Policy, temperature: float, generator, eos: set[int], stats: RunStats) -> int:
    """One draft-select-verify step for every active request; returns the tokens generated."""
    requests = batch.requests
    t0 = time.perf_counter()
    num_draft = policy.num_draft(len(requests))
    proposal = batch.draft(num_draft, temperature, generator)
    t1 = time.perf_counter()
    selected = policy.choose(proposal)
    t2 = time.perf_counter()
    block, verified = batch.verify(proposal, selected, temperature, generator)
    outcome = verified.outcome(block, selected)
    if num_draft > 0:
        batch.drafter.update(requests, proposal, outcome)  # rollback, calibration
    t3 = time.perf_counter()
    generated = [_append_output(r, verified.out_tokens[b], eos) for b, r in enumerate(requests)]
    seconds = {"draft": t1 - t0, "select": t2 - t1, "verify": t3 - t2}
    # What the policy learns from; a replay rebuilds it from the per-step record.
    policy.observe(
        StepFeedback(
            verified=outcome.num_verified(),
            accepted=outcome.num_accepted(),
            padded_tokens=len(requests) * block.width,
            draft_seconds=seconds["draft"],
            verify_seconds=seconds["select"] + seconds["verify"],
        )
    )
    stats.add_step([r.index for r in requests], proposal, outcome, block.width, generated, seconds)
    return sum(generated)


def _append_output(request: Request, out_tokens: Tensor, eos: set[int]) -> int:
    """Append accepted + bonus tokens, stopping at EOS or the budget; returns how many."""
    added = 0
    for token in out_tokens.tolist():
        if token < 0 or len(request.output) >= request.max_new_tokens:
            break
        request.tokens.append(token)
        added += 1
        if token in eos:
            break
    if len(request.output) >= request.max_new_tokens or (added and request.tokens[-1] in eos):
        request.finished = True
    return added


def _budgets(prompts, max_new_tokens) -> list[int]:
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts) or any(n < 1 for n in budgets):
        raise ValueError("generate: max_new_tokens must be >= 1 (one int, or one per prompt)")
    return budgets


def _eos_set(eos_token_id) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
