"""The packed attention function: however the rows of a step are split into attention calls
(one per run of equal rows, one for the whole padded block, or a plan in between), every real
query gets exactly its row's attention, the holes' padded queries stay finite, and the plan is
the cheapest split under its cost."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_flat_verification import MODELS, _chain_block

import tetris_ext  # noqa: F401  (registers the ops)
from tetris_ext import packed_attention
from tetris_ext.kv_cache import RaggedKVCache
from tetris_ext.packed_attention import PackedStep, plan_segments

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

# sizes with every row different, and rows without tokens at the edges and inside
SIZES = [0, 5, 2, 0, 7, 1, 3, 0]
SPLITS = {
    "per run": lambda sizes: plan_segments(sizes, 1.0, 1e-9),
    "one call": lambda sizes: plan_segments(sizes, 1.0, 1e30),
    # padded calls of several rows, one holding an empty row, one a single row (other steps,
    # such as a prefill: one call)
    "mixed": lambda sizes: (
        [(1, 4, 5), (4, 5, 7), (5, 8, 3)] if sizes == SIZES else plan_segments(sizes, 1, 1e30)
    ),
}


def _cost(sizes, segments, slot_cost, call_cost):
    return sum(call_cost + slot_cost * (end - first) * width for first, end, width in segments)


@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=7),
    st.floats(0.0, 50.0),
)
@settings(max_examples=200, deadline=None)
def test_plan_is_the_cheapest_split_into_runs_of_adjacent_rows(sizes, call_cost):
    plan = plan_segments(sizes, 1.0, call_cost)
    covered = [b for first, end, _ in plan for b in range(first, end)]
    assert covered == sorted(set(covered))  # disjoint and in order
    assert all(b in covered for b, size in enumerate(sizes) if size)  # every row with tokens
    assert all(width == max(sizes[first:end]) > 0 for first, end, width in plan)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(sizes) - 1):  # every split, brute force
        bounds = [0] + [b + 1 for b, cut in enumerate(cuts) if cut] + [len(sizes)]
        segments = [(f, e, max(sizes[f:e])) for f, e in zip(bounds, bounds[1:]) if max(sizes[f:e])]
        best = min(best, _cost(sizes, segments, 1.0, call_cost))
    assert _cost(sizes, plan, 1.0, call_cost) == pytest.approx(best)


def test_plan_extremes():
    sizes = [4, 6, 6, 1, 0, 0, 2]
    assert plan_segments(sizes, 1.0, 1e-9) == [(0, 1, 4), (1, 3, 6), (3, 4, 1), (6, 7, 2)]
    assert plan_segments(sizes, 1.0, 1e30) == [(0, 7, 6)]
    assert plan_segments([0, 0], 1.0, 1.0) == []


class _Cache:  # DynamicCache.update's part: the keys after appending the block
    def __init__(self, keys, values):
        self.keys, self.values = keys, values

    def update(self, *_):
        return self.keys, self.values


class _Module:
    layer_idx, is_causal, training = 0, False, False


@pytest.mark.parametrize("split", list(SPLITS))
def test_every_split_gives_each_row_its_attention_and_finite_holes(split, monkeypatch):
    g = torch.Generator().manual_seed(0)
    B, heads, kv_heads, dim, past = len(SIZES), 4, 2, 8, 6
    width, n = max(SIZES), sum(SIZES)
    real = torch.arange(width) < torch.tensor(SIZES)[:, None]
    keys, values = torch.randn(2, B, kv_heads, past + width, dim, generator=g)
    query = torch.randn(1, heads, n, dim, generator=g)
    allowed = torch.rand(B, width, past + width, generator=g) < 0.6
    allowed[..., :1] |= real[..., None]  # every real query sees a key
    allowed[~real] = False  # the holes' queries see nothing at all
    mask = torch.zeros(B, 1, width, past + width).masked_fill_(
        ~allowed[:, None], torch.finfo(torch.float32).min
    )
    outputs = []

    def recorded(*args, **kwargs):
        out = grouped(*args, **kwargs)
        outputs.append(out[0])
        return out

    grouped = packed_attention._grouped_sdpa
    monkeypatch.setattr(packed_attention, "_grouped_sdpa", recorded)
    monkeypatch.setattr(packed_attention, "plan_segments", lambda sizes, *_: SPLITS[split](sizes))
    step = PackedStep.of(real, _Cache(keys, values))
    key = torch.zeros(1, kv_heads, n, dim)  # (the stub cache ignores the new keys)
    out, _ = packed_attention.packed_attention(
        _Module(), query, key, key, mask, packed_step=step, scaling=0.3
    )
    assert len(outputs) == len(step.calls) == {"per run": 5, "one call": 1, "mixed": 3}[split]
    assert all(bool(torch.isfinite(o).all()) for o in outputs)
    assert out.shape == (1, n, heads, dim)
    i = 0
    for b, size in enumerate(SIZES):  # each row on its own, the keys repeated per query head
        row_query = query[0, :, i : i + size]
        expected = torch.nn.functional.scaled_dot_product_attention(
            row_query,
            keys[b].repeat_interleave(heads // kv_heads, 0),
            values[b].repeat_interleave(heads // kv_heads, 0),
            attn_mask=mask[b, :, :size],
            scale=0.3,
        )
        torch.testing.assert_close(out[0, i : i + size], expected.transpose(0, 1), atol=1e-5, rtol=1e-5)
        i += size


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("name", list(MODELS))
@torch.inference_mode()
def test_packed_forward_of_uneven_and_empty_rows_gives_the_padded_logits(name, split, monkeypatch):
    monkeypatch.setattr(packed_attention, "plan_segments", lambda sizes, *_: SPLITS[split](sizes))
    padded_model, packed_model = MODELS[name](), MODELS[name]()
    g = torch.Generator().manual_seed(1)
    texts = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (7, 2, 10, 4, 3, 9, 5, 6)]
    padded, packed = RaggedKVCache(padded_model), RaggedKVCache(packed_model, packed=True)
    for cache in (padded, packed):
        cache.append([t[:-1] for t in texts])
    for _ in range(2):  # the second step runs on a cache with the first step's holes
        tokens, positions, mask, real = _chain_block(texts, SIZES, g)
        logits = [c.forward(tokens, positions, mask, logits_at=real, real=real) for c in (padded, packed)]
        assert logits[1].shape == (sum(SIZES), 40)
        torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)
