"""verify_sampling on CPU: exact agreement with the reference in tests/refs/verify.py, and
losslessness: the tokens it outputs are distributed as the target says (chi-square tests with
enough samples that a wrong residual fails them; the negative controls show it)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from scipy.stats import chisquare

import tetris_ext  # noqa: F401  (registers torch.ops.tetris)
from refs.backends import assert_outputs_match
from refs.tree_mask import noncontiguous
from refs.verify import verify_sampling_inputs, verify_sampling_ref

verify_sampling = torch.ops.tetris.verify_sampling.default
SETTINGS = settings(max_examples=200, deadline=None)



@SETTINGS
@given(verify_sampling_inputs(dyadic=False))
def test_matches_reference_bit_for_bit(inputs):
    assert_outputs_match(verify_sampling(**inputs), verify_sampling_ref(**inputs))


@SETTINGS
@given(verify_sampling_inputs(dyadic=True))
def test_matches_reference_on_dyadic_inputs(inputs):
    assert_outputs_match(verify_sampling(**inputs), verify_sampling_ref(**inputs))


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
def test_output_follows_the_target(name, seed):
    inputs = INSTANCES[name][0](seed)
    pvalues = lossless_pvalues(inputs, verify_sampling(**inputs))
    assert len(pvalues) >= 2  # the root and at least one accepted slot were tested
    assert min(pvalues) > PASS_P, pvalues


def test_output_follows_an_unnormalised_target_with_draft():
    inputs = tree_with_draft(seed=3, target_scale=0.5)
    assert min(lossless_pvalues(inputs, verify_sampling(**inputs))) > PASS_P


@pytest.mark.parametrize("name", INSTANCES)
def test_negative_control_a_wrong_residual_fails(name):
    """The same test on the reference with a deliberate mistake in its residual (for trees
    with draft: the literal unnormalised rule u * q(x) < p(x), p <- max(p - q, 0), which is
    exact only for one child per slot) fails by a wide margin."""
    make, mistake = INSTANCES[name]
    inputs = make(0)
    assert min(lossless_pvalues(inputs, verify_sampling_ref(**inputs, mistake=mistake))) < FAIL_P


# -- the rules on small worked examples --------------------------------------------------------


def run(tokens, parents, target, uniforms, draft=None):
    as_probs = lambda rows: torch.tensor(rows, dtype=torch.float32)[None]  # noqa: E731
    accepted_slots, num_accepted, out_tokens = verify_sampling(
        torch.tensor([tokens]),
        torch.tensor([parents]),
        as_probs(target),
        None if draft is None else as_probs(draft),
        torch.tensor([uniforms], dtype=torch.float32),
    )
    n = int(num_accepted[0])
    return accepted_slots[0, :n].tolist(), out_tokens[0, : n + 1].tolist()


def test_deterministic_children_example():
    target = [[0.5, 0.25, 0.25, 0.0], [1, 0, 0, 0], [0.0, 0.0, 0.5, 0.5]]
    # slot 1 (token 1): 0.9 * 1 >= 0.25, rejected, p(1) <- 0, sum(p) = 0.75;
    # slot 2 (token 0): 0.5 * 0.75 < 0.5, accepted; slot 2 is a leaf: sample its target row
    # with u0 = 0.6: cumsum [0, 0, 0.5, 1] first exceeds 0.6 at token 3.
    assert run([7, 1, 0], [-1, 0, 0], target, [0.6, 0.9, 0.5]) == ([2], [0, 3])
    # slot 2 rejected too (0.7 * 0.75 >= 0.5): p(0) <- 0 leaves [0, 0, 0.25, 0]: token 2.
    assert run([7, 1, 0], [-1, 0, 0], target, [0.6, 0.9, 0.7]) == ([], [2])


def test_drafted_child_example():
    target = [[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0]]
    draft = [[0.25, 0.25, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]]
    # token 2: accepted when u * q(2) = u * 0.5 < p(2) = 0.25
    assert run([7, 2], [-1, 0], target, [0.0, 0.25], draft) == ([1], [2, 3])
    # rejected: the residual max(p - q, 0) = [0.25, 0, 0, 0] leaves token 0
    assert run([7, 2], [-1, 0], target, [0.99, 0.75], draft) == ([], [0])
    # q(x) = 0 and p(x) > 0: always accepted
    assert run([7, 1], [-1, 0], target, [0.0, 0.99], [[0.5, 0.0, 0.5, 0.0], [1, 0, 0, 0]]) == ([1], [1, 3])


def test_invalid_children_are_skipped_without_using_their_uniform():
    target = [[0.5, 0.5, 0.0, 0.0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    for bad_token in [-1, 4, 2**40]:
        # slot 1 invalid (skipped), slot 2 (token 1) accepted: 0.2 * 1 < 0.5
        assert run([0, bad_token, 1, 0], [-1, 0, 0, 0], target, [0.5, 0.99, 0.2, 0.99]) == ([2], [1, 1])


def test_out_of_range_uniforms_never_pick_a_token_without_mass():
    target = [[0.0, 0.5, 0.0, 0.25, 0.0]]
    for u0, token in [(1.0, 3), (float("nan"), 3), (2.0, 3), (-1.0, 1), (0.0, 1)]:
        assert run([0], [-1], target, [u0]) == ([], [token])


def test_nothing_left_of_p_samples_the_target_itself():
    # u = 1 (outside [0, 1)) rejects the only token with mass: the residual is all zero.
    target = [[0.0, 0.5, 0.0], [0, 0, 1]]
    assert run([0, 1], [-1, 0], target, [0.3, 1.0]) == ([], [1])
    assert run([0, 1], [-1, 0], target, [0.3, 1.0], draft=[[0.0, 1.0, 0.0], [1, 0, 0]]) == ([], [1])


def test_invalid_probabilities_count_as_zero():
    target = [[float("nan"), -1.0, float("inf"), 0.5, float("-inf")]]
    for u0 in [0.0, 0.5, 0.999]:
        assert run([0], [-1], target, [u0]) == ([], [3])
    assert run([0], [-1], [[float("nan"), 0.0]], [0.5]) == ([], [-1])  # no mass anywhere


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
def test_single_slot_and_empty_batch(B, with_draft):
    target = rows(7, B).reshape(B, 1, V)
    uniforms = torch.rand(B, 1, generator=torch.Generator().manual_seed(0))
    outputs = verify_sampling(
        torch.zeros(B, 1, dtype=torch.long), torch.full((B, 1), -1), target, target.clone() if with_draft else None, uniforms
    )
    assert_outputs_match(outputs, verify_sampling_ref(torch.zeros(B, 1, dtype=torch.long), torch.full((B, 1), -1), target, None, uniforms))
    assert outputs[0].shape == (B, 1) and outputs[1].shape == (B,) and torch.all(outputs[2] >= 0)


@settings(max_examples=50, deadline=None)
@given(verify_sampling_inputs(dyadic=False))
def test_noncontiguous_inputs(inputs):
    strided = {k: None if v is None else noncontiguous(v) for k, v in inputs.items()}
    assert_outputs_match(verify_sampling(**strided), verify_sampling_ref(**inputs))


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
    torch.library.opcheck(verify_sampling, (slot_tokens, slot_parent, target, draft, torch.rand(2, 4, generator=g)))


# -- argument checks ---------------------------------------------------------------------------

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
    ("slot_parent", torch.zeros(2, 3, dtype=torch.long, device="meta"), ValueError, "expected a tensor on cpu"),
    ("target_probs", torch.full((2, 3, 4), 0.25, dtype=torch.float64), TypeError, "expected dtype Float"),
    ("target_probs", torch.full((2, 3, 4), 0.25, dtype=torch.float16), TypeError, "expected dtype Float"),
    ("target_probs", torch.zeros(2, 3), ValueError, "expected a 3-D tensor"),
    ("target_probs", torch.zeros(1, 3, 4), ValueError, r"expected size 2 \(B\)"),
    ("target_probs", torch.zeros(2, 4, 4), ValueError, r"expected size 3 \(M\)"),
    ("target_probs", torch.zeros(2, 3, 0), ValueError, "expected a vocabulary of V >= 1"),
    ("target_probs", torch.zeros(2, 3, 4, device="meta"), ValueError, "expected a tensor on cpu"),
    ("draft_probs", torch.zeros(2, 3, 4, dtype=torch.bfloat16), TypeError, "expected dtype Float"),
    ("draft_probs", torch.zeros(2, 3, 4, 1), ValueError, "expected a 3-D tensor"),
    ("draft_probs", torch.zeros(3, 3, 4), ValueError, r"expected size 2 \(B\)"),
    ("draft_probs", torch.zeros(2, 2, 4), ValueError, r"expected size 3 \(M\)"),
    ("draft_probs", torch.zeros(2, 3, 5), ValueError, r"expected size 4 \(V, as target_probs\)"),
    ("draft_probs", torch.zeros(2, 3, 4, device="meta"), ValueError, "expected a tensor on cpu"),
    ("uniforms", torch.zeros(2, 3, dtype=torch.float64), TypeError, "expected dtype Float"),
    ("uniforms", torch.zeros(2, 3, 1), ValueError, "expected a 2-D tensor"),
    ("uniforms", torch.zeros(1, 3), ValueError, r"expected size 2 \(B\)"),
    ("uniforms", torch.zeros(2, 4), ValueError, r"expected size 3 \(M\)"),
    ("uniforms", torch.zeros(2, 3, device="meta"), ValueError, "expected a tensor on cpu"),
]


@pytest.mark.parametrize("arg,value,error,message", BAD)
def test_bad_arguments(arg, value, error, message):
    args = {**GOOD, arg: value}
    # The CPU kernel itself, so that a meta tensor reaches its device check (not the fake).
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    with pytest.raises(error, match=f"verify_sampling: argument '{arg}': {message}"):
        verify_sampling.redispatch(keys, *args.values())
