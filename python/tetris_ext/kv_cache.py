"""A batched KV cache for requests of different lengths that roll back rejected tokens.

Layout (one exact scheme for prefill, chains, trees, rollback and continuous batching):
transformers' ``DynamicCache`` keeps one tensor [B, heads, L, head_dim] per layer and appends
the q tokens of every forward as q new columns to *every* row. We record, per row b and column
j, the position of the token written there (``positions[b, j]``) and whether it is part of the
request's text (``valid[b, j]``). Columns that are not valid are holes: right padding of shorter
rows, padding slots of a verification block, rejected drafts. No query ever attends to a hole.

- Queries get explicit ``position_ids`` (RoPE is applied when keys are written), so a hole
  never shifts anyone's positions: rolling back a rejected token is just leaving its column
  invalid. The prefix is never re-encoded.
- The attention mask is a custom 4D float mask [B, 1, q, L + q] (0 = attend, dtype min =
  blocked) built from ``valid`` (plus the tree mask inside the block). For models with
  sliding-window layers (Gemma 3) we pass one mask per layer type, the sliding one also
  blocking keys at positions ``<= query position - window`` (transformers' convention).
- A packed cache (``RaggedKVCache(model, packed=True)``, the live loop's ``flat`` mode) runs the
  model on the real slots of a block only, as one sequence; its attention function
  (``tetris_ext.packed_attention``) writes the keys into this same layout and applies the same
  masks, so nothing else here changes.
- Holes cost memory and attention work, so ``maybe_compact`` squeezes them out (one
  index_select of whole head_dim rows per layer) once they are more than ``MAX_HOLE_FRACTION``
  (a quarter) of the width. On this CPU (Gemma 3 270M, batch 8, contexts 104-160) a compaction
  costs ~4 ms and a hole column ~0.05 ms a packed step; the live flat loop compacts every 8-15
  steps at 1/4, and a threshold of 1/8-1/6 would save at most ~0.4 ms a step by this account,
  which live runs cannot tell from noise, so 1/4 stays (bench/README.md, "One attention call
  per packed step").

Models that ignore or reject a custom 4D mask (``accepts_custom_mask`` probes this once per
model) fall back to a 2D padding mask, which is exact for chains only (causal blocks) and
without sliding windows; tree blocks then raise an error naming the model class.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel

from .packed_attention import PackedStep, use_packed_attention

__all__ = ["RaggedKVCache", "accepts_custom_mask", "CustomMaskUnsupported"]

# ``maybe_compact`` squeezes out holes once they are more than this fraction of the width.
MAX_HOLE_FRACTION = 0.25


class CustomMaskUnsupported(RuntimeError):
    """The model cannot take the custom 4D attention mask this decoding needs (token trees, or a
    sliding window over a ragged cache)."""


def _sliding_window(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    if window is None or (layer_types and "sliding_attention" not in layer_types):
        return None
    return int(window)


def _uses_mask_per_layer_type(model: PreTrainedModel) -> bool:
    # Models with mixed full / sliding layers (Gemma 2/3, Qwen 2, ...) take a dict
    # {"full_attention": mask, "sliding_attention": mask} in place of one mask.
    layer_types = getattr(model.config.get_text_config(), "layer_types", None) or []
    return "sliding_attention" in layer_types


def _float_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """bool [B, q, K] -> additive float mask [B, 1, q, K]."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def _logits(model: PreTrainedModel, hidden: Tensor) -> Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:  # Gemma 2 style soft-capping; the causal-LM head does this after lm_head
        logits = torch.tanh(logits / cap) * cap
    return logits.float()


_probe_results: weakref.WeakKeyDictionary[PreTrainedModel, bool] = weakref.WeakKeyDictionary()


