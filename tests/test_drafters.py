"""Drafters: n-gram matching and its online calibration; model drafting of chains and trees."""

import math

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.calibration import AcceptanceCalibration, brier_score, reliability
from tetris_ext.decoding import generate
from tetris_ext.drafters import ModelDrafter, NgramDrafter, ngram_match, transition_agreements
from tetris_ext.estimators import PRIOR, PRIOR_WITH_CLASSES, NgramLogistic
from tetris_ext.models import tiny_llama
from tetris_ext.policies import Tetris
from tetris_ext.proposal import Outcome

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class R:  # the two attributes drafters read from a request
    def __init__(self, index, tokens):
        self.index, self.tokens = index, list(tokens)


# ------------------------------------------------------------------------------------------
# n-gram


def test_ngram_match_takes_the_longest_suffix_and_its_most_recent_occurrence():
    #          0  1  2  3  4  5  6  7  8  9 10 11
    context = [1, 2, 3, 9, 1, 2, 3, 4, 5, 7, 2, 3]
    match = ngram_match(context, max_draft=3, max_ngram=3)
    # Suffix [7, 2, 3] never occurred; [2, 3] occurred at 1 and 5; the most recent (5) continues 4, 5, 7.
    assert match.tokens == [4, 5, 7]
    lengths, occurrences, agreement, depth, transition = zip(*match.features)
    assert lengths == (2.0, 2.0, 2.0) and occurrences == (2.0, 2.0, 2.0) and depth == (1.0, 2.0, 3.0)
    # After [2, 3]: 9 (at 3) and 4 (at 7): half agree on 4; then 1 vs 5, then 2 vs 7.
    assert agreement == (0.5, 0.5, 0.5)
    # Transitions: 3 is followed by 9 and 4 (half 3 -> 4); 4 only by 5, 5 only by 7.
    assert transition == (0.5, 1.0, 1.0)


def test_transition_agreements():
    #          0  1  2  3  4  5  6  7
    context = [1, 2, 1, 3, 1, 2, 4, 1]
    # Root 1 is followed by 2, 3, 2 (the last 1 by nothing): 1 -> 2 in 2 of 3; 2 -> 4 in 1 of 2;
    # 4 -> 9 never; 9 never occurs: 0.
    assert transition_agreements(context, [2, 4, 9, 5]) == [2 / 3, 0.5, 0.0, 0.0]
    assert transition_agreements(context, []) == []


def test_ngram_match_edge_cases():
    assert ngram_match([5], 4).tokens == []
    assert ngram_match([1, 2, 3, 4], 4).tokens == []  # nothing repeats
    assert ngram_match([1, 2, 1], 4, min_ngram=2).tokens == []
    assert ngram_match([1, 2, 1, 2], 0).tokens == []


def test_ngram_match_copies_past_the_contexts_end_as_an_overlapping_copy():
    """A suffix that recurs every p tokens drafts the period again (LZ77's overlapping copy)
    instead of stopping after p tokens; the copied tokens' agreement counts the most recent
    occurrence's own token."""
    assert ngram_match([7, 7], 4).tokens == [7, 7, 7, 7]
    #          0  1  2  3  4  5
    context = [1, 2, 1, 2, 1, 2]
    match = ngram_match(context, 5, max_ngram=2)
    # [1, 2] last occurred at 2-3, followed by 1, 2 (positions 4, 5); then the copy repeats them.
    assert match.tokens == [1, 2, 1, 2, 1]
    lengths, occurrences, agreement, depth, _ = zip(*match.features)
    assert lengths == (2.0,) * 5 and occurrences == (2.0,) * 5 and depth == (1.0, 2.0, 3.0, 4.0, 5.0)
    # Occurrences at 0 and 2: at depths 1-2 both followers are in the context and agree; at
    # depth 3 only the first one's (position 4: 1) and the copy's own; at 4-5 the copy alone.
    assert agreement == (1.0, 1.0, 1.0, 1.0, 1.0)
    disagreeing = ngram_match([1, 2, 5, 1, 2, 1, 2], 4, max_ngram=2)
    # [1, 2] at 0 (followed by 5, 1, 2, 1) and 3 (followed by 1, 2): the copy drafts 1, 2, 1, 2;
    # the first occurrence disagrees at every depth, the copy's own token agrees at 3 and 4.
    assert disagreeing.tokens == [1, 2, 1, 2]
    assert [f[2] for f in disagreeing.features] == [0.5, 0.5, 0.5, 0.5]


