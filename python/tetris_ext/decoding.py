"""Batch speculative decoding with continuous batching: the reference loop for the TETRIS ops.

``generate`` runs the shared step and loop (``tetris_ext.engine``) against ``LiveTarget``, a
model with its KV cache. One step for the batch of active requests:

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

from .engine import Engine, StepRecord, StepTimes
from .kv_cache import RaggedKVCache
from .policies import Policy
from .proposal import Proposal
from .stats import RunStats
from .verification import Block, Verified, verify

__all__ = ["generate", "GenerationResult", "Request", "LiveTarget"]


@dataclass
class Request:
    """One prompt being decoded. ``tokens`` = prompt + accepted output; the last is the root.
    It finishes at a token of ``eos`` (kept in its output) or after ``max_new_tokens``."""

    index: int
    tokens: list[int]
    prompt_len: int
    max_new_tokens: int
    eos: frozenset[int] = frozenset()
    finished: bool = False
    arrival: float = 0.0  # every prompt of `generate` waits from the start

    @property
    def output(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def root(self) -> int:
        return self.tokens[-1]

    @property
    def prefix_len(self) -> int:
        return len(self.tokens) - 1

    @property
    def output_len(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def tokens_left(self) -> int:
        """Its budget less its output (an upper bound: an EOS may end it earlier)."""
        return self.max_new_tokens - self.output_len

    def advance(self, out_tokens: list[int]) -> int:
        """Append accepted + bonus tokens (-1 padded), stopping at EOS or the budget; returns
        how many."""
        added = 0
        for token in out_tokens:
            if token < 0 or len(self.tokens) - self.prompt_len >= self.max_new_tokens:
                break
            self.tokens.append(token)
            added += 1
            if token in self.eos:
                break
        if len(self.tokens) - self.prompt_len >= self.max_new_tokens or (
            added and self.tokens[-1] in self.eos
        ):
            self.finished = True
        return added


@dataclass
class GenerationResult:
    tokens: list[list[int]]  # new tokens of each prompt, in prompt order
    stats: dict = field(default_factory=dict)


class LiveTarget:
    """The engine's target (``engine.Target``) for a real model: one forward over the
    verification block on the batch's KV cache, then the rejected slots rolled back. Time is
    the wall clock, measured. ``flat``: forwards (prefill and verification) run the model on
    the real tokens only, not the padded block (``tetris_ext.packed_attention``)."""

    def __init__(self, model, flat: bool = False):
        self.model, self.flat = model, flat
        self.padded, self.loop = not flat, f"generate(flat={flat})"
        self.cache = RaggedKVCache(model, packed=flat)
        self.start = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.start

    def wait_until(self, when: float) -> None:
        time.sleep(max(0.0, when - self.now()))

    def admit(self, joining: list[Request]) -> None:
        """Prefill the joining requests (all prompt tokens but the root) and append them as rows."""
        prefill = RaggedKVCache(self.model, packed=self.flat)
        prefill.append([r.tokens[:-1] for r in joining])
        self.cache.extend(prefill)

    def keep(self, rows: list[int], leaving: list[Request]) -> None:
        self.cache.select_rows(torch.tensor(rows, dtype=torch.long, device=self.cache.device))

    def fused_prefill_tokens(self, joining: list[Request]) -> None:
        return None  # joining prompts are prefilled apart (admit)

    def verify(
        self, requests: list[Request], block: Block, proposal: Proposal, temperature: float, generator
    ) -> Verified:
        """One target forward over the block, then keep what the target accepts."""
        first_column = self.cache.width
        logits = self.cache.forward(
            block.tokens.clamp(min=0), block.positions, block.mask, logits_at=block.real, real=block.real
        )
        verified = verify(block, logits, proposal, temperature, generator)
        # Roll back: only the root and the accepted slots of each row stay in the cache.
        roots = torch.zeros_like(verified.accepted_slots[:, :1])
        kept_slots = torch.cat([roots, verified.accepted_slots], dim=1)
        self.cache.commit(torch.where(kept_slots >= 0, first_column + kept_slots, -1))
        self.cache.maybe_compact()
        return verified

    def times(self, record: StepRecord) -> StepTimes:
        return record.measured


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
    flat: bool = False,
) -> GenerationResult:
    """Decode ``prompts`` (lists of token ids) with ``target`` under ``policy``.

    At most ``max_batch_size`` requests decode together (None: all); a request finishes at an
    EOS token (kept in its output) or after ``max_new_tokens`` (one int, or one per prompt),
    and the next waiting prompt joins at the next step. ``temperature`` 0 is greedy (the output
    is exactly the target's greedy output); above 0, outputs are samples from the target's
    distribution (``seed`` fixes them). ``progress``: a tqdm-like object updated with the
    number of generated tokens. ``flat``: every forward runs the model on the real tokens of
    all requests packed together (a flattened step, as vLLM runs them) instead of a block
    padded to the widest request; the model's attention implementation (SDPA required) is
    switched for the run and restored after it. Same outputs, less work for uneven blocks.
    """
    budgets = _budgets(prompts, max_new_tokens)
    eos = frozenset(_eos_set(eos_token_id))
    waiting = deque(Request(i, list(p), len(p), n, eos) for i, (p, n) in enumerate(zip(prompts, budgets)))
    stats = RunStats()
    generator = torch.Generator().manual_seed(seed)
    attention = target.config.get_text_config()._attn_implementation
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        # Inside the try: the flat target switches the model's attention, and the engine tells
        # the policy its shape, which raises for a policy pinned to the other one.
        engine = Engine(LiveTarget(target, flat), drafter, policy, stats, temperature, generator)
        with torch.inference_mode():
            done = engine.run(waiting, max_batch_size or max(1, len(prompts)), progress)
    finally:
        if flat:
            target.set_attn_implementation(attention)
    stats.totals["wall_seconds"] = time.perf_counter() - start
    stats.totals["cpu_seconds"] = time.process_time() - cpu_start
    outputs: list[list[int]] = [[] for _ in prompts]
    for request in done:
        outputs[request.index] = request.output
    return GenerationResult(outputs, stats.as_dict())


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
