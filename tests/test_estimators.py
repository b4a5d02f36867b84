"""estimators.NgramLogistic: calibrated on synthetic data, batched = per request, memory
released when requests leave; plugged into NgramDrafter and a replay."""

import math

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.drafters import NgramDrafter
from tetris_ext.estimators import (
    FEATURES,
    PRIOR_WEIGHTS,
    ConstantRate,
    NgramLogistic,
    fit_logistic,
    token_class_table,
)

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
    model = NgramLogistic(learning_rate=0.0, rate_decay=1.0)
    x = model.design(features, list(range(len(truth))))[:, 0]
    fitted = NgramLogistic(tuple(fit_logistic(x, accepted).tolist()), learning_rate=0.0)
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
    model = NgramLogistic(prior=(0.0,) * len(FEATURES), learning_rate=0.01, prior_strength=0.0)
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
    batched = NgramLogistic(learning_rate=0.0, token_classes=classes)
    single = NgramLogistic(learning_rate=0.0, token_classes=classes)
    ids = [10, 11, 12, 13, 14]
    batched.update_batch(features, ids, tested, accepted, tokens)
    for b, r in enumerate(ids):
        single.update_batch(
            features[b : b + 1], [r], tested[b : b + 1], accepted[b : b + 1], tokens[b : b + 1]
        )
    together = batched.predict_batch(features, ids, tokens)
    one_by_one = torch.cat(
        [single.predict_batch(features[b : b + 1], [r], tokens[b : b + 1]) for b, r in enumerate(ids)]
    )
    torch.testing.assert_close(together, one_by_one)
    # A request's history moves its own estimates only.
    assert not torch.equal(
        together, NgramLogistic(learning_rate=0.0, token_classes=classes).predict_batch(features, ids, tokens)
    )


def test_request_history_raises_and_lowers_estimates_and_starts_at_the_prior():
    model = NgramLogistic(learning_rate=0.0)
    features = torch.tensor([[[2.0, 3.0, 1.0, 1.0]]]).expand(2, 1, 4)
    fresh = model.predict_batch(features, [1, 2])
    assert fresh[0, 0] == fresh[1, 0]  # no history: the same estimate
    for _ in range(5):
        model.update_batch(
            features, [1, 2], torch.ones(2, 1, dtype=torch.bool), torch.tensor([[True], [False]])
        )
    after = model.predict_batch(features, [1, 2])
    assert after[0, 0] > fresh[0, 0] > after[1, 0]


def test_memory_is_released_and_slots_are_reused():
    model = NgramLogistic(learning_rate=0.0)  # shared weights fixed: only request state differs
    features = torch.ones(4, 2, 4)
    for wave in range(50):
        ids = list(range(4 * wave, 4 * wave + 4))
        model.update_batch(
            features, ids, torch.ones(4, 2, dtype=torch.bool), torch.zeros(4, 2, dtype=torch.bool)
        )
        for r in ids:
            model.forget(r)
    assert model.tracked_requests == 0
    assert model._state.shape[0] <= 8  # 200 requests went through 8 slots
    # A reused slot starts fresh: same estimate as a never-seen request.
    fresh = NgramLogistic().predict_batch(features[:1], [999])
    torch.testing.assert_close(model.predict_batch(features[:1], [999]), fresh)


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
    expected = estimator.predict_batch(proposal.features[:1], [0], proposal.tokens[:1]).log().float()
    torch.testing.assert_close(proposal.token_logprobs[0, :3], expected[0, :3])
    assert math.isinf(float(proposal.token_logprobs[0, 3]))
    assert math.isinf(float(proposal.token_logprobs[1, 0]))
    assert estimator.tracked_requests == 2
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


def test_flat_list_interface_equals_the_batched_one():
    g = torch.Generator().manual_seed(5)
    features = torch.rand(3, 4, 4, generator=g) * torch.tensor([4.0, 8.0, 1.0, 4.0])
    tested = torch.tensor(
        [[True, True, False, False], [True, False, False, False], [True, True, True, False]]
    )
    accepted = torch.tensor(
        [[True, False, False, False], [False, False, False, False], [True, True, False, False]]
    )
    batched, lists = NgramLogistic(learning_rate=0.01), NgramLogistic(learning_rate=0.01)
    batched.update_batch(features, [4, 5, 6], tested, accepted)
    flat = [(b, n) for b in range(3) for n in range(4) if tested[b, n]]
    lists.update_many(
        [tuple(features[b, n].tolist()) for b, n in flat],
        [[4, 5, 6][b] for b, _ in flat],
        [bool(accepted[b, n]) for b, n in flat],
    )
    torch.testing.assert_close(lists.weights, batched.weights)
    torch.testing.assert_close(
        lists.predict_many(features, [4, 5, 6]), batched.predict_batch(features, [4, 5, 6])
    )
