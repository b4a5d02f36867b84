"""Selection policies on hand-made proposals (no models): what each one verifies, and the
online estimates behind the goodput-driven ones."""

import math

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.policies import (
    AcceptanceRate,
    Autoregressive,
    GoodputSD,
    GoodputTetris,
    LatencyModel,
    StandardSD,
    StepFeedback,
    Tetris,
    ThresholdSD,
)
from tetris_ext.proposal import Proposal

NEG = float("-inf")


def chain_proposal(probs):
    """Rows of per-token acceptance probabilities (None = no candidate) -> a chain proposal."""
    B, N = len(probs), max(len(r) for r in probs)
    tokens = torch.full((B, N), -1, dtype=torch.long)
    token_logprobs = torch.full((B, N), NEG)
    for b, row in enumerate(probs):
        for n, p in enumerate(row):
            tokens[b, n] = 7
            token_logprobs[b, n] = math.log(p)
    return Proposal(tokens, None, token_logprobs, token_logprobs.cumsum(1))


def rows(selected):
    return [r.nonzero().flatten().tolist() for r in selected]


def test_autoregressive_drafts_and_selects_nothing():
    policy = Autoregressive()
    assert policy.num_draft(8) == 0
    assert not policy.choose(chain_proposal([[0.9, 0.9], [0.5]])).any()


def test_standard_sd_verifies_the_first_k_of_every_request():
    proposal = chain_proposal([[0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.1], [0.5]])
    policy = StandardSD(3)
    assert policy.num_draft(3) == 3
    assert rows(policy.choose(proposal)) == [[0, 1, 2], [0, 1, 2], [0]]


def test_tetris_moves_capacity_to_the_confident_requests():
    proposal = chain_proposal(
        [[0.9, 0.9, 0.9, 0.9, 0.9], [0.1, 0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.5, 0.5, 0.5]]
    )
    policy = Tetris(2, 3)
    assert policy.num_draft(3) == 5 and policy.budget(3) == 6
    selected = policy.choose(proposal)
    assert int(selected.sum()) == 6
    # 0.9^k beats 0.5^k beats 0.1: request 0 takes its 5 (0.9^5 = 0.59 > 0.5), request 2 one.
    assert rows(selected) == [[0, 1, 2, 3, 4], [], [0]]


def test_tetris_capacity_is_what_standard_sd_verifies_when_drafts_run_short():
    # Request 1 drafted one token, request 2 none: StandardSD(2) verifies 2 + 1 + 0 = 3 tokens,
    # so Tetris(2, .) verifies 3, the best 3 of the batch, not 2 x 3 = 6 (which would spend
    # the slots SD leaves empty on request 0's deep, doubtful drafts).
    proposal = chain_proposal([[0.9, 0.8, 0.7, 0.6, 0.5], [0.3], []])
    sd = StandardSD(2).choose(proposal)
    tetris = Tetris(2, 3)
    assert tetris.step_budget(proposal) == int(sd.sum()) == 3
    assert rows(tetris.choose(proposal)) == [[0, 1, 2], [], []]  # 0.9 * 0.8 * 0.7 = 0.50 > 0.3
    full = Tetris(2, 3, full_budget=True)
    assert full.name == "Tetris(2, 3, full_budget)" and full.step_budget(proposal) == 6
    assert rows(full.choose(proposal)) == [[0, 1, 2, 3, 4], [0], []]


def test_tetris_absolute_capacity_and_probability_floor():
    proposal = chain_proposal([[0.9, 0.9, 0.9], [0.4, 0.4, 0.4]])
    assert rows(Tetris(capacity=4, extra=0).choose(proposal)) == [[0, 1, 2], [0]]
    # With a floor of 0.5, request 1's first token (0.4) never goes in, capacity or not.
    assert rows(Tetris(capacity=6, extra=0, min_prob=0.5).choose(proposal)) == [[0, 1, 2], []]
    assert "min_prob=0.5" in Tetris(2, 1, min_prob=0.5).name


def test_tetris_on_trees_keeps_selections_ancestor_closed():
    # Request 0: a root child with two children; request 1: a chain.
    tokens = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, 1, 2]])
    token_p = torch.tensor([[0.9, 0.8, 0.7, 0.9], [0.6, 0.6, 0.6, 0.6]])
    cum = torch.zeros(2, 4)
    for b in range(2):
        for n in range(4):
            p = int(parents[b, n])
            cum[b, n] = token_p[b, n].log() + (cum[b, p] if p >= 0 else 0)
    proposal = Proposal(tokens, parents, token_p.log(), cum)
    selected = Tetris(capacity=5, extra=0).choose(proposal)
    assert rows(selected) == [[0, 1, 2, 3], [0]]


def test_threshold_sd_stops_each_request_at_its_threshold():
    proposal = chain_proposal([[0.9, 0.9, 0.9, 0.9], [0.5, 0.9], [0.95, 0.95, 0.95]])
    # Keep while 1 - cumulative probability <= 0.3, i.e. cumulative >= 0.7.
    selected = ThresholdSD(0.3, max_k=3).choose(proposal)
    assert rows(selected) == [[0, 1, 2], [], [0, 1, 2]]  # 0.9^3 = 0.729; 0.5 < 0.7; capped at 3


