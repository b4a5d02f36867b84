"""A flattened (packed) forward over a ragged KV cache: every linear layer sees real tokens only.

The padded step runs the model on a [B, q] block, so every row pays for the widest one: the
projections, the MLP and the norms (most of a small model's work outside the output head) run
on ``B * q`` tokens however few of them carry a token. The packed step runs the decoder on the
``N`` real tokens of all rows as one sequence [1, N] (as vLLM's flattened batches do), and only
attention goes back to the per-row layout, through an attention function registered with
transformers' ``AttentionInterface``:

    queries, new keys/values [1, heads, N, D]
      -> scattered into [B, heads, q, D] (slot (row, j) of the block; holes stay zero)
      -> keys/values appended to the cache as usual (``DynamicCache.update``)
      -> SDPA (the model's implementation, required) with the very mask the padded step uses
         (``RaggedKVCache._attention_mask``: holes, tree block, sliding window per layer type),
         the query heads that share a key/value head folded into one (``_grouped_sdpa``: on
         this CPU the attention of a [8, 1 + w] block then costs ~2.5x less than transformers'
         SDPA, which repeats the keys per query head whenever a mask is given)
      -> outputs of the real slots gathered back to [1, N, heads, D]

So the cache layout, the masks and rollback are those of the padded step, exactly; only the
token-wise work shrinks. Attention itself still runs over the padded queries.

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
    """Where the packed tokens of one forward live in the padded block: token i is slot
    ``slots[i]`` of row ``rows[i]`` of a [batch, width] block; ``cache`` takes the new keys."""

    rows: Tensor  # [N] int64
    slots: Tensor  # [N] int64
    batch: int
    width: int
    cache: DynamicCache


def _unpack(packed: Tensor, step: PackedStep) -> Tensor:
    """[1, heads, N, D] -> [B, heads, q, D], zeros on the slots no token fills."""
    heads, dim = packed.shape[1], packed.shape[3]
    out = packed.new_zeros(step.batch, step.width, heads, dim)
    out[step.rows, step.slots] = packed[0].transpose(0, 1)
    return out.transpose(1, 2)


def packed_attention(
    module, query, key, value, attention_mask, packed_step: PackedStep | None = None, **kwargs
):
    """``AttentionInterface`` function: SDPA on the per-row layout (see the module docstring).
    Without ``packed_step`` (an unpacked forward of the same model) it is SDPA alone."""
    step = packed_step
    if step is not None:
        query = _unpack(query, step)
        key, value = step.cache.update(_unpack(key, step), _unpack(value, step), module.layer_idx)
    out, weights = _grouped_sdpa(module, query, key, value, attention_mask, **kwargs)
    if step is None:
        return out, weights
    # out is [B, q, heads, D]; keep the real slots, in packed order.
    return out[step.rows, step.slots].unsqueeze(0), weights


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
