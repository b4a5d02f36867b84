"""tetris::draft_cumprod: token log-probabilities and path sums, invalid ids, non-finite
logits, every dtype and layout and argument checks on every backend (the `backend` fixture,
tests/conftest.py); autograd on the CPU; the kernels against the CPU op on random and
block-boundary inputs (`kernel_backend`: floats within 1e-5, -inf / NaN patterns exactly)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

import tetris_ext  # noqa: F401  (registers torch.ops.tetris)
from refs.backends import CPU, FLOAT_TOLERANCE, assert_matches_cpu
from refs.blocks import DRAFT_CUMPROD_BATCH_SHAPES, DRAFT_CUMPROD_VOCABS, draft_cumprod_block_inputs
from refs.draft_cumprod import (
    assert_close_logprobs,
    draft_cumprod_inputs,
    draft_cumprod_ref,
    path_sums,
    random_logits,
    random_parents,
    random_tokens,
    valid_candidates,
)
from refs.layouts import LAYOUTS, with_layout

draft_cumprod = torch.ops.tetris.draft_cumprod.default
INF = float("inf")
NAN = float("nan")


def run(kw, backend):
    return backend.run("draft_cumprod", kw["logits"], kw["tokens"], kw["parents"], kw["temperature"])


@settings(max_examples=250, deadline=None)
@given(draft_cumprod_inputs())
def test_matches_reference(backend, kw):
    token_logprobs, cum_logprobs = run(kw, backend)
    expected_token, expected_cum = draft_cumprod_ref(**kw)
    assert token_logprobs.dtype == cum_logprobs.dtype == torch.float32
    assert token_logprobs.shape == cum_logprobs.shape == kw["tokens"].shape
    assert_close_logprobs(token_logprobs, expected_token)
    assert_close_logprobs(cum_logprobs, expected_cum, atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(draft_cumprod_inputs())
def test_cum_is_the_exact_float32_path_sum(backend, kw):
    # cum_logprobs[b,n] = token_logprobs[b,n] + cum_logprobs[b,parent], added in float32.
    token_logprobs, cum_logprobs = run(kw, backend)
    valid = valid_candidates(kw["tokens"], kw["parents"], kw["logits"].shape[-1])
    expected = path_sums(token_logprobs, valid, kw["parents"])
    torch.testing.assert_close(cum_logprobs, expected, atol=0, rtol=0, equal_nan=True)


def test_invalid_ids_give_minus_inf_and_poison_descendants(backend):
    logits = torch.zeros(1, 5, 4)  # uniform: every valid token has log(1/4)
    tokens = torch.tensor([[0, 9, 1, 2, 3]])  # candidate 1 has an out-of-range token
    parents = torch.tensor([[-1, 0, 1, 7, 0]])  # candidate 3 has an invalid parent
    token_logprobs, cum = backend.run("draft_cumprod", logits, tokens, parents, 1.0)
    q = torch.tensor(0.25).log().item()
    assert token_logprobs.tolist() == [[q, -INF, q, -INF, q]]
    # 2 hangs below the invalid 1: its own log-prob stays, its path sum is -inf.
    assert cum.tolist() == [[q, -INF, -INF, -INF, q + q]]


def test_chain_is_a_cumulative_sum(backend):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 50, generator=g)
    tokens = torch.randint(0, 50, (3, 6), generator=g)
    token_logprobs, cum = backend.run("draft_cumprod", logits, tokens, None, 1.0)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs, expected)
    torch.testing.assert_close(cum, expected.cumsum(1), rtol=1e-5, atol=1e-5)


def test_non_finite_logits(backend):
    V = 1300  # three chunks of the CPU loop, the last one partial
    logits = torch.randn(6, 1, V)
    logits[0, 0, 5] = NAN  # NaN anywhere in the row: NaN
    logits[1, 0, 1200] = INF  # +inf: NaN (as torch.log_softmax)
    logits[2] = -INF  # all -inf: NaN (as torch.log_softmax)
    logits[3, 0, :700] = -INF  # masked entries are fine; the token itself is masked
    logits[4, 0, 600:] = -INF  # masked after the first chunk
    logits[5, 0, 1299] = NAN  # NaN in the last, partial chunk
    tokens = torch.tensor([[1], [2], [3], [4], [5], [6]])
    token_logprobs, _ = backend.run("draft_cumprod", logits, tokens, None, 1.0)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.isnan(token_logprobs[[0, 1, 2, 5]]).all()
    assert token_logprobs[3].item() == -INF
    assert_close_logprobs(token_logprobs, expected)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_long_rows_rescale_correctly(backend, scale):
    # Maxima that grow chunk after chunk (and one that comes first) exercise the online
    # rescaling of the running sum.
    V = 32000
    rising = torch.linspace(-scale, scale, V)
    falling = rising.flip(0)
    noisy = torch.randn(V, generator=torch.Generator().manual_seed(1)) * scale
    logits = torch.stack([rising, falling, noisy]).unsqueeze(1)
    tokens = torch.tensor([[0], [V - 1], [123]])
    for temperature in [1.0, 0.3, 2.5]:
        token_logprobs, _ = backend.run("draft_cumprod", logits, tokens, None, temperature)
        expected, _ = draft_cumprod_ref(logits, tokens, None, temperature)
        assert_close_logprobs(token_logprobs, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 1e-4])
def test_every_half_precision_value(backend, dtype, temperature):
    # All 65536 bit patterns as rows [x, 0]; a small temperature magnifies any conversion
    # error (float16 subnormals included) into the result.
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype)
    logits = torch.stack([values, torch.zeros_like(values)], -1).view(256, 256, 2)
    tokens = torch.zeros(256, 256, dtype=torch.int64)
    token_logprobs, _ = backend.run("draft_cumprod", logits, tokens, None, temperature)
    expected, _ = draft_cumprod_ref(logits, tokens, None, temperature)
    assert_close_logprobs(token_logprobs, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(0, 3, 5), (2, 0, 5), (2, 3, 0), (0, 0, 0)])
def test_empty(backend, shape):
    B, N, V = shape
    logits = torch.zeros(shape)
    tokens = torch.zeros(B, N, dtype=torch.int64)
    token_logprobs, cum = backend.run("draft_cumprod", logits, tokens, torch.full((B, N), -1), 1.0)
    assert token_logprobs.shape == cum.shape == (B, N)
    # V = 0: no token is in range.
    assert (token_logprobs == -INF).all() and (cum == -INF).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_any_layout_same_result(backend, layout, dtype):
    g = torch.Generator().manual_seed(2)
    logits = random_logits(g, 3, 5, 700, 3.0, True).to(dtype)
    tokens = random_tokens(g, 3, 5, 700, 0.2)
    parents = random_parents(g, 3, 5, 0.2).int()
    expected = backend.run("draft_cumprod", logits, tokens, parents, 0.8)
    actual = backend.run(
        "draft_cumprod",
        with_layout(logits, layout),
        with_layout(tokens, layout),
        with_layout(parents, layout),
        0.8,
    )
    # The CPU op gives the same bits; a kernel takes another path for strided rows (scalar
    # loads), which sums in another order.
    tolerance = 0 if backend is CPU else FLOAT_TOLERANCE
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=tolerance, rtol=tolerance, equal_nan=True)


def test_deterministic(backend):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(16, 8, 3000, generator=g)
    tokens = torch.randint(0, 3000, (16, 8), generator=g)
    first = backend.run("draft_cumprod", logits, tokens, None, 1.0)
    for _ in range(3):
        again = backend.run("draft_cumprod", logits, tokens, None, 1.0)
        assert all(torch.equal(a, b) for a, b in zip(again, first))


@pytest.mark.parametrize("tree", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_matches_autograd_of_the_reference(tree, dtype):
    g = torch.Generator().manual_seed(6)
    B, N, V = 4, 6, 33
    logits = random_logits(g, B, N, V, 2.0, False)
    logits[0, 0, :5] = -INF  # masked entries get zero gradient
    logits = logits.to(dtype)
    tokens = random_tokens(g, B, N, V, 0.2)
    parents = random_parents(g, B, N, 0.2) if tree else None
    w_token, w_cum = torch.randn(B, N, generator=g), torch.randn(B, N, generator=g)

    def loss(token_logprobs, cum):
        finite = lambda x: torch.where(torch.isfinite(x), x, 0.0)  # noqa: E731
        return (finite(token_logprobs) * w_token + finite(cum) * w_cum).sum()

    ours = logits.clone().requires_grad_()
    loss(*draft_cumprod(ours, tokens, parents, 0.7)).backward()
    reference = logits.clone().requires_grad_()
    loss(*draft_cumprod_ref(reference, tokens, parents, 0.7)).backward()
    assert ours.grad.dtype == dtype
    torch.testing.assert_close(ours.grad.float(), reference.grad.float(), atol=1e-5, rtol=1e-4)


def opcheck_inputs():
    g = torch.Generator().manual_seed(8)
    yield (random_logits(g, 2, 4, 20, 1.0, False), random_tokens(g, 2, 4, 20, 0.0), None, 1.0)
    yield (
        random_logits(g, 3, 5, 600, 2.0, False).to(torch.bfloat16),
        random_tokens(g, 3, 5, 600, 0.2).int(),
        random_parents(g, 3, 5, 0.2),
        0.5,
    )
    yield (random_logits(g, 2, 3, 9, 1.0, False).half(), random_tokens(g, 2, 3, 9, 0.0), None, 2.0)
    yield (torch.zeros(0, 3, 7), torch.zeros(0, 3, dtype=torch.int64), None, 1.0)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("args", list(opcheck_inputs()))
def test_opcheck(args, requires_grad):
    logits, *rest = args
    logits = logits.clone().requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.tetris.draft_cumprod.default, (logits, *rest))


# Bad inputs: every check raises, naming the argument.

L = torch.zeros(2, 3, 5)
T = torch.zeros(2, 3, dtype=torch.int64)


@pytest.mark.parametrize(
    "args, error, match",
    [
        (
            (L.double(), T, None, 1.0),
            TypeError,
            "argument 'logits': expected dtype Float or Half or BFloat16",
        ),
        ((T.view(2, 3, 1), T, None, 1.0), TypeError, "argument 'logits'"),
        ((torch.zeros(2, 3), T, None, 1.0), ValueError, "argument 'logits': expected a 3-D"),
        ((L, T.float(), None, 1.0), TypeError, "argument 'tokens': expected dtype Int or Long"),
        ((L, T.short(), None, 1.0), TypeError, "argument 'tokens'"),
        ((L, torch.zeros(2, 4, dtype=torch.long), None, 1.0), ValueError, "argument 'tokens'.*N"),
        ((L, torch.zeros(3, 3, dtype=torch.long), None, 1.0), ValueError, "argument 'tokens'.*B"),
        ((L, torch.zeros(6, dtype=torch.long), None, 1.0), ValueError, "argument 'tokens'.*2-D"),
        ((L, T, T.float(), 1.0), TypeError, "argument 'parents': expected dtype Int or Long"),
        ((L, T, torch.zeros(2, 2, dtype=torch.long), 1.0), ValueError, "argument 'parents'.*N"),
        ((L, T, torch.zeros(2, 3, 1, dtype=torch.long), 1.0), ValueError, "argument 'parents'.*2-D"),
        ((L, T, None, 0.0), ValueError, "argument 'temperature': expected a finite number > 0"),
        ((L, T, None, -1.0), ValueError, "argument 'temperature'"),
        ((L, T, None, INF), ValueError, "argument 'temperature'"),
        ((L, T, None, NAN), ValueError, "argument 'temperature'"),
    ],
)
def test_bad_inputs(backend, args, error, match):
    with pytest.raises(error, match=match):
        backend.run("draft_cumprod", *args)


# A tensor on another device: tests/test_kernel_backends.py (every op, every backend).


# -- the kernels against the CPU op (on random inputs: tests/test_kernel_backends.py) ------------

HALF_TYPES = [torch.float32, torch.float16, torch.bfloat16]


# V around the vector widths and the blocks' unrolled stripes (tests/refs/blocks.py).
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("V", DRAFT_CUMPROD_VOCABS)
def test_kernel_vocabulary_sizes(kernel_backend, dtype, V):
    assert_matches_cpu(kernel_backend, "draft_cumprod", draft_cumprod_block_inputs(2, 3, V, dtype, seed=V))


# Rows that start at every misalignment from a 16-byte boundary (a sliced vocabulary), and
# strided rows (every other logit), which take the scalar paths.
@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("offset", range(8))
def test_kernel_misaligned_rows(kernel_backend, dtype, offset):
    inputs = draft_cumprod_block_inputs(2, 3, 300, dtype, seed=offset)
    wide = torch.randn(2, 3, 300 + offset + 5).to(dtype)
    wide[..., offset : offset + 300] = inputs["logits"]
    assert_matches_cpu(
        kernel_backend, "draft_cumprod", {**inputs, "logits": wide[..., offset : offset + 300]}
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_kernel_layouts(kernel_backend, dtype, layout):
    inputs = draft_cumprod_block_inputs(3, 4, 200, dtype, seed=1)
    inputs["logits"] = with_layout(inputs["logits"], layout)
    inputs["tokens"] = with_layout(inputs["tokens"], layout)
    assert_matches_cpu(kernel_backend, "draft_cumprod", inputs)


# Batch and candidate counts around warp, block and 1024 boundaries (tests/refs/blocks.py).
@pytest.mark.parametrize("B, N", DRAFT_CUMPROD_BATCH_SHAPES)
@pytest.mark.parametrize("tree", [False, True])
def test_kernel_batch_shapes(kernel_backend, B, N, tree):
    assert_matches_cpu(
        kernel_backend, "draft_cumprod", draft_cumprod_block_inputs(B, N, 6, tree=tree, seed=B * N)
    )


def test_kernel_empty(kernel_backend):
    for B, N, V in [(0, 3, 5), (3, 0, 5), (0, 0, 0), (2, 3, 0)]:
        assert_matches_cpu(kernel_backend, "draft_cumprod", draft_cumprod_block_inputs(B, N, V))


# The bench shape (B=64, N=8, V=32000), in float32 and bfloat16.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_bench_shape(emulated, dtype):
    inputs = draft_cumprod_block_inputs(64, 8, 32000, dtype, specials=False, invalid_rate=0.02)
    assert_matches_cpu(emulated, "draft_cumprod", inputs)


# The bench shape, and B * N * V above 10^8 (the bandwidth target's regime), V of a 128k
# vocabulary: too large for the emulator.
@pytest.mark.parametrize(
    "B, N, V, dtype",
    [
        (64, 8, 32000, torch.float32),
        (64, 8, 32000, torch.bfloat16),
        (256, 16, 32000, torch.bfloat16),
        (16, 8, 128256, torch.float16),
    ],
)
def test_cuda_large(cuda, B, N, V, dtype):
    inputs = draft_cumprod_block_inputs(B, N, V, dtype, seed=V, specials=False, invalid_rate=0.02)
    assert_matches_cpu(cuda, "draft_cumprod", inputs)


# Threads of each block in the opposite order (the harness's reverse schedule) give the same
# answer: the kernels have no races that the default order would hide.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B, N, V", [(3, 5, 37), (2, 4, 1000), (40, 3, 9)])
def test_emulated_reverse_thread_order(emulated, monkeypatch, dtype, B, N, V):
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_matches_cpu(emulated, "draft_cumprod", draft_cumprod_block_inputs(B, N, V, dtype, seed=V))