def test_ngram_drafter_defaults_to_the_batched_logistic_estimator():
    """The recommended estimator is the default (bench/fixed_budget_estimates.py): without a
    tokenizer it has no token classes and the prior fitted without them; drafters do not share
    one; the old calibration is still there by explicit argument."""
    drafter = NgramDrafter(4)
    assert type(drafter.calibration) is NgramLogistic
    assert drafter.calibration.token_classes is None
    assert drafter.calibration.prior.tolist() == list(PRIOR.weights)
    assert NgramDrafter(4).calibration is not drafter.calibration
    old = AcceptanceCalibration()
    assert NgramDrafter(4, calibration=old).calibration is old


def test_ngram_drafter_with_tokenizer_uses_its_token_classes():
    class Tokenizer:  # what token_class_table reads of a Hugging Face tokenizer
        pieces = ["\u2581", ",", "\u2581def", "x1", "\u00e9!"]

        def __len__(self):
            return len(self.pieces)

        def convert_ids_to_tokens(self, ids):
            return [self.pieces[i] for i in ids]

    drafter = NgramDrafter.with_tokenizer(Tokenizer(), 5, max_ngram=3, vocab_size=7)
    assert (drafter.max_draft, drafter.max_ngram, drafter.min_ngram) == (5, 3, 1)
    estimator = drafter.calibration
    assert type(estimator) is NgramLogistic
    # whitespace, punctuation, word, word, other; ids past the tokenizer: other
    assert estimator.token_classes.tolist() == [0, 1, 2, 2, 3, 3, 3]
    assert estimator.prior.tolist() == list(PRIOR_WITH_CLASSES.weights)
    requests = [R(0, [1, 2, 3, 1, 2])]
    drafter.add(requests)
    assert drafter.propose(requests, num_draft=3).tokens.tolist() == [[3, 1, 2]]


BOTH = {"NgramLogistic (default)": lambda: None, "AcceptanceCalibration": AcceptanceCalibration}


def tracked(calibration) -> set:
    """The request ids a calibration holds state for."""
    if isinstance(calibration, AcceptanceCalibration):
        return set(calibration.request_bias)
    return calibration.request_ids


@pytest.mark.parametrize("make", BOTH.values(), ids=BOTH.keys())
def test_ngram_drafter_proposal_layout(make):
    drafter = NgramDrafter(4, calibration=make())
    requests = [R(0, [1, 2, 3, 1, 2]), R(1, [4, 5, 6]), R(2, [8, 8, 8, 8])]
    proposal = drafter.propose(requests, num_draft=3)
    assert proposal.tokens.tolist() == [[3, 1, 2], [-1, -1, -1], [8, 8, 8]]
    assert proposal.parents is None and proposal.draft_probs is None
    assert proposal.features.shape == (3, 3, 5)
    valid = proposal.tokens >= 0
    assert (
        torch.isinf(proposal.token_logprobs[~valid]).all()
        and torch.isinf(proposal.cum_logprobs[~valid]).all()
    )
    assert (proposal.token_logprobs[valid] < 0).all()
    torch.testing.assert_close(proposal.cum_logprobs[0], proposal.token_logprobs[0].cumsum(0))
    # The same raw features give the same probabilities through the calibration.
    calibration = drafter.calibration
    if isinstance(calibration, AcceptanceCalibration):
        again = calibration.predict(proposal.features[0], 0).log().float()
    else:  # the batched estimator also reads the tokens and their roots (the last tokens)
        roots = torch.tensor([r.tokens[-1] for r in requests])
        again = (
            calibration.predict_batch(proposal.features, [0, 1, 2], proposal.tokens, roots)[0].log().float()
        )
    torch.testing.assert_close(again, proposal.token_logprobs[0])


