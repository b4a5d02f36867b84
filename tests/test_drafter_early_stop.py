"""ModelDrafter's early stop: fewer draft levels when deeper ones cannot matter; outputs unchanged."""

import pytest
import torch

import tetris_ext  # noqa: F401  (registers the ops)
from tetris_ext.decoding import generate
from tetris_ext.drafters import ModelDrafter
from tetris_ext.models import noisy_copy, tiny_llama
from tetris_ext.policies import Autoregressive, Tetris, ThresholdSD

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

VOCAB = 64


class R:
    def __init__(self, index, tokens):
        self.index, self.tokens = index, tokens


@pytest.fixture(scope="module")
def pair():
    target = tiny_llama(vocab_size=VOCAB)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (5, 9, 3, 12, 1, 7)]
    return target, noisy_copy(target, 0.05, seed=1), prompts


def _count_feeds(drafter):
    """Wrap the drafter's feed forwards (every draft level after the first) with a counter."""
    calls = []
    inner = drafter._feed

    def counted(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    drafter._feed = counted
    return calls


def _run(target, draft, prompts, policy, **drafter_options):
    drafter = ModelDrafter(draft, 4, **drafter_options)
    feeds = _count_feeds(drafter)
    result = generate(target, prompts, policy, drafter, max_new_tokens=12, max_batch_size=4)
    return result, len(feeds)


@pytest.mark.parametrize("tree_width", [1, 2])
@pytest.mark.parametrize(
    "make_policy, floor",
    [
        (lambda: ThresholdSD(0.7, 4), 0.3),  # ThresholdSD(t) verifies while the path probability >= 1 - t
        (lambda: Tetris(2, 2, min_prob=0.4), 0.4),
    ],
)
def test_a_floor_at_the_policys_own_floor_selects_the_same_for_fewer_draft_forwards(
    pair, make_policy, floor, tree_width
):
    target, draft, prompts = pair
    full, full_feeds = _run(target, draft, prompts, make_policy(), tree_width=tree_width)
    cut, cut_feeds = _run(target, draft, prompts, make_policy(), tree_width=tree_width, min_path_prob=floor)
    assert cut.tokens == full.tokens
    # The same candidates were verified and accepted at every step ...
    for key in ("verified", "accepted", "generated"):
        assert [s[key] for s in cut.stats["per_step"]] == [s[key] for s in full.stats["per_step"]]
    # ... for fewer draft forwards (the floor is met by some rows, not by all, at every level).
    assert cut_feeds < full_feeds
    assert cut.stats["drafted_tokens"] < full.stats["drafted_tokens"]


@pytest.mark.parametrize("tree_width", [1, 2])
@pytest.mark.parametrize(
    "options",
    [dict(min_mean_path_prob=0.6), dict(min_path_prob=0.9), dict(min_path_prob=0.3, min_mean_path_prob=0.4)],
)
def test_stopping_early_keeps_greedy_decoding_exact(pair, options, tree_width):
    target, draft, prompts = pair
    reference = generate(target, prompts, Autoregressive(), max_new_tokens=12, max_batch_size=4).tokens
    result, _ = _run(target, draft, prompts, Tetris(2, 2), tree_width=tree_width, **options)
    assert result.tokens == reference


@pytest.mark.parametrize("tree_width", [1, 2])
def test_the_cut_levels_are_not_drafted(pair, tree_width):
    target, draft, _ = pair
    requests = [R(0, [1, 2, 3, 4]), R(1, [5, 6])]
    sizes = {}
    for name, options in {
        "none": {},
        "never": dict(min_mean_path_prob=0.0),
        "always": dict(min_mean_path_prob=1.0),
    }.items():
        drafter = ModelDrafter(draft, 6, tree_width=tree_width, **options)
        drafter.add([R(r.index, list(r.tokens)) for r in requests])
        proposal = drafter.propose(requests, num_draft=6)
        sizes[name] = proposal.num_candidates
        if name == "none":
            reference = proposal
        if name == "never":
            assert torch.equal(proposal.tokens, reference.tokens)
            torch.testing.assert_close(proposal.cum_logprobs, reference.cum_logprobs)
    assert sizes == {"none": 6, "never": 6, "always": tree_width}  # only the first level


def test_a_floor_above_the_policys_drops_candidates_it_would_verify(pair):
    target, draft, prompts = pair
    full, _ = _run(target, draft, prompts, ThresholdSD(0.9, 4))
    cut, _ = _run(target, draft, prompts, ThresholdSD(0.9, 4), min_path_prob=0.5)  # the policy's floor is 0.1
    assert cut.tokens == full.tokens  # still exact ...
    assert cut.stats["verified_tokens"] < full.stats["verified_tokens"]  # ... but it verifies less


def test_mean_rule_reads_the_mean_over_rows():
    drafter = ModelDrafter(tiny_llama(vocab_size=VOCAB), 4, min_mean_path_prob=0.5)
    assert drafter._keep_drafting(torch.tensor([[0.9], [0.2]]).log())  # mean 0.55
    assert not drafter._keep_drafting(torch.tensor([[0.6], [0.3]]).log())  # mean 0.45
    # Tree rows: the newest nodes are mutually exclusive, so their probabilities add (at most 1).
    assert drafter._keep_drafting(torch.tensor([[0.3, 0.3], [0.3, 0.2]]).log())  # (0.6 + 0.5) / 2
    floor = ModelDrafter(tiny_llama(vocab_size=VOCAB), 4, min_path_prob=0.5)
    assert floor._keep_drafting(torch.tensor([[0.5], [0.1]]).log())
    assert not floor._keep_drafting(torch.tensor([[0.3, 0.3], [0.1, 0.4]]).log())


@pytest.mark.parametrize("options", [dict(min_path_prob=1.5), dict(min_mean_path_prob=-0.1)])
def test_stop_arguments_are_checked(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        ModelDrafter(tiny_llama(vocab_size=VOCAB), 4, **options)
