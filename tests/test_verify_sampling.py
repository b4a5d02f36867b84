"""verify_sampling: agreement with the reference in tests/refs/verify.py, and losslessness: the
tokens it outputs are distributed as the target says (chi-square tests with enough samples that
a wrong residual fails them; the negative controls show it); on every backend (the `backend`
fixture, tests/conftest.py) but where the CPU's summation order matters. Then the kernel
against the CPU op (`kernel_backend`): every output bit-identical on dyadic inputs (every sum
exact, so the kernel's parallel sums give the CPU's bits; drafted trees get at most three
children per slot: each rejection adds bits to the residual), with shapes across the kernel's
block boundaries: V around one tile (4 tokens per thread, up to 1024 threads: 4096 tokens),
V not a multiple of 4."""

import pytest
import torch
from hypothesis import given, settings
from scipy.stats import chisquare

import tetris_ext  # noqa: F401  (registers torch.ops.tetris)
from refs.backends import assert_matches_cpu, assert_outputs_match, to_device
from refs.blocks import SAMPLING_VOCABS, peaked_probs, sampling_block_inputs
from refs.tree_mask import noncontiguous
from refs.verify import random_probs, verify_sampling_inputs, verify_sampling_ref

verify_sampling = torch.ops.tetris.verify_sampling.default
SETTINGS = settings(max_examples=200, deadline=None)


# The CPU op sums in the reference's order; a kernel sums in parallel, exact on dyadic inputs.
@SETTINGS
@given(verify_sampling_inputs(dyadic=False))
def test_matches_reference_bit_for_bit(inputs):
    assert_outputs_match(verify_sampling(**inputs), verify_sampling_ref(**inputs))


@SETTINGS
@given(verify_sampling_inputs(dyadic=True))
def test_matches_reference_on_dyadic_inputs(backend, inputs):
    assert_outputs_match(backend("verify_sampling", inputs), verify_sampling_ref(**inputs))


# -- losslessness ------------------------------------------------------------------------------
#
# Each instance is one draft tree repeated over SAMPLES requests, each with its own uniforms
# (and, where the children were sampled from the draft, its own draft tokens); one op call
# gives SAMPLES independent verification steps. Lossless means: the first output token follows
# the target distribution after the root, and given that slot s was accepted first, the next
# output token follows the target distribution after slot s.

SAMPLES = 40_000
V = 6
PASS_P, FAIL_P = 1e-3, 1e-8  # a correct rule passes every test here; a wrong one is far off


def rows(seed, n, zeros=0.3):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(n, V, generator=g) ** 2 * (torch.rand(n, V, generator=g) > zeros)
    weights[:, seed % V] += 0.05
    return weights / weights.sum(1, keepdim=True)


def draw(probs, g):
    return torch.multinomial(probs, 1, replacement=True, generator=g)[:, 0]


def chain_with_draft(seed=0):
    """A chain of 3 drafted tokens; the models depend on the depth and the previous token:
    target T[depth][token], draft Q[depth][token]. Each request samples its own chain from Q."""
    g = torch.Generator().manual_seed(seed)
    T = rows(seed + 1, 4 * V).reshape(4, V, V)
    Q = rows(seed + 2, 4 * V, zeros=0.0).reshape(4, V, V)
    tokens = torch.zeros(SAMPLES, 4, dtype=torch.long)  # the root's token is 0
    for depth in range(1, 4):
        tokens[:, depth] = draw(Q[depth - 1, tokens[:, depth - 1]], g)
    depth = torch.arange(4)
    return dict(
        slot_tokens=tokens,
        slot_parent=torch.tensor([-1, 0, 1, 2]).expand(SAMPLES, 4),
        target_probs=T[depth, tokens],
        draft_probs=Q[depth, tokens],
        uniforms=torch.rand(SAMPLES, 4, generator=g),
    )


TREE_PARENTS = [-1, 0, 0, 0, 1, 1, 4]