def _feed(policy, B, verified, accepted, seconds):
    """One step of a padded engine (the policies below are pinned padded=True)."""
    policy.observe(
        StepFeedback(
            torch.tensor(verified), torch.tensor(accepted), B * (1 + max(verified)), 0.0, seconds, True
        )
    )


def test_latency_model_recovers_a_linear_cost():
    model = LatencyModel()
    for real, padded in [(8, 8), (16, 24), (24, 32), (40, 48), (12, 16), (30, 56)]:
        model.observe(real, padded, 0.1 + 0.002 * real + 0.001 * padded)
    assert float(model.predict(20, 30)) == pytest.approx(0.1 + 0.04 + 0.03, rel=1e-3)


def test_acceptance_rate_follows_the_observed_rate():
    rate = AcceptanceRate(prior=0.5)
    for _ in range(50):  # each request: 3 verified, 1 accepted -> 1 success in 2 trials
        rate.observe(torch.tensor([3, 3]), torch.tensor([1, 1]))
    assert rate.value == pytest.approx(0.5, abs=0.02)
    for _ in range(50):  # all accepted
        rate.observe(torch.tensor([3, 3]), torch.tensor([3, 3]))
    assert rate.value > 0.95


def test_goodput_sd_explores_then_picks_the_window_the_estimates_favour():
    B = 4
    cheap = GoodputSD(5, padded=True)
    costly = GoodputSD(5, padded=True)
    for policy, per_token in ((cheap, 0.0005), (costly, 0.2)):
        for _ in range(12):
            k = policy.num_draft(B)
            accepted = [k] * B if policy is cheap else [0] * B  # cheap: always right; costly: always wrong
            policy.choose(chain_proposal([[0.5] * max(k, 1)] * B))
            _feed(policy, B, [k] * B, accepted, 0.1 + per_token * B * (k + 1))
    assert [cheap.exploration[i] for i in range(3)] == [1.0, 0.0, 0.5]
    assert cheap.num_draft(B) == 5
    assert costly.num_draft(B) == 0


def test_goodput_tetris_verifies_what_pays_for_itself():
    B = 2
    proposal = chain_proposal([[0.99, 0.99, 0.99, 0.99], [0.05, 0.05, 0.05, 0.05]])
    policy = GoodputTetris(4, padded=True)
    # Latency: 10 ms per verified token on top of 100 ms.
    for m in (8, 0, 4, 2, 6):
        _feed(policy, B, [m // 2, m - m // 2], [0, 0], 0.1 + 0.01 * (B + m))
    selected = policy.choose(proposal)
    # The confident request's 4 tokens (each ~0.97 expected) are worth 10 ms; 0.05 ones are not.
    assert rows(selected) == [[0, 1, 2, 3], []]
    capped = GoodputTetris(4, capacity=2, padded=True)
    for m in (2, 0, 1):
        _feed(capped, B, [m, 0], [0, 0], 0.1 + 0.01 * (B + m))
    assert int(capped.choose(proposal).sum()) <= 2


def test_policies_never_select_padding_or_invalid_candidates():
    proposal = chain_proposal([[0.9], [0.8, 0.8, 0.8]])
    proposal.cum_logprobs[1, 2] = float("nan")
    for policy in (StandardSD(3), Tetris(3, 0), ThresholdSD(0.9, 3), GoodputTetris(3, padded=True)):
        selected = policy.choose(proposal)
        assert not selected[0, 1:].any() and not selected[1, 2]


def test_invalid_arguments():
    for make in (
        lambda: StandardSD(0),
        lambda: Tetris(),
        lambda: Tetris(2, capacity=3),
        lambda: Tetris(2, -1),
        lambda: Tetris(2, 1, min_prob=2.0),
        lambda: Tetris(capacity=4, full_budget=True),
        lambda: ThresholdSD(1.5),
        lambda: GoodputSD(0),
        lambda: GoodputTetris(0),
    ):
        with pytest.raises(ValueError):
            make()


def test_a_policy_that_prices_steps_needs_its_engines_shape_outside_a_loop():
    """Without a loop to tell it (generate, sim.replay, the vLLM proposer) and without the flag,
    a policy that prices steps refuses to choose or learn rather than guess the engine."""
    from tetris_ext.cost_aware import CostAwareTetris

    proposal = chain_proposal([[0.9, 0.9, 0.9], [0.5, 0.4, 0.1]])
    step = StepFeedback(torch.tensor([2, 1]), torch.tensor([1, 0]), 8, 0.0, 0.1, True)
    for policy in (GoodputSD(3), GoodputTetris(3), CostAwareTetris(3)):
        with pytest.raises(ValueError, match=r"\(3\): the engine's shape is unknown.*pass padded=True"):
            policy.choose(proposal)
        with pytest.raises(ValueError, match="the engine's shape is unknown"):
            policy.observe(step)
        assert policy.steps == 0
    # The flag set: feedback from an engine of the other shape is refused too.
    for padded in (True, False):
        policy = GoodputTetris(3, padded=not padded)
        with pytest.raises(ValueError, match="but the feedback comes from an engine"):
            policy.observe(StepFeedback(torch.tensor([2, 1]), torch.tensor([1, 0]), 8, 0.0, 0.1, padded))
    assert policy.choose(proposal).shape == (2, 3)  # with its flag it chooses
