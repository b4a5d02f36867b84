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
      -> SDPA (the model's implementation, required) of the real queries only, one call per run
         of adjacent rows with the same number of tokens (views of the cache, no copies), with
         the rows of the very mask the padded step uses (``RaggedKVCache._attention_mask``:
         holes, tree block, sliding window per layer type), the query heads that share a
         key/value head folded into one (``_grouped_sdpa``; transformers' SDPA repeats the
         keys per query head whenever a mask is given: on this CPU the folding alone makes a
         padded [8, 1 + w] forward of Gemma 3 270M 0.84-0.91x as costly, bench/flat_step.py)
      -> outputs [1, N, heads, D] in packed order

So the cache layout, the masks and rollback are those of the padded step, exactly; only the
work shrinks to the real tokens.

The model's attention implementation is switched to ``PACKED`` once (``use_packed_attention``);
without a ``packed_step`` argument the function is (grouped) SDPA on the given layout, so
padded forwards of the same model (probes) compute what they computed before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["PACKED", "PackedStep", "use_packed_attention"]

PACKED = "tetris_packed"


@dataclass
class PackedStep:
    """Where the packed tokens of one forward live in the padded [batch, width] block: row b's
    ``sizes[b]`` tokens fill its first slots (token i is slot ``slots[i]`` of row ``rows[i]``);
    ``cache`` takes the new keys."""

    rows: Tensor  # [N] int64
    slots: Tensor  # [N] int64
    sizes: list[int]  # [B] tokens per row
    width: int
    cache: DynamicCache

    @classmethod
    def of(cls, real: Tensor, cache: DynamicCache) -> PackedStep:
        """From real [B, q] bool, each row's real slots a prefix (root, then candidates)."""
        sizes = real.sum(1)
        if not bool((real == (torch.arange(real.shape[1], device=real.device) < sizes[:, None])).all()):
            raise ValueError("a packed forward needs each row's real slots first (a prefix of the block)")
        rows, slots = real.nonzero(as_tuple=True)
        return cls(rows, slots, sizes.tolist(), real.shape[1], cache)

    def runs(self):
        """(first row, end row, tokens per row, first packed token) of each run of adjacent rows
        with the same number of tokens: one attention call each, on views of the cache."""
        start, offset = 0, 0
        for b in range(1, len(self.sizes) + 1):
            if b == len(self.sizes) or self.sizes[b] != self.sizes[start]:
                if self.sizes[start]:
                    yield start, b, self.sizes[start], offset
                offset += (b - start) * self.sizes[start]
                start = b


def _unpack(packed: Tensor, step: PackedStep) -> Tensor:
    """[1, heads, N, D] -> [B, heads, q, D], zeros on the slots no token fills."""
    heads, dim = packed.shape[1], packed.shape[3]
    out = packed.new_zeros(len(step.sizes), step.width, heads, dim)
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
    outs = []
    for first, end, size, offset in step.runs():
        # Rows first..end-1 hold `size` tokens each, consecutive in packed order.
        run_query = query[0, :, offset : offset + (end - first) * size].reshape(heads, end - first, size, dim)
        out, _ = _grouped_sdpa(
            module,
            run_query.transpose(0, 1),
            keys[first:end],
            values[first:end],
            attention_mask[first:end, :, :size],
            **kwargs,
        )
        outs.append(out.reshape(-1, heads, dim))  # [rows * size, heads, D], packed order
    return torch.cat(outs).unsqueeze(0), None


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
