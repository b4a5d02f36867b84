"""estimators.NgramLogistic: calibrated on synthetic data, batched = per request, memory
released when requests leave; plugged into NgramDrafter and a replay."""

import math

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.drafters import NgramDrafter
from tetris_ext.estimators import (
    FEATURES,
    PRIOR,
    PRIOR_WEIGHTS,
    PRIOR_WITH_CLASSES,
    ConstantRate,
    NgramLogistic,
    NgramPrior,
    fit_logistic,
    fit_prior,
    token_class_table,
)
from tetris_ext.proposal import Outcome

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(n, seed=0):
    """Raw n-gram features [n, 1, 4] whose true acceptance is a known logistic function."""
    g = torch.Generator().manual_seed(seed)
    match = torch.randint(1, 5, (n,), generator=g).double()
    occurrences = torch.randint(1, 9, (n,), generator=g).double()
    agreement = torch.rand(n, generator=g, dtype=torch.float64)
    depth = torch.randint(1, 9, (n,), generator=g).double()
    truth = torch.sigmoid(-1.0 + 1.2 * torch.log1p(match) + 2.0 * agreement - 0.8 * torch.log1p(depth))
    accepted = torch.rand(n, generator=g, dtype=torch.float64) < truth
    return torch.stack([match, occurrences, agreement, depth], -1)[:, None], truth, accepted


def test_fit_on_synthetic_data_is_calibrated():
    features, truth, accepted = synthetic(20000)
    model = NgramLogistic(prior_samples=math.inf, rate_decay=1.0)
    x = model.design(features, list(range(len(truth))))[:, 0]
    fitted = NgramLogistic(tuple(fit_logistic(x, accepted).tolist()), math.inf)
    test_features, test_truth, _ = synthetic(4000, seed=1)
    predicted = fitted.predict_batch(test_features, list(range(len(test_truth))))[:, 0]
    assert float((predicted - test_truth).abs().mean()) < 0.03
    # And its reliability: in every well-populated decile the mean estimate is the mean truth.
    for low in torch.arange(0.0, 1.0, 0.1):
        members = (predicted >= low) & (predicted < low + 0.1)
        if members.sum() > 200:
            assert abs(float(predicted[members].mean() - test_truth[members].mean())) < 0.03


def test_online_learning_moves_a_wrong_prior_toward_the_truth():
    features, truth, accepted = synthetic(6000)
    model = NgramLogistic(prior=(0.0,) * len(FEATURES), prior_samples=10.0)
    before = model.predict_batch(features[:500], list(range(500)))[:, 0]
    for lo in range(0, 6000, 100):  # steps of 100 requests, one token each
        ids = list(range(lo, lo + 100))
        model.update_batch(
            features[lo : lo + 100], ids, torch.ones(100, 1, dtype=torch.bool), accepted[lo : lo + 100, None]
        )
        for r in ids:
            model.forget(r)
    after = model.predict_batch(features[:500], list(range(500)))[:, 0]
    assert (after - truth[:500]).abs().mean() < 0.6 * (before - truth[:500]).abs().mean()


def test_batched_equals_per_request():
    g = torch.Generator().manual_seed(3)
    features = torch.rand(5, 4, 4, generator=g) * torch.tensor([4.0, 8.0, 1.0, 4.0])
    tokens = torch.randint(0, 10, (5, 4), generator=g)
    classes = torch.tensor([0, 1, 2, 3, 2, 2, 1, 0, 3, 2], dtype=torch.int8)
    tested = torch.rand(5, 4, generator=g) < 0.7
    accepted = tested & (torch.rand(5, 4, generator=g) < 0.6)
    roots = torch.randint(0, 10, (5,), generator=g)
    batched = NgramLogistic(prior_samples=math.inf, token_classes=classes)
    single = NgramLogistic(prior_samples=math.inf, token_classes=classes)
    ids = [10, 11, 12, 13, 14]
    batched.update_batch(features, ids, tested, accepted, tokens, roots)
    for b, r in enumerate(ids):
        single.update_batch(
            features[b : b + 1],
            [r],
            tested[b : b + 1],
            accepted[b : b + 1],
            tokens[b : b + 1],
            roots[b : b + 1],
        )
    together = batched.predict_batch(features, ids, tokens, roots)
    one_by_one = torch.cat(
        [
            single.predict_batch(features[b : b + 1], [r], tokens[b : b + 1], roots[b : b + 1])
            for b, r in enumerate(ids)
        ]
    )
    torch.testing.assert_close(together, one_by_one)
    # A request's history moves its own estimates only.
    assert not torch.equal(
        together,
        NgramLogistic(prior_samples=math.inf, token_classes=classes).predict_batch(
            features, ids, tokens, roots
        ),
    )


