"""estimators.NgramLogistic: calibrated on synthetic data, batched = per request, memory
released when requests leave; plugged into NgramDrafter and a replay."""

import math

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext import estimators
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
    assert proposal.counts().tolist() == [4, 0]  # the last match runs into the end, copied on
    roots = torch.tensor([2, 8])  # the requests' last tokens: the first drafts' parents
    expected = (
        estimator.predict_batch(proposal.features[:1], [0], proposal.tokens[:1], roots[:1]).log().float()
    )
    torch.testing.assert_close(proposal.token_logprobs[0], expected[0])
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


class ColumnStacking(NgramLogistic):
    """The straightforward formula NgramLogistic had before its numpy fill: torch columns
    stacked, per-request state updated by torch ops. The reference its outputs must equal."""

    @staticmethod
    def _torch_buckets(tokens, roots):
        B, N = tokens.shape
        root = roots.reshape(B, 1) if roots is not None else tokens.new_full((B, 1), -1)
        parents = torch.cat([root, tokens[:, :-1]], 1)
        known = (parents >= 0) & (tokens >= 0)
        return torch.where(known, (parents * 1_000_003 + tokens) % estimators.MEMORY_BUCKETS, -1)

    def design(self, features, requests, tokens=None, roots=None):
        f = features.to(torch.float64)
        B, N = f.shape[:2]
        match_length, occurrences, agreement, depth = f[..., :4].unbind(-1)
        transition = f[..., 4] if f.shape[-1] > 4 else agreement
        slots = torch.from_numpy(self._slot_indices(list(requests)))
        accepted, tested, run = self._state[slots].unbind(-1)
        rate = (accepted + 2.0 * self.rate_prior) / (tested + 2.0)
        log_odds = torch.logit(rate) - math.log(self.rate_prior / (1.0 - self.rate_prior))
        classes = torch.zeros(B, N, 3, dtype=torch.float64)
        if self.token_classes is not None and tokens is not None:
            ids = tokens.clamp(0, self.token_classes.shape[0] - 1)
            one_hot = torch.nn.functional.one_hot(self.token_classes[ids].long(), 4)
            classes = (one_hot[..., :-1] * (tokens >= 0)[..., None]).to(torch.float64)
        base = {
            "log_match_length": torch.log1p(match_length),
            "log_occurrences": torch.log1p(occurrences),
            "agreement": agreement,
            "unanimous": (agreement >= 1.0).to(torch.float64),
            "log_copy_run": torch.log1p(run)[:, None].expand(B, N),
            "transition_agreement": transition,
        }
        first = (depth == 1).to(torch.float64)
        memory = torch.zeros(B, N, 2, dtype=torch.float64)
        if tokens is not None:
            buckets = self._torch_buckets(tokens, roots)
            seen = self._memory[slots[:, None], :, buckets.clamp(min=0)]
            memory = (seen & (buckets >= 0)[..., None]).to(torch.float64)
        columns = [torch.ones_like(match_length), base["log_match_length"], base["log_occurrences"]]
        columns += [agreement, torch.log1p(depth), base["unanimous"], log_odds[:, None].expand(B, N)]
        columns += [base["log_copy_run"], transition]
        interactions = [first] + [first * base[name] for name in estimators.FIRST_INTERACTIONS]
        return torch.cat([torch.stack(columns, -1), classes, torch.stack(interactions, -1), memory], -1)

    def update_batch(self, features, requests, tested, accepted, tokens=None, roots=None):
        x = self.design(features, requests, tokens, roots)[tested]
        y = accepted[tested].to(torch.float64)
        if self.precision is not None and len(y):
            p = torch.sigmoid(x @ self.weights)
            self.precision += (x * (p * (1.0 - p))[:, None]).T @ x
            self.weights += torch.linalg.solve(self.precision, x.T @ (y - p))
        self.updates += len(y)
        slots = torch.from_numpy(self._slot_indices(list(requests)))
        hits = (tested & accepted).sum(1).to(torch.float64)
        first = tested & (features[..., 3] == 1)
        first_trials = first.sum(1).to(torch.float64)
        state = self._state[slots]
        decay = torch.where(first_trials > 0, self.rate_decay, 1.0)
        state[:, 0] = decay * state[:, 0] + (first & accepted).sum(1).to(torch.float64)
        state[:, 1] = decay * state[:, 1] + first_trials
        rejected = (tested & ~accepted).any(1)
        state[:, 2] = torch.where(rejected, 0.0, state[:, 2] + hits)
        self._state[slots] = state
        if tokens is not None:
            buckets = self._torch_buckets(tokens, roots)
            seen = tested & (buckets >= 0)
            rows = slots[:, None].expand_as(buckets)[seen]
            self._memory[rows, (~accepted[seen]).long(), buckets[seen]] = True


@pytest.mark.parametrize("raw", [5, 4])
@pytest.mark.parametrize("with_classes", [False, True])
def test_design_and_updates_equal_the_column_stacking_formula_bit_for_bit(raw, with_classes):
    """Over many steps of random shapes (batch 1-33, 1-9 drafts), non-integer features,
    requests coming and going: every design matrix, estimate, weight, precision and state."""
    g = torch.Generator().manual_seed(7 + raw)
    classes = torch.randint(0, 4, (50,), generator=g, dtype=torch.int8) if with_classes else None
    fast, reference = NgramLogistic(token_classes=classes), ColumnStacking(token_classes=classes)
    for step in range(60):
        B, N = int(torch.randint(1, 34, (1,), generator=g)), int(torch.randint(1, 10, (1,), generator=g))
        ids = torch.randperm(40, generator=g)[:B].tolist()
        features = torch.rand(B, N, raw, generator=g) * torch.tensor([4.0, 9.0, 1.0, 8.0, 1.0][:raw])
        features[..., 3] = torch.randint(1, 4, (B, N), generator=g).float()  # depth 1 often
        features[..., 2] = torch.where(torch.rand(B, N, generator=g) < 0.3, 1.0, features[..., 2])
        tokens = torch.randint(-1, 50, (B, N), generator=g)
        roots = torch.randint(0, 50, (B,), generator=g) if step % 3 else None
        tested = torch.rand(B, N, generator=g) < 0.7
        accepted = tested & (torch.rand(B, N, generator=g) < 0.6)
        given = (tokens, roots) if step % 4 else (None, None)
        assert torch.equal(fast.design(features, ids, *given), reference.design(features, ids, *given))
        assert torch.equal(
            fast.predict_batch(features, ids, *given), reference.predict_batch(features, ids, *given)
        )
        if step % 5 == 0:  # changed in place after the prediction: its design must not be reused
            features[..., 0] += 1.0
        if step % 7 == 0:  # a request forgotten in between starts afresh
            fast.forget(ids[0])
            reference.forget(ids[0])
        fast.update_batch(features, ids, tested, accepted, *given)
        reference.update_batch(features, ids, tested, accepted, *given)
        for name in ("weights", "precision", "_state", "_memory"):
            assert torch.equal(getattr(fast, name), getattr(reference, name)), (step, name)
        for r in torch.randperm(40, generator=g)[:5].tolist():
            fast.forget(r)
            reference.forget(r)
    assert fast.updates == reference.updates > 500