@torch.inference_mode()
def accepts_custom_mask(model: PreTrainedModel) -> bool:
    """Whether ``model`` applies a custom 4D attention mask (probed once per model).

    Two tokens at positions 0 and 1, the second forbidden to see the first, must give the
    second token (nearly) the hidden state it has alone at position 1: much closer than with
    the default causal mask, so that low-precision rounding does not matter. A model that
    ignores the mask (or raises on it) fails.
    """
    if model not in _probe_results:
        param = next(model.parameters())
        device = param.device
        tokens = torch.tensor([[1, 2]], device=device)
        positions = torch.tensor([[0, 1]], device=device)
        allowed = torch.eye(2, dtype=torch.bool, device=device).unsqueeze(0)
        mask = _float_mask(allowed, param.dtype)
        if _uses_mask_per_layer_type(model):
            mask = {"full_attention": mask, "sliding_attention": mask}
        try:
            decoder = model.get_decoder()
            masked = decoder(tokens, attention_mask=mask, position_ids=positions).last_hidden_state[0, 1]
            causal = decoder(tokens, position_ids=positions).last_hidden_state[0, 1]
            alone = decoder(tokens[:, 1:], position_ids=positions[:, 1:]).last_hidden_state[0, 0]
            ok = (masked - alone).abs().max() <= 0.1 * (causal - alone).abs().max()
        except Exception:  # noqa: BLE001 - any failure means "cannot take the mask"
            ok = False
        _probe_results[model] = bool(ok)
    return _probe_results[model]