def test_request_history_raises_and_lowers_estimates_and_starts_at_the_prior():
    model = NgramLogistic(prior_samples=math.inf)
    features = torch.tensor([[[2.0, 3.0, 1.0, 1.0]]]).expand(2, 1, 4)
    tokens, roots = torch.tensor([[5], [5]]), torch.tensor([4, 4])
    fresh = model.predict_batch(features, [1, 2], tokens, roots)
    assert fresh[0, 0] == fresh[1, 0]  # no history: the same estimate
    for _ in range(5):
        model.update_batch(
            features,
            [1, 2],
            torch.ones(2, 1, dtype=torch.bool),
            torch.tensor([[True], [False]]),
            tokens,
            roots,
        )
    after = model.predict_batch(features, [1, 2], tokens, roots)
    assert after[0, 0] > fresh[0, 0] > after[1, 0]


def test_memory_is_released_and_slots_are_reused():
    model = NgramLogistic(prior_samples=math.inf)  # shared weights fixed: only request state differs
    features = torch.ones(4, 2, 4)
    tokens, roots = torch.tensor([[7, 8]]).expand(4, 2), torch.tensor([6, 6, 6, 6])
    for wave in range(50):
        ids = list(range(4 * wave, 4 * wave + 4))
        model.update_batch(
            features,
            ids,
            torch.ones(4, 2, dtype=torch.bool),
            torch.zeros(4, 2, dtype=torch.bool),
            tokens,
            roots,
        )
        for r in ids:
            model.forget(r)
    assert model.tracked_requests == 0
    assert model._state.shape[0] <= 8  # 200 requests went through 8 slots
    # A reused slot starts fresh (rate, copy run and transition memory): same estimate as a
    # never-seen request.
    fresh = NgramLogistic().predict_batch(features[:1], [999], tokens[:1], roots[:1])
    torch.testing.assert_close(model.predict_batch(features[:1], [999], tokens[:1], roots[:1]), fresh)
    assert not model._memory.any(dim=(1, 2))[model._slots[999]]


def test_ngram_drafter_uses_the_batched_estimator_and_releases_requests():
    class Req:
        def __init__(self, index, tokens):
            self.index, self.tokens = index, tokens

    estimator = NgramLogistic()
    drafter = NgramDrafter(4, calibration=estimator)
    requests = [Req(0, [1, 2, 3, 1, 2, 3, 1, 2]), Req(1, [5, 6, 7, 8])]
    drafter.add(requests)
    proposal = drafter.propose(requests, 4)
    assert proposal.counts().tolist() == [3, 0]  # the last match runs into the end
    roots = torch.tensor([2, 8])  # the requests' last tokens: the first drafts' parents
    expected = (
        estimator.predict_batch(proposal.features[:1], [0], proposal.tokens[:1], roots[:1]).log().float()
    )
    torch.testing.assert_close(proposal.token_logprobs[0, :3], expected[0, :3])
    assert math.isinf(float(proposal.token_logprobs[0, 3]))
    assert math.isinf(float(proposal.token_logprobs[1, 0]))
    assert estimator.tracked_requests == 2
    # The update reaches the estimator with the same roots: the accepted transitions
    # (2->3, 3->1, 1->2) are remembered and the same draft scores higher next time.
    accepted = torch.tensor([[True, True, True, False], [False] * 4])
    outcome = Outcome(
        selected=proposal.tokens >= 0, accepted=accepted, accepted_path=torch.tensor([[0, 1, 2], [-1] * 3])
    )
    drafter.update(requests, proposal, outcome)
    assert int(estimator._memory[estimator._slots[0], 0].sum()) == 3
    again = drafter.propose(requests, 4)
    assert bool((again.token_logprobs[0, :3] > proposal.token_logprobs[0, :3]).all())
    drafter.keep([1])
    assert estimator.tracked_requests == 1 and 0 not in estimator._slots