def tree_without_draft(seed=0):
    """Deterministic children (as top-k or n-gram drafts give): the root has three children,
    two of them with the same token (the second must never be accepted after the first is
    rejected); slot 1 has two children, slot 4 one. The root's target row is unnormalised."""
    g = torch.Generator().manual_seed(seed)
    M = len(TREE_PARENTS)
    T = rows(seed + 3, M)
    T[0] = torch.tensor([0.15, 0.30, 0.25, 0.05, 0.0, 0.0]) * 0.75
    tokens = torch.tensor([0, 2, 1, 2, 1, 3, 2])
    return dict(
        slot_tokens=tokens.expand(SAMPLES, M),
        slot_parent=torch.tensor(TREE_PARENTS).expand(SAMPLES, M),
        target_probs=T.expand(SAMPLES, M, V),
        draft_probs=None,
        uniforms=torch.rand(SAMPLES, M, generator=g),
    )


def tree_with_draft(seed=0, target_scale=1.0):
    """Children sampled i.i.d. from the draft: three children of the root, two of slot 1, one
    of slot 4, each request drawing its own. target_scale != 1 makes the target unnormalised."""
    g = torch.Generator().manual_seed(seed)
    M = len(TREE_PARENTS)
    T = rows(seed + 4, M)
    Q = rows(seed + 5, M, zeros=0.0)
    # At the root, where three children compete, the residual keeps three tokens (0, 1, 2), so
    # that how the later children are tested matters.
    T[0] = torch.tensor([0.30, 0.25, 0.20, 0.15, 0.10, 0.0])
    Q[0] = torch.tensor([0.05, 0.10, 0.15, 0.20, 0.25, 0.25])
    T *= target_scale
    tokens = torch.zeros(SAMPLES, M, dtype=torch.long)
    for s in range(1, M):
        tokens[:, s] = draw(Q[TREE_PARENTS[s]].expand(SAMPLES, V), g)
    return dict(
        slot_tokens=tokens,
        slot_parent=torch.tensor(TREE_PARENTS).expand(SAMPLES, M),
        target_probs=T.expand(SAMPLES, M, V),
        draft_probs=Q.expand(SAMPLES, M, V),
        uniforms=torch.rand(SAMPLES, M, generator=g),
    )