class RaggedKVCache:
    """KV cache of one model for a batch of requests with ragged lengths (see module docstring)."""

    def __init__(self, model: PreTrainedModel, packed: bool = False):
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.window = _sliding_window(model)
        self.custom_mask = accepts_custom_mask(model)
        self.packed = packed  # run the model on the real slots only (tetris_ext.packed_attention)
        if packed:
            use_packed_attention(model)
            if not self.custom_mask:
                raise CustomMaskUnsupported(
                    f"{type(model).__name__} does not apply a custom 4D attention mask, which a "
                    "packed (flat) forward needs; use the padded loop (flat=False)"
                )
        self.cache = DynamicCache()
        self.positions = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # [B, L]
        self.valid = torch.zeros(0, 0, dtype=torch.bool, device=self.device)  # [B, L]

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    def lengths(self) -> Tensor:
        """[B] number of tokens each request has in the cache."""
        return self.valid.sum(1)

    # ----------------------------------------------------------------------------------------
    # forward and rollback

    def forward(
        self,
        tokens: Tensor,
        positions: Tensor,
        block_mask: Tensor,
        extra: Tensor | None = None,
        logits_at: Tensor | None = None,
        real: Tensor | None = None,
    ) -> Tensor | None:
        """Run the model on q new tokens per row, appending them as q new (invalid) columns.

        tokens, positions: [B, q] (padding tokens must be valid ids). block_mask: [B, q, q] bool,
        which new tokens each new token sees (itself included). extra: [B, q, L] bool or None,
        invalid columns the new tokens may also see (a drafter's tree nodes not yet committed).
        logits_at: [B, q] bool or None: the rows of the returned logits [n, V] (float32, in
        row-major order of the True entries); only those go through the output head.
        real: [B, q] bool or None (all): the slots that carry a token, a prefix of each row; a
        packed cache runs the model on these only (the others stay zero holes), and
        ``logits_at`` must lie within them.
        Columns stay invalid until ``commit``.
        """
        B, q = tokens.shape
        self._take_batch_size(B)
        mask = self._attention_mask(positions, block_mask, extra)
        if self.packed and real is not None and bool(real.any()):  # (none: a prefill of empty rows)
            hidden = self._packed_forward(tokens, positions, mask, real)
            if logits_at is not None:
                logits_at = logits_at[real]  # the same row-major order, over the packed tokens
        else:
            # transformers 5 appends the q new keys of every layer at the end of its
            # DynamicLayer (no cache_position any more); positions come from position_ids alone.
            hidden = self.model.get_decoder()(
                input_ids=tokens,
                position_ids=positions,
                attention_mask=mask,
                past_key_values=self.cache,
                use_cache=True,
            ).last_hidden_state
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.valid = torch.cat([self.valid, torch.zeros_like(tokens, dtype=torch.bool)], dim=1)
        if logits_at is None:
            return None
        return _logits(self.model, hidden[logits_at])

    def _packed_forward(self, tokens: Tensor, positions: Tensor, mask, real: Tensor) -> Tensor:
        """The decoder over the real slots as one sequence [1, N]; returns hidden [N, H]."""
        step = PackedStep.of(real, self.cache)
        rows, slots = step.rows, step.slots
        # No past_key_values: the packed attention function appends the keys itself, in the
        # per-row layout; the dict mask (or 4D tensor) is taken as given by the model.
        return self.model.get_decoder()(
            input_ids=tokens[rows, slots].unsqueeze(0),
            position_ids=positions[rows, slots].unsqueeze(0),
            attention_mask=mask,
            use_cache=False,
            packed_step=step,
        ).last_hidden_state[0]

    def _take_batch_size(self, B: int) -> None:
        if self.width == 0 and self.batch_size != B:  # a fresh cache: rows of its first forward
            self.positions = self.positions.new_zeros(B, 0)
            self.valid = self.valid.new_zeros(B, 0)

    def append(self, sequences: list[list[int]], last_logits: bool = False) -> Tensor | None:
        """Feed known tokens (ragged: ``sequences[b]`` for row b, possibly empty) and commit them.

        They go in as one right-padded causal block after each row's current length (prefill,
        or a drafter catching up on tokens the target accepted). With ``last_logits`` returns
        [B, V] float32 logits after each row's last token (every row needs one then).
        """
        B = len(sequences)
        self._take_batch_size(B)
        q = max(1, max(len(s) for s in sequences))  # a width-0 forward would not create the layers
        tokens = torch.zeros(B, q, dtype=torch.long)
        for b, seq in enumerate(sequences):
            tokens[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        sizes = torch.tensor([len(s) for s in sequences])
        real = torch.arange(q).unsqueeze(0) < sizes.unsqueeze(1)  # [B, q]
        positions = self.lengths().cpu().unsqueeze(1) + torch.arange(q)
        causal = torch.ones(q, q, dtype=torch.bool).tril().expand(B, q, q)
        last = None
        if last_logits:
            if not bool((sizes > 0).all()):
                raise ValueError("append(last_logits=True) needs at least one token per row")
            last = torch.zeros(B, q, dtype=torch.bool)
            last[torch.arange(B), sizes - 1] = True
        columns = torch.where(real, self.width + torch.arange(q), -1)
        logits = self.forward(
            tokens.to(self.device),
            positions.to(self.device),
            causal.to(self.device),
            logits_at=None if last is None else last.to(self.device),
            real=real.to(self.device),
        )
        self.commit(columns.to(self.device))
        return logits

    def commit(self, columns: Tensor) -> None:
        """Mark columns [B, K] (absolute indices, -1 = none) as part of their request's text."""
        rows = torch.arange(self.batch_size, device=self.device).unsqueeze(1).expand_as(columns)
        keep = columns >= 0
        self.valid[rows[keep], columns[keep]] = True

    def _attention_mask(self, positions: Tensor, block_mask: Tensor, extra: Tensor | None):
        B, q = positions.shape
        if not self.custom_mask:
            if extra is not None or not _is_chain(block_mask):
                raise CustomMaskUnsupported(
                    f"{type(self.model).__name__} does not apply a custom 4D attention mask "
                    "(probed with tetris_ext.kv_cache.accepts_custom_mask), so it cannot verify "
                    "or draft token trees; use chains (tree_width=1, a drafter without parents)"
                )
            if self.window is not None and int(positions.max()) >= self.window:
                raise CustomMaskUnsupported(
                    f"{type(self.model).__name__} does not apply a custom 4D attention mask, and its "
                    "sliding window cannot skip the holes of a ragged cache past the window"
                )
            # 2D padding mask: holes are 0; the model adds causality inside the block.
            return torch.cat([self.valid, torch.ones_like(positions, dtype=torch.bool)], dim=1).long()
        past = self.valid.unsqueeze(1).expand(B, q, self.width)
        if extra is not None:
            past = past | extra
        allowed = torch.cat([past, block_mask], dim=2)  # [B, q, L + q]
        mask = _float_mask(allowed, self.dtype)
        if self.window is None:
            return mask
        key_positions = torch.cat([self.positions, positions], dim=1)
        in_window = positions.unsqueeze(2) - key_positions.unsqueeze(1) < self.window
        sliding = _float_mask(allowed & in_window, self.dtype)
        if _uses_mask_per_layer_type(self.model):
            return {"full_attention": mask, "sliding_attention": sliding}
        return sliding  # every layer slides (Mistral style)

    # ----------------------------------------------------------------------------------------
    # batch membership and compaction

    def _layers(self):
        """(keys, values) [B, heads, L, head_dim] of every layer. Full-width layers only: the
        cache is made without a config, so sliding layers keep every column too (our masks
        apply the window; transformers' sliding layers would drop columns by count, holes
        included)."""
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def _map_layers(self, fn) -> None:
        self.cache = DynamicCache(ddp_cache_data=[(fn(k), fn(v)) for k, v in self._layers()])

    def select_rows(self, rows: Tensor) -> None:
        """Keep only these rows (requests), in this order."""
        self.positions, self.valid = self.positions[rows], self.valid[rows]
        self._map_layers(lambda t: t[rows])
        self.maybe_compact()

    def extend(self, other: RaggedKVCache) -> None:
        """Append the rows of ``other`` (e.g. newly prefilled requests) below ours."""
        if self.batch_size == 0:
            self.cache, self.positions, self.valid = other.cache, other.positions, other.valid
            return
        width = max(self.width, other.width)
        mine, theirs = list(self._padded_layers(width)), list(other._padded_layers(width))
        self.cache = DynamicCache(
            ddp_cache_data=[
                (torch.cat([k1, k2]), torch.cat([v1, v2])) for (k1, v1), (k2, v2) in zip(mine, theirs)
            ]
        )
        self.positions = torch.cat(
            [_pad_columns(self.positions, width), _pad_columns(other.positions, width)]
        )
        self.valid = torch.cat([_pad_columns(self.valid, width), _pad_columns(other.valid, width)])

    def _padded_layers(self, width: int):
        for k, v in self._layers():
            yield _pad_columns(k, width, dim=2), _pad_columns(v, width, dim=2)

    def maybe_compact(self, max_hole_fraction: float | None = None) -> None:
        """Squeeze out holes when they are more than ``max_hole_fraction`` (default
        ``MAX_HOLE_FRACTION``) of the width."""
        if max_hole_fraction is None:
            max_hole_fraction = MAX_HOLE_FRACTION
        longest = int(self.lengths().max()) if self.batch_size else 0
        if self.width - longest <= max_hole_fraction * self.width:
            return
        # Valid columns first, in their original order (a stable sort of ~valid).
        B, width = self.valid.shape
        order = torch.sort((~self.valid).to(torch.int8), dim=1, stable=True).indices[:, :longest]
        self.positions = self.positions.gather(1, order)
        self.valid = self.valid.gather(1, order)

        def gather(t: Tensor) -> Tensor:
            # Each layer as [B * heads * width, head_dim] rows, row (b, h, order[b, j]) kept: one
            # index_select copying whole head_dim rows (an element-wise torch.gather with an
            # expanded index was ~10x slower on this CPU: bench/flat_step.py --holes).
            heads, dim = t.shape[1], t.shape[3]
            first = (torch.arange(B * heads, device=t.device) * width).view(B, heads, 1)
            index = (first + order.unsqueeze(1)).reshape(-1)
            return t.reshape(-1, dim).index_select(0, index).view(B, heads, longest, dim)

        self._map_layers(gather)


def _pad_columns(t: Tensor, width: int, dim: int = 1) -> Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _is_chain(block_mask: Tensor) -> bool:
    """Every row sees exactly its prefix (a chain slot) or only itself (a padding slot), so a
    causal 2D mask gives the real slots the same attention."""
    q = block_mask.shape[-1]
    causal = torch.ones(q, q, dtype=torch.bool, device=block_mask.device).tril()
    diagonal = torch.eye(q, dtype=torch.bool, device=block_mask.device)
    rows_ok = (block_mask == causal).all(-1) | (block_mask == diagonal).all(-1)
    return bool(rows_ok.all())
