"""ModelDrafter's score_temperature: rescales the acceptance estimates at temperature 0, nothing else."""

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.drafters import ModelDrafter
from tetris_ext.models import tiny_llama


class R:
    def __init__(self, index, tokens):
        self.index, self.tokens = index, tokens


@pytest.mark.parametrize("tree_width", [1, 2])
def test_score_temperature_rescales_scores_only(tree_width):
    model = tiny_llama(vocab_size=32, seed=5)
    proposals = {}
    for T in (1.0, 0.5):
        requests = [R(0, [1, 2, 3, 4]), R(1, [5, 6])]
        drafter = ModelDrafter(model, max_draft=4, tree_width=tree_width, score_temperature=T)
        drafter.add(requests)
        proposals[T] = drafter.propose(requests, num_draft=4)
    plain, sharp = proposals[1.0], proposals[0.5]
    assert torch.equal(plain.tokens, sharp.tokens)  # same drafts ...
    assert (plain.parents is None) == (sharp.parents is None)
    # ... scored differently: sharpening raises the probability of each row's argmax, which is
    # what a greedy chain drafts (exact values: the next test).
    if tree_width == 1:
        assert (sharp.token_logprobs >= plain.token_logprobs - 1e-6).all()
        torch.testing.assert_close(sharp.cum_logprobs, sharp.token_logprobs.cumsum(1))
    assert not torch.allclose(sharp.token_logprobs, plain.token_logprobs)


def test_score_temperature_matches_log_softmax_of_scaled_logits():
    model = tiny_llama(vocab_size=32, seed=5)
    requests = [R(0, [1, 2, 3, 4])]
    drafter = ModelDrafter(model, max_draft=3, score_temperature=0.7)
    drafter.add(requests)
    proposal = drafter.propose(requests, num_draft=3)
    with torch.no_grad():
        logits = model(torch.tensor([requests[0].tokens + proposal.tokens[0, :2].tolist()])).logits[0, -3:]
    reference = torch.log_softmax(logits / 0.7, -1).gather(1, proposal.tokens[0, :, None]).squeeze(1)
    torch.testing.assert_close(proposal.token_logprobs[0], reference, atol=1e-4, rtol=1e-4)


def test_score_temperature_must_be_positive():
    with pytest.raises(ValueError, match="score_temperature"):
        ModelDrafter(None, 3, score_temperature=0.0)