def fit_pvalue(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value of the tokens against a distribution (normalised here); a token
    with probability 0 must never appear."""
    probs = probs.double() / probs.double().sum()
    counts = torch.bincount(tokens, minlength=V).double()
    assert len(counts) == V, "a token outside the vocabulary"
    assert torch.all(counts[probs == 0] == 0), "a token the target gives probability 0"
    support = probs > 0
    return chisquare(counts[support].numpy(), (probs[support] * len(tokens)).numpy()).pvalue


def lossless_pvalues(inputs, outputs, min_count=2000):
    """p-values of the first output token against the target after the root, and of the token
    after each first accepted slot (seen at least min_count times) against the target there."""
    accepted_slots, num_accepted, out_tokens = outputs
    target = inputs["target_probs"]
    pvalues = [fit_pvalue(out_tokens[:, 0], target[0, 0])]
    first = accepted_slots[:, 0]
    for s in range(1, target.shape[1]):
        rows_with_s = (first == s).nonzero()[:, 0]
        if len(rows_with_s) < min_count:
            continue
        # the target row after slot s may depend on the drafted tokens: group by it
        for row in target[rows_with_s, s].unique(dim=0):
            same = rows_with_s[(target[rows_with_s, s] == row).all(1)]
            if len(same) >= min_count:
                pvalues.append(fit_pvalue(out_tokens[same, 1], row))
    return pvalues


INSTANCES = {
    "chain_with_draft": (chain_with_draft, "no_subtract"),
    "tree_without_draft": (tree_without_draft, "keep_rejected"),
    "tree_with_draft": (tree_with_draft, "unnormalised"),
}


@pytest.mark.parametrize("name", INSTANCES)
@pytest.mark.parametrize("seed", [0, 1])
def test_output_follows_the_target(backend, name, seed):
    inputs = INSTANCES[name][0](seed)
    pvalues = lossless_pvalues(inputs, tuple(t.cpu() for t in backend("verify_sampling", inputs)))
    assert len(pvalues) >= 2  # the root and at least one accepted slot were tested
    assert min(pvalues) > PASS_P, pvalues


def test_output_follows_an_unnormalised_target_with_draft(backend):
    inputs = tree_with_draft(seed=3, target_scale=0.5)
    assert min(lossless_pvalues(inputs, tuple(t.cpu() for t in backend("verify_sampling", inputs)))) > PASS_P


@pytest.mark.parametrize("name", INSTANCES)
def test_negative_control_a_wrong_residual_fails(name):
    """The same test on the reference with a deliberate mistake in its residual (for trees
    with draft: the literal unnormalised rule u * q(x) < p(x), p <- max(p - q, 0), which is
    exact only for one child per slot) fails by a wide margin."""
    make, mistake = INSTANCES[name]
    inputs = make(0)
    assert min(lossless_pvalues(inputs, verify_sampling_ref(**inputs, mistake=mistake))) < FAIL_P


# -- the rules on small worked examples --------------------------------------------------------


def run(backend, tokens, parents, target, uniforms, draft=None):
    as_probs = lambda rows: torch.tensor(rows, dtype=torch.float32)[None]  # noqa: E731
    accepted_slots, num_accepted, out_tokens = backend.run(
        "verify_sampling",
        torch.tensor([tokens]),
        torch.tensor([parents]),
        as_probs(target),
        None if draft is None else as_probs(draft),
        torch.tensor([uniforms], dtype=torch.float32),
    )
    n = int(num_accepted[0])
    return accepted_slots[0, :n].tolist(), out_tokens[0, : n + 1].tolist()


def test_deterministic_children_example(backend):
    target = [[0.5, 0.25, 0.25, 0.0], [1, 0, 0, 0], [0.0, 0.0, 0.5, 0.5]]
    # slot 1 (token 1): 0.9 * 1 >= 0.25, rejected, p(1) <- 0, sum(p) = 0.75;
    # slot 2 (token 0): 0.5 * 0.75 < 0.5, accepted; slot 2 is a leaf: sample its target row
    # with u0 = 0.6: cumsum [0, 0, 0.5, 1] first exceeds 0.6 at token 3.
    assert run(backend, [7, 1, 0], [-1, 0, 0], target, [0.6, 0.9, 0.5]) == ([2], [0, 3])
    # slot 2 rejected too (0.7 * 0.75 >= 0.5): p(0) <- 0 leaves [0, 0, 0.25, 0]: token 2.
    assert run(backend, [7, 1, 0], [-1, 0, 0], target, [0.6, 0.9, 0.7]) == ([], [2])


def test_drafted_child_example(backend):
    target = [[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0]]
    draft = [[0.25, 0.25, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]]
    # token 2: accepted when u * q(2) = u * 0.5 < p(2) = 0.25
    assert run(backend, [7, 2], [-1, 0], target, [0.0, 0.25], draft) == ([1], [2, 3])
    # rejected: the residual max(p - q, 0) = [0.25, 0, 0, 0] leaves token 0
    assert run(backend, [7, 2], [-1, 0], target, [0.99, 0.75], draft) == ([], [0])
    # q(x) = 0 and p(x) > 0: always accepted
    assert run(backend, [7, 1], [-1, 0], target, [0.0, 0.99], [[0.5, 0.0, 0.5, 0.0], [1, 0, 0, 0]]) == (
        [1],
        [1, 3],
    )


def test_invalid_children_are_skipped_without_using_their_uniform(backend):
    target = [[0.5, 0.5, 0.0, 0.0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    for bad_token in [-1, 4, 2**40]:
        # slot 1 invalid (skipped), slot 2 (token 1) accepted: 0.2 * 1 < 0.5
        assert run(backend, [0, bad_token, 1, 0], [-1, 0, 0, 0], target, [0.5, 0.99, 0.2, 0.99]) == (
            [2],
            [1, 1],
        )


def test_out_of_range_uniforms_never_pick_a_token_without_mass(backend):
    target = [[0.0, 0.5, 0.0, 0.25, 0.0]]
    for u0, token in [(1.0, 3), (float("nan"), 3), (2.0, 3), (-1.0, 1), (0.0, 1)]:
        assert run(backend, [0], [-1], target, [u0]) == ([], [token])


def test_nothing_left_of_p_samples_the_target_itself(backend):
    # u = 1 (outside [0, 1)) rejects the only token with mass: the residual is all zero.
    target = [[0.0, 0.5, 0.0], [0, 0, 1]]
    assert run(backend, [0, 1], [-1, 0], target, [0.3, 1.0]) == ([], [1])
    assert run(backend, [0, 1], [-1, 0], target, [0.3, 1.0], draft=[[0.0, 1.0, 0.0], [1, 0, 0]]) == ([], [1])


def test_invalid_probabilities_count_as_zero(backend):
    target = [[float("nan"), -1.0, float("inf"), 0.5, float("-inf")]]
    for u0 in [0.0, 0.5, 0.999]:
        assert run(backend, [0], [-1], target, [u0]) == ([], [3])
    assert run(backend, [0], [-1], [[float("nan"), 0.0]], [0.5]) == ([], [-1])  # no mass anywhere


@settings(max_examples=100, deadline=None)
@given(verify_sampling_inputs(dyadic=False))
def test_slots_with_invalid_tokens_behave_as_absent(inputs):
    V = inputs["target_probs"].shape[2]
    tokens = inputs["slot_tokens"].long()
    absent = {**inputs, "slot_parent": inputs["slot_parent"].masked_fill((tokens < 0) | (tokens >= V), -1)}
    assert_outputs_match(verify_sampling(**inputs), verify_sampling(**absent))


# -- shapes, strides, determinism, opcheck -----------------------------------------------------


@pytest.mark.parametrize("B", [0, 3])
@pytest.mark.parametrize("with_draft", [False, True])
def test_single_slot_and_empty_batch(backend, B, with_draft):
    target = rows(7, B).reshape(B, 1, V)
    uniforms = torch.rand(B, 1, generator=torch.Generator().manual_seed(0))
    outputs = backend.run(
        "verify_sampling",
        torch.zeros(B, 1, dtype=torch.long),
        torch.full((B, 1), -1),
        target,
        target.clone() if with_draft else None,
        uniforms,
    )
    assert_outputs_match(
        outputs,
        verify_sampling_ref(
            torch.zeros(B, 1, dtype=torch.long), torch.full((B, 1), -1), target, None, uniforms
        ),
    )
    assert outputs[0].shape == (B, 1) and outputs[1].shape == (B,) and torch.all(outputs[2] >= 0)


@settings(max_examples=50, deadline=None)
@given(verify_sampling_inputs(dyadic=False))
def test_noncontiguous_inputs(inputs):
    strided = {k: None if v is None else noncontiguous(v) for k, v in inputs.items()}
    assert_outputs_match(verify_sampling(**strided), verify_sampling_ref(**inputs))


# The kernels: test_kernel_strided_and_expanded_rows below, and tests/test_kernel_backends.py.
def test_expanded_inputs():
    """Broadcast views (stride 0), as the lossless tests use, read correctly."""
    inputs = tree_with_draft(seed=5)
    dense = {k: v.contiguous() for k, v in inputs.items()}
    assert_outputs_match(verify_sampling(**inputs), verify_sampling(**dense))


@pytest.mark.parametrize("name", INSTANCES)
def test_deterministic_and_batch_independent(name):
    inputs = INSTANCES[name][0](seed=4)
    first = verify_sampling(**inputs)
    assert_outputs_match(verify_sampling(**inputs), first)
    for b in range(0, SAMPLES, 4999):
        row = {k: None if v is None else v[b : b + 1] for k, v in inputs.items()}
        assert_outputs_match(verify_sampling(**row), tuple(t[b : b + 1] for t in first))


@pytest.mark.parametrize("with_draft", [False, True])
def test_opcheck(with_draft):
    g = torch.Generator().manual_seed(3)
    slot_parent = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, 9]], dtype=torch.int32)
    slot_tokens = torch.randint(0, V, (2, 4), generator=g)
    target = rows(1, 8).reshape(2, 4, V)
    draft = rows(2, 8, zeros=0.0).reshape(2, 4, V) if with_draft else None
    torch.library.opcheck(
        verify_sampling, (slot_tokens, slot_parent, target, draft, torch.rand(2, 4, generator=g))
    )


# -- argument checks (a tensor on another device: tests/test_kernel_backends.py) ---------------

GOOD = dict(
    slot_tokens=torch.zeros(2, 3, dtype=torch.long),
    slot_parent=torch.tensor([[-1, 0, 1], [-1, 0, 0]], dtype=torch.int32),
    target_probs=torch.full((2, 3, 4), 0.25),
    draft_probs=torch.full((2, 3, 4), 0.25),
    uniforms=torch.zeros(2, 3),
)
BAD = [
    ("slot_tokens", torch.zeros(2, 3), TypeError, "expected dtype Int or Long"),
    ("slot_tokens", torch.zeros(2, 3, 1, dtype=torch.long), ValueError, "expected a 2-D tensor"),
    ("slot_tokens", torch.zeros(2, 0, dtype=torch.long), ValueError, "expected M >= 1 slots"),
    ("slot_parent", torch.zeros(2, 3, dtype=torch.float64), TypeError, "expected dtype Int or Long"),
    ("slot_parent", torch.zeros(3, dtype=torch.long), ValueError, "expected a 2-D tensor"),
    ("slot_parent", torch.zeros(3, 3, dtype=torch.long), ValueError, r"expected size 2 \(B\)"),
    ("slot_parent", torch.zeros(2, 2, dtype=torch.long), ValueError, r"expected size 3 \(M\)"),
    ("target_probs", torch.full((2, 3, 4), 0.25, dtype=torch.float64), TypeError, "expected dtype Float"),
    ("target_probs", torch.full((2, 3, 4), 0.25, dtype=torch.float16), TypeError, "expected dtype Float"),
    ("target_probs", torch.zeros(2, 3), ValueError, "expected a 3-D tensor"),
    ("target_probs", torch.zeros(1, 3, 4), ValueError, r"expected size 2 \(B\)"),
    ("target_probs", torch.zeros(2, 4, 4), ValueError, r"expected size 3 \(M\)"),
    ("target_probs", torch.zeros(2, 3, 0), ValueError, "expected a vocabulary of V >= 1"),
    ("draft_probs", torch.zeros(2, 3, 4, dtype=torch.bfloat16), TypeError, "expected dtype Float"),
    ("draft_probs", torch.zeros(2, 3, 4, 1), ValueError, "expected a 3-D tensor"),
    ("draft_probs", torch.zeros(3, 3, 4), ValueError, r"expected size 2 \(B\)"),
    ("draft_probs", torch.zeros(2, 2, 4), ValueError, r"expected size 3 \(M\)"),
    ("draft_probs", torch.zeros(2, 3, 5), ValueError, r"expected size 4 \(V, as target_probs\)"),
    ("uniforms", torch.zeros(2, 3, dtype=torch.float64), TypeError, "expected dtype Float"),
    ("uniforms", torch.zeros(2, 3, 1), ValueError, "expected a 2-D tensor"),
    ("uniforms", torch.zeros(1, 3), ValueError, r"expected size 2 \(B\)"),
    ("uniforms", torch.zeros(2, 4), ValueError, r"expected size 3 \(M\)"),
]


@pytest.mark.parametrize("arg,value,error,message", BAD)
def test_bad_arguments(backend, arg, value, error, message):
    args = to_device({**GOOD, arg: value}, backend.device)
    # The backend's kernel itself, which checks its arguments (not the fake implementation).
    with pytest.raises(error, match=f"verify_sampling: argument '{arg}': {message}"):
        backend.kernel("verify_sampling")(**args)


# -- the kernel against the CPU op --------------------------------------------------------------


def noncontiguous_inputs(inputs):
    return {k: None if v is None else noncontiguous(v) for k, v in inputs.items()}


@settings(max_examples=200, deadline=None)
@given(verify_sampling_inputs(dyadic=True))
def test_kernel_matches_cpu(kernel_backend, inputs):
    assert_matches_cpu(kernel_backend, "verify_sampling", inputs)
    assert_matches_cpu(kernel_backend, "verify_sampling", noncontiguous_inputs(inputs))


@pytest.mark.parametrize("V", SAMPLING_VOCABS)
@pytest.mark.parametrize("draft", [False, True])
def test_kernel_vocabulary_boundaries(kernel_backend, V, draft):
    for inputs in [
        sampling_block_inputs(3, 9, V, seed=V, draft=draft),
        sampling_block_inputs(2, 9, V, seed=V + 1, draft=draft, normalised=False),
        sampling_block_inputs(3, 9, V, seed=V + 2, draft=draft, support=6),
    ]:
        assert_matches_cpu(kernel_backend, "verify_sampling", inputs)


@pytest.mark.parametrize("M", [33, 257])
@pytest.mark.parametrize("draft", [False, True])
def test_kernel_many_slots(kernel_backend, M, draft):
    assert_matches_cpu(
        kernel_backend, "verify_sampling", sampling_block_inputs(2, M, 40, seed=M, draft=draft)
    )
    assert_matches_cpu(
        kernel_backend, "verify_sampling", sampling_block_inputs(2, M, 300, seed=M, draft=draft, support=5)
    )


@pytest.mark.parametrize("V", [5, 129, 4096, 4099, 9000])
def test_kernel_cdf_boundaries(kernel_backend, V):
    """u0 * sum(p) exactly equal to a partial sum of p (normalised dyadic rows, so sum(p) = 1
    and u0 = the partial sum): the sample is the next token with mass, not this one, wherever
    the partial sum falls relative to the threads' chunks and the tiles."""
    g = torch.Generator().manual_seed(V)
    B = 8
    target = (
        peaked_probs((B, 1, V), 12, g, normalised=True) if V > 200 else random_probs((B, 1, V), g, True, True)
    )
    cumsum = target[:, 0].cumsum(-1)
    u0 = torch.empty(B, 1)
    for b in range(B):
        below_one = torch.nonzero((target[b, 0] > 0) & (cumsum[b] < 1)).flatten()
        u0[b, 0] = (
            cumsum[b, below_one[int(torch.randint(0, len(below_one), (1,), generator=g))]]
            if len(below_one)
            else 0.5
        )
    inputs = dict(
        slot_tokens=torch.zeros(B, 1, dtype=torch.long),
        slot_parent=torch.full((B, 1), -1),
        target_probs=target,
        draft_probs=None,
        uniforms=u0,
    )
    sample = assert_matches_cpu(kernel_backend, "verify_sampling", inputs)[2][:, 0].cpu()
    assert torch.all(cumsum[torch.arange(B), sample] > u0[:, 0])  # past the tie, not on it


def test_kernel_bench_shape(kernel_backend):
    """A batch of 17-slot trees over a 32000-token vocabulary (8 tiles per pass)."""
    for seed, draft in [(0, True), (1, False)]:
        inputs = sampling_block_inputs(4, 17, 32000, seed=seed, draft=draft, support=8)
        assert_matches_cpu(kernel_backend, "verify_sampling", inputs)


def test_kernel_strided_and_expanded_rows(kernel_backend):
    """Rows with stride 2 (no vector loads), rows broadcast over the batch (stride 0), and
    contiguous rows that start off a 16-byte boundary (V = 4099)."""
    inputs = sampling_block_inputs(3, 6, 4099, seed=5, draft=True)
    assert_matches_cpu(kernel_backend, "verify_sampling", noncontiguous_inputs(inputs))
    expanded = dict(
        inputs,
        target_probs=inputs["target_probs"][:1].expand(3, 6, 4099),
        draft_probs=inputs["draft_probs"][:, :1].expand(3, 6, 4099),
    )
    assert_matches_cpu(kernel_backend, "verify_sampling", expanded)


def single_row(target, u0, draft=None, tokens=(0,), parents=(-1,), uniforms=()):
    M = len(tokens)
    return dict(
        slot_tokens=torch.tensor([tokens]),
        slot_parent=torch.tensor([parents]),
        target_probs=torch.tensor(target, dtype=torch.float32).reshape(1, M, -1),
        draft_probs=None if draft is None else torch.tensor(draft, dtype=torch.float32).reshape(1, M, -1),
        uniforms=torch.tensor([[u0, *uniforms]], dtype=torch.float32),
    )


def test_kernel_edge_values(kernel_backend):
    def check(inputs):
        assert_matches_cpu(kernel_backend, "verify_sampling", inputs)

    # Out-of-range uniforms never pick a token without mass.
    for u0 in [1.0, float("nan"), 2.0, -1.0, 0.0, 0.999]:
        check(single_row([[0.0, 0.5, 0.0, 0.25, 0.0]], u0))
    # Invalid probabilities count as zero; no mass anywhere gives -1.
    nan, inf = float("nan"), float("inf")
    check(single_row([[nan, -1.0, inf, 0.5, -inf]], 0.5))
    check(single_row([[nan, 0.0]], 0.5))
    # Nothing left of p after a rejection (u = 1): sample from the target itself.
    for draft in [None, [[0.0, 1.0, 0.0], [1, 0, 0]]]:
        check(
            single_row(
                [[0.0, 0.5, 0.0], [0, 0, 1]],
                0.3,
                draft=draft,
                tokens=(0, 1),
                parents=(-1, 0),
                uniforms=(1.0,),
            )
        )
    # Huge and invalid child tokens are skipped.
    for bad in [-1, 4, 2**40]:
        check(
            single_row(
                [[0.5, 0.5, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]],
                0.5,
                tokens=(0, bad, 1, 0),
                parents=(-1, 0, 0, 0),
                uniforms=(0.99, 0.2, 0.99),
            )
        )


def test_kernel_outputs_are_fully_written(kernel_backend, poisoned_empty):
    for seed, draft in [(1, True), (2, False)]:
        assert_matches_cpu(
            kernel_backend, "verify_sampling", sampling_block_inputs(5, 12, 300, seed=seed, draft=draft)
        )


def test_kernel_single_slot_and_empty_batch(kernel_backend):
    for B in [0, 3]:
        g = torch.Generator().manual_seed(B)
        for draft in [False, True]:
            target = random_probs((B, 1, 7), g, dyadic=True, normalised=True)
            inputs = dict(
                slot_tokens=torch.zeros(B, 1, dtype=torch.long),
                slot_parent=torch.full((B, 1), -1),
                target_probs=target,
                draft_probs=target.clone() if draft else None,
                uniforms=torch.rand(B, 1, generator=g),
            )
            assert_matches_cpu(kernel_backend, "verify_sampling", inputs)


# V of a 128k vocabulary and 64 requests over 32000: too large for the emulator.
@pytest.mark.parametrize("B, M, V", [(4, 17, 32000), (8, 17, 128256), (64, 9, 32000)])
@pytest.mark.parametrize("draft", [False, True])
def test_cuda_large(cuda, B, M, V, draft):
    assert_matches_cpu(
        cuda, "verify_sampling", sampling_block_inputs(B, M, V, seed=B, draft=draft, support=8)
    )


def test_emulated_reverse_schedule(emulated, monkeypatch):
    """The kernel does not depend on the order threads run between barriers (no races)."""
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    for seed, draft in [(3, True), (4, False)]:
        assert_matches_cpu(
            emulated, "verify_sampling", sampling_block_inputs(3, 12, 1000, seed=seed, draft=draft)
        )