def test_calibration_learns_globally_and_per_request():
    calibration = AcceptanceCalibration()
    features = torch.tensor([[3.0, 2.0, 1.0, 1.0]] * 4)
    before = calibration.predict(features[:1], 0).item()
    for _ in range(30):
        calibration.update(features, 0, torch.tensor([True] * 4))  # request 0's drafts always hold
        calibration.update(features, 1, torch.tensor([False] * 4))  # request 1's always fail
    good, bad, fresh = (calibration.predict(features[:1], r).item() for r in (0, 1, 2))
    assert good > before and bad < fresh < good
    assert 0.02 <= bad and good <= 0.98  # clamped
    assert calibration.updates == 240


def test_calibration_is_deterministic_for_replay():
    def run():
        calibration = AcceptanceCalibration()
        g = torch.Generator().manual_seed(0)
        for step in range(20):
            features = torch.rand(5, 4, generator=g) * torch.tensor([4.0, 5.0, 1.0, 6.0])
            calibration.update(features, step % 3, torch.rand(5, generator=g) < 0.5)
        return calibration.predict(torch.tensor([[2.0, 1.0, 0.5, 2.0]]), 1)

    assert torch.equal(run(), run())


@pytest.mark.parametrize("make", BOTH.values(), ids=BOTH.keys())
def test_ngram_drafter_update_learns_only_from_tested_candidates(make):
    drafter = NgramDrafter(4, calibration=make())
    requests = [R(0, [1, 2, 3, 1, 2])]
    proposal = drafter.propose(requests, num_draft=3)
    selected = torch.tensor([[True, True, False]])
    accepted = torch.tensor([[False, False, False]])  # the first is rejected: the second untested
    drafter.update(requests, proposal, Outcome(selected, accepted, torch.full((1, 3), -1)))
    assert drafter.calibration.updates == 1


@pytest.mark.parametrize("make", BOTH.values(), ids=BOTH.keys())
def test_ngram_drafter_forgets_the_requests_that_leave(make):
    drafter = NgramDrafter(4, calibration=make())
    requests = [R(7, [1, 2, 3, 1, 2]), R(8, [4, 5, 4, 5]), R(9, [6, 6, 6])]
    drafter.add(requests)
    proposal = drafter.propose(requests, num_draft=2)
    selected = proposal.tokens >= 0
    accepted = torch.zeros_like(selected)
    drafter.update(requests, proposal, Outcome(selected, accepted, torch.full((3, 2), -1)))
    assert tracked(drafter.calibration) == {7, 8, 9}
    drafter.keep([2, 0])  # request 8 left; the rows are now 9, 7
    assert tracked(drafter.calibration) == {7, 9}
    drafter.keep([0])
    assert tracked(drafter.calibration) == {9}
    drafter.add([R(10, [1, 1])])
    drafter.keep([1])  # rows were 9, 10
    assert tracked(drafter.calibration) == set()


@pytest.mark.parametrize("make", BOTH.values(), ids=BOTH.keys())
def test_a_reused_ngram_drafter_starts_each_run_without_request_state(model, make):
    # Every generate call numbers its prompts from 0: leftover state (an offset, a running
    # rate, a transition memory) would be applied to another prompt of the next call.
    drafter = NgramDrafter(4, calibration=make())
    prompts = [[1, 2, 3, 1, 2, 3, 1], [4, 5, 4, 5, 4]]
    generate(model, prompts, Tetris(2, 1), drafter, max_new_tokens=8, max_batch_size=1)
    assert drafter.calibration.updates > 0 and tracked(drafter.calibration) == set()


def test_brier_and_reliability():
    predicted = torch.tensor([0.95, 0.95, 0.15, 0.15], dtype=torch.float64)
    observed = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    assert brier_score(predicted, observed) == pytest.approx((0.0025 + 0.0025 + 0.0225 + 0.7225) / 4)
    table = reliability(predicted, observed, bins=10)
    assert table[9]["count"] == 2 and table[9]["observed"] == 1.0
    assert table[1]["count"] == 2 and table[1]["observed"] == 0.5
    assert math.isnan(brier_score(torch.zeros(0), torch.zeros(0)))


# ------------------------------------------------------------------------------------------
# model drafting


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=32, seed=5)


