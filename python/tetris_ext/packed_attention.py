"""A flattened (packed) forward over a ragged KV cache: the model computes the real tokens only.

The padded step runs the model on a [B, q] block, so every row pays for the widest one: the
projections, the MLP and the norms (most of a small model's work outside the output head) run
on ``B * q`` tokens however few of them carry a token. The packed step runs the decoder on the
``N`` real tokens of all rows as one sequence [1, N] (as vLLM's flattened batches do), and only
attention goes back to the per-row layout, through an attention function registered with
transformers' ``AttentionInterface``:

    queries, new keys/values [1, heads, N, D]
      -> new keys/values scattered into [B, kv_heads, q, D] (slot (row, j) of the block; holes
         stay zero) and appended to the cache as usual (``DynamicCache.update``)
      -> SDPA (the model's implementation, required) in as few calls as pay: the rows split
         into runs of adjacent rows (``plan_segments``), one call per run on views of the cache,
         its queries in the run's [rows, heads, widest, D] block (a view where the rows are of
         equal size; else zero queries in the holes, whose outputs are dropped), with the rows
         of the very mask the padded step uses (``RaggedKVCache._attention_mask``: holes, tree
         block, sliding window per layer type; blocked entries are finfo.min, never -inf, so a
         hole's query that sees nothing still has a finite softmax), the query heads that share
         a key/value head folded into one (``_grouped_sdpa``; transformers' SDPA repeats the
         keys per query head whenever a mask is given: on this CPU the folding alone makes a
         padded [8, 1 + w] forward of Gemma 3 270M 0.84-0.91x as costly, bench/flat_step.py)
      -> outputs [1, N, heads, D] in packed order

Why a plan and not always one call: a call costs ``CALL_COST`` beyond its arithmetic, but a
padded query slot costs its full arithmetic against every key of the row. On this CPU (Gemma 3
270M bf16, one thread, ``bench/flat_step.py --attention-only 15``) a call costs 22 us and a
slot 56 ps per query head x head dim x key, so ``CALL_COST`` = 3.9e5: at 300 keys one padded slot
of Gemma's 4 x 256 costs 17 us, about a call. One call for a whole step is cheapest when the
rows differ little (rows of 4 and 6 alternating: one call instead of 8) and up to 1.15x (at
100-160 keys) or 1.38x (300-500 keys) the per-run forward when one wide row pads many short
ones; the plan is the cheapest split under this cost (an O(B^2) dynamic programme, once a step):
0.97-1.01x the per-run forward at contexts 104-160, and the per-run split at 300-500
(``bench/flat_step.py --attention-calls``, bench/README.md "One attention call per packed
step"). On a GPU a call costs far more than a slot, so the plan tends to one call.

So the cache layout, the masks and rollback are those of the padded step, exactly; only the
work shrinks to the real tokens.

The model's attention implementation is switched to ``PACKED`` once (``use_packed_attention``);
without a ``packed_step`` argument the function is (grouped) SDPA on the given layout, so
padded forwards of the same model (probes) compute what they computed before.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["PACKED", "PackedStep", "plan_segments", "use_packed_attention"]

PACKED = "tetris_packed"
# What one attention call costs beyond its arithmetic, in multiply-adds of one query slot against
# one key (query heads x head dim per slot-key): measured on this CPU, bench/flat_step.py
# --attention-only (the module docstring). 0 would give one call per run of equal rows; a huge
# value one call per step.
CALL_COST = 390_000.0


@dataclass
class PackedStep:
    """Where the packed tokens of one forward live in the padded [batch, width] block: row b's
    ``sizes[b]`` tokens fill its first slots (token i is slot ``slots[i]`` of row ``rows[i]``;
    row b's first token is packed token ``starts[b]``); ``cache`` takes the new keys;
    ``calls`` (planned at the first layer) are the attention calls."""

    rows: Tensor  # [N] int64
    slots: Tensor  # [N] int64
    real: Tensor  # [B, width] bool
    sizes: list[int]  # [B] tokens per row
    starts: list[int]  # [B + 1] packed index of each row's first token, then N
    cache: DynamicCache
    calls: list[tuple] | None = None  # per attention call (``_plan_calls``), at the first layer

    @classmethod
    def of(cls, real: Tensor, cache: DynamicCache) -> PackedStep:
        """From real [B, q] bool, each row's real slots a prefix (root, then candidates)."""
        sizes = real.sum(1)
        if not bool((real == (torch.arange(real.shape[1], device=real.device) < sizes[:, None])).all()):
            raise ValueError("a packed forward needs each row's real slots first (a prefix of the block)")
        rows, slots = real.nonzero(as_tuple=True)
        sizes = sizes.tolist()
        return cls(rows, slots, real, sizes, [0, *itertools.accumulate(sizes)], cache)

    @property
    def width(self) -> int:
        return self.real.shape[1]


def plan_segments(sizes: list[int], slot_cost: float, call_cost: float) -> list[tuple[int, int, int]]:
    """Split rows into runs of adjacent rows, each one attention call padded to its widest row,
    at the least total ``call_cost`` per call + ``slot_cost`` per query slot (padding included);
    rows without tokens alone make no call. Returns (first row, end row, width) per call.
    Dynamic programming over the end of the last run: O(B^2) for B rows."""
    B = len(sizes)
    best, cut = [0.0] + [float("inf")] * B, [0] * (B + 1)
    for end in range(1, B + 1):
        width = 0
        for first in range(end - 1, -1, -1):
            width = max(width, sizes[first])
            cost = best[first] + (call_cost + slot_cost * (end - first) * width if width else 0.0)
            if cost < best[end]:
                best[end], cut[end] = cost, first
    segments, end = [], B
    while end:
        first = cut[end]
        width = max(sizes[first:end])
        if width:
            segments.append((first, end, width))
        end = first
    return segments[::-1]


def _unpack(packed: Tensor, step: PackedStep) -> Tensor:
    """[1, heads, N, D] -> [B, heads, q, D], zeros on the slots no token fills."""
    heads, dim = packed.shape[1], packed.shape[3]
    out = packed.new_zeros(*step.real.shape, heads, dim)
    out[step.rows, step.slots] = packed[0].transpose(0, 1)
    return out.transpose(1, 2)


def packed_attention(
    module, query, key, value, attention_mask, packed_step: PackedStep | None = None, **kwargs
):
    """``AttentionInterface`` function: SDPA on the per-row layout (see the module docstring).
    Without ``packed_step`` (an unpacked forward of the same model) it is SDPA alone."""
    step = packed_step
    if step is None:
        return _grouped_sdpa(module, query, key, value, attention_mask, **kwargs)
    keys, values = step.cache.update(_unpack(key, step), _unpack(value, step), module.layer_idx)
    heads, dim = query.shape[1], query.shape[3]
    if step.calls is None:  # the same for every layer: all keep every column of the cache
        step.calls = _plan_calls(step, heads * dim * keys.shape[2])
    outs = []
    for first, end, width, start, stop, holes in step.calls:
        run_query = query[0, :, start:stop].transpose(0, 1)  # [n, heads, D]
        if holes is None:  # rows of equal sizes: a view
            block = run_query.reshape(end - first, width, heads, dim)
        else:  # the queries in their slots, zeros in the holes (outputs dropped below)
            block = query.new_zeros(end - first, width, heads, dim)
            block[holes] = run_query
        out, _ = _grouped_sdpa(
            module,
            block.transpose(1, 2),
            keys[first:end],  # views of the cache: adjacent rows
            values[first:end],
            attention_mask[first:end, :, :width],
            **kwargs,
        )  # [rows, width, heads, D]
        outs.append(out.reshape(-1, heads, dim) if holes is None else out[holes])  # packed order
    return torch.cat(outs).unsqueeze(0), None


def _plan_calls(step: PackedStep, slot_cost: float) -> list[tuple]:
    """(first row, end row, width, first and end packed token, real slots [rows, width] where
    the call has holes, else None) per attention call of ``plan_segments``."""
    calls = []
    for first, end, width in plan_segments(step.sizes, slot_cost, CALL_COST):
        start, stop = step.starts[first], step.starts[end]
        holes = None if stop - start == (end - first) * width else step.real[first:end, :width]
        calls.append((first, end, width, start, stop, holes))
    return calls


def _grouped_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA with the query heads that share a key/value head folded into the query axis:
    [B, kv_heads, group * q, D] against the keys as stored, instead of the keys repeated per
    query head. The same scores and softmax per (query, head), without copying the keys
    ``group`` times; it needs one mask for all heads ([B, 1, q, K], as the cache builds)."""
    B, heads, q, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    if group == 1 or attention_mask is None or attention_mask.shape[1] != 1 or dropout:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    mask = attention_mask[:, :, None].expand(B, 1, group, q, attention_mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(B, kv_heads, group * q, dim),
        key,
        value,
        attn_mask=mask.reshape(B, 1, group * q, -1),
        scale=scaling,
    )
    return out.reshape(B, heads, q, dim).transpose(1, 2), None


AttentionInterface.register(PACKED, packed_attention)
# Unpacked forwards that leave the mask to the model get the masks SDPA gets (without this
# transformers builds none at all for an implementation it does not know).
AttentionMaskInterface.register(PACKED, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_packed_attention(model: PreTrainedModel) -> None:
    """Switch ``model`` to the packed attention function (grouped SDPA for unpacked forwards;
    ``decoding.generate(flat=True)`` switches it back after its run)."""
    current = model.config.get_text_config()._attn_implementation
    if current == PACKED:
        return
    if current != "sdpa":
        raise ValueError(
            f"packed (flat) verification wraps SDPA attention; {type(model).__name__} uses "
            f"{current!r} (load it with attn_implementation='sdpa')"
        )
    model.set_attn_implementation(PACKED)