def test_token_classes_and_constant_rate():
    class Tok:
        def __len__(self):
            return 5

        def convert_ids_to_tokens(self, ids):
            return ["\u2581", ",", "\u2581hello", "x1_", "\u00e9\u2581!"][: len(ids)]

    assert token_class_table(Tok()).tolist() == [0, 1, 2, 2, 3]
    constant = ConstantRate(0.3)
    assert torch.all(constant.predict_batch(torch.zeros(2, 3, 4), [0, 1]) == 0.3)
    with pytest.raises(ValueError):
        ConstantRate(1.0)
    with pytest.raises(ValueError):
        NgramLogistic(prior=PRIOR_WEIGHTS[:-1])


def test_online_updates_move_the_weights_and_frozen_weights_stay():
    features, _, accepted = synthetic(400)
    ones = torch.ones(400, 1, dtype=torch.bool)
    online, frozen = NgramLogistic(), NgramLogistic(prior_samples=math.inf)
    for model in (online, frozen):
        model.update_batch(features, list(range(400)), ones, accepted[:, None])
    assert torch.equal(frozen.weights, frozen.prior)
    assert float((online.weights - online.prior).abs().max()) > 1e-3
    # The posterior precision grew by the tokens' curvature: later steps move the weights less.
    grown = online.precision - 300.0 * torch.tensor(PRIOR.hessian, dtype=torch.float64)
    assert torch.linalg.eigvalsh(grown).min() > -1e-4 and torch.trace(grown) > 1.0


def test_transition_memory_raises_accepted_and_lowers_rejected_transitions_per_request():
    model = NgramLogistic(prior_samples=math.inf)
    features = torch.tensor([[[3.0, 2.0, 1.0, 1.0], [3.0, 2.0, 1.0, 2.0]]]).expand(3, 2, 4)
    tokens = torch.tensor([[5, 9], [5, 9], [5, 9]])
    roots = torch.tensor([4, 4, 4])
    fresh = model.predict_batch(features, [0, 1, 2], tokens, roots)
    tested = torch.tensor([[True, True], [True, False], [False, False]])
    accepted = torch.tensor([[True, True], [False, False], [False, False]])
    model.update_batch(features, [0, 1, 2], tested, accepted, tokens, roots)
    # Bring the other state (rate, copy run) back to a fresh request's, to see the memory alone.
    model._state.zero_()
    after = model.predict_batch(features, [0, 1, 2], tokens, roots)
    assert bool((after[0] > fresh[0]).all())  # both transitions (4->5, 5->9) were accepted
    assert after[1, 0] < fresh[1, 0]  # 4->5 was rejected for request 1
    assert float(after[1, 1]) == pytest.approx(float(fresh[1, 1]))  # 5->9 never tested for request 1
    torch.testing.assert_close(after[2], fresh[2])  # request 2 tested nothing
    # Another root: the first token's transition is new; the second's (5->9) is remembered.
    other_root = model.predict_batch(features[:1], [0], tokens[:1], torch.tensor([3]))
    torch.testing.assert_close(other_root[0], torch.stack([fresh[0, 0], after[0, 1]]))
    # Without roots only the first token loses the memory; without tokens all of it.
    no_roots = model.predict_batch(features[:1], [0], tokens[:1])
    torch.testing.assert_close(no_roots[0], torch.stack([fresh[0, 0], after[0, 1]]))
    torch.testing.assert_close(
        model.predict_batch(features[:1], [0]),
        NgramLogistic(prior_samples=math.inf).predict_batch(features[:1], [7]),
    )


def test_without_tokens_it_still_learns_and_stays_in_range():
    """The path of a caller that passes no tokens or roots (no transition memory)."""
    features, _, accepted = synthetic(300, seed=2)
    model = NgramLogistic()
    ones = torch.ones(300, 1, dtype=torch.bool)
    model.update_batch(features, list(range(300)), ones, accepted[:, None])
    p = model.predict_batch(features[:50], list(range(50)))
    assert bool(((p >= 0.02) & (p <= 0.98)).all()) and not torch.equal(model.weights, model.prior)