def _greedy(model, tokens, n):
    out = model.generate(
        torch.tensor([tokens]),
        attention_mask=torch.ones(1, len(tokens), dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(tokens) :].tolist()


def test_model_drafter_chain_is_the_draft_models_greedy_continuation(model):
    requests = [R(0, [1, 2, 3, 4]), R(1, [5]), R(2, [6, 7, 8, 9, 10, 11])]
    drafter = ModelDrafter(model, max_draft=4)
    drafter.add(requests)
    proposal = drafter.propose(requests, num_draft=4)
    for b, r in enumerate(requests):
        assert proposal.tokens[b].tolist() == _greedy(model, r.tokens, 4)
    # Draft probabilities: log_softmax of the logits each token was picked from.
    with torch.no_grad():
        logits = model(torch.tensor([requests[0].tokens + proposal.tokens[0, :3].tolist()])).logits[0, -4:]
    reference = torch.log_softmax(logits, -1).gather(1, proposal.tokens[0, :, None]).squeeze(1)
    torch.testing.assert_close(proposal.token_logprobs[0], reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(proposal.cum_logprobs[0], reference.cumsum(0), atol=1e-4, rtol=1e-4)


def test_model_drafter_rolls_back_to_the_accepted_path(model):
    requests = [R(0, [1, 2, 3, 4]), R(1, [5, 6])]
    drafter = ModelDrafter(model, max_draft=3)
    drafter.add(requests)
    proposal = drafter.propose(requests, num_draft=3)
    # Request 0 accepts 2 drafts then a different bonus token; request 1 accepts nothing.
    accepted = torch.tensor([[True, True, False], [False, False, False]])
    path = torch.tensor([[0, 1, -1], [-1, -1, -1]])
    drafter.update(requests, proposal, Outcome(torch.ones(2, 3, dtype=torch.bool), accepted, path))
    requests[0].tokens += proposal.tokens[0, :2].tolist() + [0]
    requests[1].tokens += [9]
    proposal = drafter.propose(requests, num_draft=3)
    for b, r in enumerate(requests):
        assert proposal.tokens[b].tolist() == _greedy(model, r.tokens, 3)
    assert drafter.cache.lengths().tolist() == [len(r.tokens) for r in requests]


def test_model_drafter_tree(model):
    requests = [R(0, [1, 2, 3]), R(1, [4, 5, 6, 7, 8])]
    drafter = ModelDrafter(model, max_draft=7, tree_width=2)
    drafter.add(requests)
    proposal = drafter.propose(requests, num_draft=7)
    tokens, parents = proposal.tokens, proposal.parents
    assert tokens.shape == (2, 7) and (tokens >= 0).all()
    n = torch.arange(7)
    assert ((parents >= -1) & (parents < n)).all()
    assert (parents[:, :2] == -1).all()  # two children of the root
    # The root's children are its top-2 tokens, best first.
    with torch.no_grad():
        for b, r in enumerate(requests):
            top2 = model(torch.tensor([r.tokens])).logits[0, -1].topk(2).indices.tolist()
            assert sorted(tokens[b, :2].tolist()) == sorted(top2)
    # The greedy chain is a path of the tree (its best path grows at every level).
    for b, r in enumerate(requests):
        greedy = _greedy(model, r.tokens, 3)
        node, depth_tokens = -1, []
        for token in greedy:
            children = [i for i in range(7) if parents[b, i] == node and tokens[b, i] == token]
            if not children:
                break
            node = children[0]
            depth_tokens.append(token)
        assert depth_tokens == greedy[: len(depth_tokens)] and len(depth_tokens) >= 2
    # Cumulative log-probabilities add up along the parents.
    cum, tok = proposal.cum_logprobs, proposal.token_logprobs
    for b in range(2):
        for i in range(7):
            p = int(parents[b, i])
            expected = tok[b, i] + (cum[b, p] if p >= 0 else 0.0)
            assert cum[b, i].item() == pytest.approx(expected.item(), abs=1e-5)


def test_drafter_arguments():
    with pytest.raises(ValueError):
        NgramDrafter(0)
    with pytest.raises(ValueError):
        NgramDrafter(3, max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError):
        ModelDrafter(None, 0)
