"""Losslessness at temperature > 0: the distribution of generated two-token continuations
equals the target's own (autoregressive sampling), whatever the drafter and the policy.

Chi-square tests on thousands of samples of a tiny-vocabulary model; a negative control
(a deliberately wrong residual) shows the test has the power to fail.
"""

import pytest
import torch
from scipy.stats import chisquare

import tetris_ext  # noqa: F401
import tetris_ext.verification as verification
from tetris_ext.decoding import generate
from tetris_ext.drafters import ModelDrafter, NgramDrafter
from tetris_ext.models import noisy_copy, tiny_llama
from tetris_ext.policies import StandardSD, Tetris

VOCAB = 8
SAMPLES = 4000
TEMPERATURE = 1.0
PROMPT = [1, 2, 3, 1, 2]  # the suffix [1, 2] occurred before: the n-gram drafter proposes [3, 1, 2]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(vocab_size=VOCAB, initializer_range=0.1, seed=3)
    return target, noisy_copy(target, 1.0, seed=4)


def _exact_pair_distribution(target) -> torch.Tensor:
    """P(t1, t2 | PROMPT) at TEMPERATURE, [VOCAB, VOCAB], from full forwards."""
    with torch.no_grad():
        first = torch.softmax(target(torch.tensor([PROMPT])).logits[0, -1] / TEMPERATURE, -1)
        seconds = torch.tensor([PROMPT + [t] for t in range(VOCAB)])
        second = torch.softmax(target(seconds).logits[:, -1] / TEMPERATURE, -1)
    return first[:, None] * second


def _pair_p_value(target, policy, drafter, seed=0) -> float:
    """The first two of three new tokens (three: so that the first step may verify, and accept,
    drafts at depth 1 and 2; with two left it could use depth 1 only, ``Proposal.usable``)."""
    result = generate(
        target, [PROMPT] * SAMPLES, policy, drafter, max_new_tokens=3, temperature=TEMPERATURE, seed=seed
    )
    counts = torch.zeros(VOCAB * VOCAB)
    for t1, t2, *_ in result.tokens:
        counts[t1 * VOCAB + t2] += 1
    expected = _exact_pair_distribution(target).reshape(-1).double() * SAMPLES
    # Pool the cells too small for the chi-square approximation into one.
    small = expected < 5
    observed = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    expected = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    expected *= observed.sum() / expected.sum()
    return chisquare(observed.numpy(), expected.numpy()).pvalue


@pytest.mark.parametrize(
    "case",
    ["sampled-chain", "sampled-chain-tetris", "top-k-tree", "ngram"],
)
def test_sampling_output_distribution_is_the_targets(models, case):
    target, draft = models
    policy, drafter = {
        "sampled-chain": (StandardSD(2), ModelDrafter(draft, 2)),
        "sampled-chain-tetris": (Tetris(1, 1), ModelDrafter(draft, 2)),
        "top-k-tree": (Tetris(2, 2), ModelDrafter(draft, 4, tree_width=2)),
        "ngram": (StandardSD(2), NgramDrafter(3)),
    }[case]
    result_p = _pair_p_value(target, policy, drafter)
    assert result_p > 1e-3


def test_sampling_draws_differ_between_seeds_and_repeat_with_the_same_seed(models):
    target, draft = models
    runs = [
        generate(
            target,
            [PROMPT] * 50,
            StandardSD(2),
            ModelDrafter(draft, 2),
            max_new_tokens=3,
            temperature=1.0,
            seed=s,
        ).tokens
        for s in (0, 0, 1)
    ]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_negative_control_a_wrong_residual_is_detected(models, monkeypatch):
    # Verify sampled draft tokens against a wrong draft distribution (uniform): the acceptance
    # ratio and the residual max(p - q, 0) are then wrong. The test must notice.
    target, draft = models
    right = verification._draft_probs_per_slot

    def uniform_instead(block, proposal):
        probs = right(block, proposal)
        return torch.where(probs.sum(-1, keepdim=True) > 0, 1.0 / VOCAB, 0.0).expand_as(probs)

    monkeypatch.setattr(verification, "_draft_probs_per_slot", uniform_instead)
    assert _pair_p_value(target, StandardSD(2), ModelDrafter(draft, 2)) < 1e-6


def test_negative_control_selection_must_not_look_at_the_sampled_token(models, monkeypatch):
    # Ranking sampled tokens by their own draft probability (instead of the node's confidence)
    # biases the output: Tetris then verifies tokens the draft over-estimates more often.
    target, draft = models
    drafter = ModelDrafter(draft, 2)
    propose = drafter.propose

    def own_probability(requests, num_draft, temperature, generator):
        proposal = propose(requests, num_draft, temperature, generator)
        rows = proposal.draft_probs.clamp(min=1e-30).log()
        proposal.token_logprobs, proposal.cum_logprobs = torch.ops.tetris.draft_cumprod(
            rows, proposal.tokens, None, 1.0
        )
        return proposal

    monkeypatch.setattr(drafter, "propose", own_probability)
    assert _pair_p_value(target, Tetris(1, 1), drafter) < 1e-6