def test_prior_file_round_trip_and_fit_prior(tmp_path):
    features, _, accepted = synthetic(2000, seed=4)
    x = NgramLogistic(prior_samples=math.inf).design(features, list(range(2000)))[:, 0]
    prior = fit_prior(x, accepted, samples=123.0)
    hessian = torch.tensor(prior.hessian)
    assert hessian.shape == (len(FEATURES), len(FEATURES)) and torch.allclose(hessian, hessian.T)
    prior.save(tmp_path / "p.json", command="test")
    assert NgramPrior.load(tmp_path / "p.json") == prior
    assert NgramLogistic(prior).prior_samples == 123.0
    (tmp_path / "bad.json").write_text(
        '{"features": ["bias"], "weights": [0], "hessian": [[1]], "samples": 1}'
    )
    with pytest.raises(ValueError, match="features"):
        NgramPrior.load(tmp_path / "bad.json")
    # The shipped prior is a fit (not the placeholder): the memory weights have their signs.
    weights = dict(zip(FEATURES, PRIOR.weights))
    assert weights["accepted_before"] > 0 > weights["rejected_before"]


def test_columns_the_prior_never_saw_move_only_moderately():
    """``PRIOR`` was fitted without token classes: with a table, their weights start at 0 and
    learn, but one surprising step cannot throw them far (without the ridge, a Newton step on
    two unlikely tokens that were accepted moves a fresh column by about 1 / p)."""
    features = torch.tensor([[[1.0, 1.0, 0.0, 1.0]]]).expand(2, 1, 4)  # a poor match: p ~ 0.05
    classes = torch.tensor([0, 1, 2, 3], dtype=torch.int8)
    tokens = torch.tensor([[2], [2]])  # word pieces
    model = NgramLogistic(PRIOR, token_classes=classes)
    assert float(model.predict_batch(features, [0, 1], tokens)[0, 0]) < 0.1
    model.update_batch(
        features, [0, 1], torch.ones(2, 1, dtype=torch.bool), torch.ones(2, 1, dtype=torch.bool), tokens
    )
    word = float(model.weights[FEATURES.index("class_word")])
    assert 0.0 < word < 2.0


def test_transition_agreement_is_the_fifth_raw_feature_and_the_ngram_agreement_stands_in():
    features, _, _ = synthetic(50)
    column = FEATURES.index("transition_agreement")
    model = NgramLogistic(prior_samples=math.inf)
    four = model.design(features, list(range(50)))
    # Without a fifth column the n-gram agreement stands in (the two are equal for one-token matches).
    torch.testing.assert_close(four[..., column], features[..., 2].double())
    low, high = (torch.cat([features, torch.full_like(features[..., :1], v)], -1) for v in (0.1, 0.9))
    torch.testing.assert_close(
        model.design(high, list(range(50)))[..., column], torch.full((50, 1), 0.9, dtype=torch.float64)
    )
    # The shipped prior: a step the context usually takes is more likely accepted.
    assert PRIOR.weights[column] > 0
    assert bool(
        (model.predict_batch(high, list(range(50))) > model.predict_batch(low, list(range(50)))).all()
    )


def test_the_default_prior_matches_the_inputs():
    table = torch.tensor([0, 1, 2, 3], dtype=torch.int8)
    assert NgramLogistic().prior.tolist() == list(PRIOR.weights)
    assert NgramLogistic(token_classes=table).prior.tolist() == list(PRIOR_WITH_CLASSES.weights)
    assert PRIOR_WITH_CLASSES.weights != PRIOR.weights
    # Only the fit with classes has class weights; an explicit prior wins.
    classes = [FEATURES.index(f"class_{c}") for c in ("whitespace", "punctuation", "word")]
    assert all(PRIOR.weights[i] == 0.0 for i in classes)
    assert any(PRIOR_WITH_CLASSES.weights[i] != 0.0 for i in classes)
    assert NgramLogistic(PRIOR, token_classes=table).prior.tolist() == list(PRIOR.weights)
