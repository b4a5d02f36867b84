"""tetris_ext.drain: once no request waits to join, CostAwareTetris values each request's tokens
by how much they shorten the drain; the engine hands the policy each request's progress."""

import numpy as np
import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.cost_aware import CostAwareTetris
from tetris_ext.cost_models import LinearCostModel
from tetris_ext.decoding import generate
from tetris_ext.drafters import NgramDrafter
from tetris_ext.drain import drain_select, draining, finish_last_probabilities
from tetris_ext.models import tiny_llama
from tetris_ext.policies import Autoregressive, StandardSD
from tetris_ext.proposal import Proposal
from tetris_ext.sim import Trace, replay

pytestmark = pytest.mark.usefixtures("one_thread")


def chain_proposal(probs, tokens_left=None, waiting=None):
    """Rows of per-token acceptance probabilities -> a chain proposal with progress."""
    tokens = torch.full((len(probs), len(probs[0])), 7, dtype=torch.long)
    token_logprobs = torch.tensor(probs, dtype=torch.float32).log()
    left = None if tokens_left is None else torch.tensor(tokens_left, dtype=torch.long)
    return Proposal(tokens, None, token_logprobs, token_logprobs.cumsum(1), tokens_left=left, waiting=waiting)


def per_request(selected):
    return selected.sum(1).tolist()


# ------------------------------------------------------------------------------------------
# Proposal's progress fields


def test_proposal_progress_fields_are_validated():
    probs = [[0.9, 0.8], [0.7, 0.6]]
    chain_proposal(probs, [3, 1], False)  # valid
    chain_proposal(probs)  # unknown: both None
    bad_left = [
        torch.tensor([3.0, 1.0]),  # float
        torch.tensor([3, 1], dtype=torch.int32),  # int32
        torch.tensor([3, 1, 2]),  # one per request, not three
        torch.tensor([[3, 1]]),  # 2-D
        torch.tensor([3, 0]),  # a request with nothing left has finished
        torch.tensor([3, 1], device="meta"),  # not on the CPU: its check would wait for a device
        [3, 1],  # not a tensor
    ]
    for left in bad_left:
        with pytest.raises(ValueError, match="tokens_left"):
            Proposal(
                torch.zeros(2, 2, dtype=torch.long),
                None,
                torch.zeros(2, 2),
                torch.zeros(2, 2),
                tokens_left=left,
            )
    for waiting in (0, 1, "no", np.bool_(False)):
        with pytest.raises(ValueError, match="waiting"):
            chain_proposal(probs, [3, 1], waiting)


# ------------------------------------------------------------------------------------------
# The value of a request's tokens in the drain


def test_finish_last_probabilities():
    equal = finish_last_probabilities(torch.tensor([20, 20, 20, 20]), 2.0, 1.0)
    assert torch.allclose(equal, torch.full((4,), 0.25, dtype=torch.float64))
    one_long = finish_last_probabilities(torch.tensor([60, 10, 12, 8]), 2.0, 1.0)
    assert abs(float(one_long.sum()) - 1) < 1e-9 and float(one_long[0]) > 0.999
    graded = finish_last_probabilities(torch.tensor([30, 28, 26, 10]), 2.0, 1.0)
    assert graded.tolist() == sorted(graded.tolist(), reverse=True) and float(graded[3]) < 1e-6
    # No variance (autoregressive): a tie for the most tokens shares the weight, nobody else has any.
    ties = finish_last_probabilities(torch.tensor([9, 9, 5]), 1.0, 0.0)
    assert abs(float(ties[0] - ties[1])) < 1e-9 and float(ties[2]) < 1e-6


# ------------------------------------------------------------------------------------------
# CostAwareTetris(drain=True)

PROBS = [[0.95, 0.9, 0.85, 0.8], [0.9, 0.85, 0.8, 0.7], [0.6, 0.5, 0.4, 0.3], [0.9, 0.8, 0.7, 0.6]]
COST = LinearCostModel({"step": 0.1, "query_token": 0.01}, padded=False)


def choose(drain, proposal, cost=COST):
    return CostAwareTetris(4, padded=False, cost_model=cost, drain=drain).choose(proposal)


def test_drain_rule_is_inert_without_progress_or_with_a_queue():
    for left, waiting in [(None, None), (None, False), ([40, 5, 60, 7], True), ([40, 5, 60, 7], None)]:
        proposal = chain_proposal(PROBS, left, waiting)
        assert not draining(proposal)
        assert torch.equal(choose(True, proposal), choose(False, proposal))
    # Draining, every request as far from its end: the maximum hardly moves, the goodput rule's choice.
    even = chain_proposal(PROBS, [40, 40, 40, 40], False)
    assert draining(even) and torch.equal(choose(True, even), choose(False, even))


def test_drain_rule_prefers_the_request_that_finishes_last():
    """Room for one candidate: the goodput rule takes the better estimate (request 1's, 0.72),
    the drain the candidate of the request with 60 tokens left (0.70) over one with 10."""
    probs = [[0.7, 0.6, 0.5, 0.4], [0.72, 0.62, 0.52, 0.42]]
    cost = LinearCostModel({"step": 0.1, "query_token": 0.06}, padded=False)
    assert per_request(choose(False, chain_proposal(probs, [60, 10], True), cost)) == [0, 1]
    assert per_request(choose(True, chain_proposal(probs, [60, 10], False), cost)) == [1, 0]
    assert per_request(choose(True, chain_proposal(probs, [10, 60], False), cost)) == [0, 1]


def test_drain_rule_never_verifies_candidates_beyond_the_tokens_left():
    cheap = LinearCostModel({"step": 0.1}, padded=False)  # verification is free
    proposal = chain_proposal(PROBS, [3, 3, 3, 3], False)
    assert per_request(choose(False, proposal, cheap)) == [4, 4, 4, 4]
    assert per_request(choose(True, proposal, cheap)) == [2, 2, 2, 2]  # 2 accepted + the bonus = 3
    # Trees: by depth. Two children of the root and a grandchild; 2 tokens left: the children only.
    tokens = torch.full((1, 3), 5, dtype=torch.long)
    logp = torch.tensor([[0.6, 0.3, 0.5]]).log()
    cum = torch.tensor([[0.6, 0.3, 0.3]]).log()
    tree = Proposal(
        tokens, torch.tensor([[-1, -1, 0]]), logp, cum, tokens_left=torch.tensor([2]), waiting=False
    )
    free = lambda m: torch.ones_like(m)  # noqa: E731
    assert drain_select(tree, cum.double().exp(), free, 3).tolist() == [[True, True, False]]
    assert drain_select(tree, cum.double().exp(), free, 1).tolist() == [[True, False, False]]


# ------------------------------------------------------------------------------------------
# The engine hands the policy the progress, live and in a replay


class ProgressSpy(Autoregressive):
    def __init__(self):
        self.seen = []

    def choose(self, proposal):
        self.seen.append((proposal.tokens_left.tolist(), proposal.waiting))
        return super().choose(proposal)


def test_generate_and_replay_fill_in_the_progress():
    model = tiny_llama(vocab_size=16, seed=0)
    spy = ProgressSpy()
    generate(model, [[1, 2, 3], [4, 5], [6, 7, 8]], spy, max_new_tokens=[3, 2, 2], max_batch_size=2)
    assert spy.seen[0] == ([3, 2], True)  # the third prompt waits
    assert spy.seen[1] == ([2, 1], True)
    assert spy.seen[2] == ([1, 2], False)  # it joined: nobody waits, the batch drains
    assert spy.seen[3] == ([1], False)
    trace = synthetic_trace([0.9] * 3, out_len=[6, 6, 3])
    spy = ProgressSpy()
    replay(trace, spy, batch_size=2, cost_model=COST)
    assert spy.seen[0] == ([6, 6], True)
    # The third joins at step 6 and stops after 3 tokens (as at an EOS): the replay reports what
    # an engine knows, max_new_tokens less the output, not the recorded length.
    assert spy.seen[6:] == [([6], False), ([5], False), ([4], False)]


class SelectionSpy(StandardSD):
    """StandardSD(4), recording each step's tokens left and verified drafts per request."""

    def __init__(self):
        super().__init__(4)
        self.seen = []

    def choose(self, proposal):
        selected = super().choose(proposal)
        self.seen.append((proposal.tokens_left.tolist(), selected.sum(1).tolist()))
        return selected


def test_no_policy_verifies_drafts_past_a_requests_budget():
    """A request with L tokens left ends on L - 1 accepted drafts and the bonus token: the engine
    drops deeper candidates before any policy chooses (``Proposal.usable``)."""
    trace = synthetic_trace([0.9, 0.9], T=6)  # drafts always right, 4 a step
    spy = SelectionSpy()
    run = replay(trace, spy, batch_size=2, cost_model=COST)
    # 4 accepted + the bonus, then 1 token left: nothing to verify (4 drafts before).
    assert spy.seen == [([6, 6], [4, 4]), ([1, 1], [0, 0])]
    assert run.metrics["generated_tokens"] == 12
    model = tiny_llama(vocab_size=16, seed=0)
    spy = SelectionSpy()
    prompts = [[1, 2, 3, 1, 2, 3, 1, 2], [4, 5, 4, 5, 4, 5], [6, 7, 6, 7, 6]]
    generate(model, prompts, spy, drafter=NgramDrafter(4), max_new_tokens=[3, 5, 2], max_batch_size=2)
    assert all(v < left for lefts, verified in spy.seen for left, v in zip(lefts, verified))


def synthetic_trace(estimates, T=6, D=4, out_len=None):
    """R requests whose drafts are always right, request r's estimated per token
    ``estimates[r]`` (recorded confidences, not a calibrating drafter)."""
    R = len(estimates)
    rng = np.random.default_rng(0)
    continuation = rng.integers(0, 50, size=(R, T + D + 1))
    positions = np.arange(T)[:, None] + np.arange(D)[None, :]
    draft_tokens = continuation[:, positions]  # [R, T, D]: the target's own next tokens
    logp = np.log(np.array(estimates, dtype=np.float32))[:, None, None] * np.ones((1, T, D), np.float32)
    return Trace(
        prompts=[[1, 2, 3 + r] for r in range(R)],
        continuation=continuation,
        out_len=np.array(out_len if out_len is not None else [T] * R),
        draft_tokens=draft_tokens,
        draft_parents=None,
        draft_features=None,
        draft_token_logprobs=logp,
        draft_cum_logprobs=logp.cumsum(2).astype(np.float32),
        accept_len=np.full((R, T), D),
        drafter={"kind": "synthetic", "max_draft": D},
        max_new_tokens=T,
    )


def test_replay_drain_rule_shortens_the_drain():
    """A burst of 5 requests at batch 3; the last admitted one's drafts are always right but
    estimated low: the goodput rule spends the step on the others' confident candidates, the
    drain on those of the request that finishes last. (With two such requests tied for last,
    one's token shortens nothing alone, and here the rule then chooses as the goodput rule.)"""
    trace = synthetic_trace([0.95, 0.95, 0.95, 0.95, 0.5], T=24)
    cost = LinearCostModel({"step": 1.0, "query_token": 0.05}, padded=False)
    runs = {
        drain: replay(trace, CostAwareTetris(4, padded=False, cost_model=cost, drain=drain), 3, cost)
        for drain in (False, True)
    }
    seconds = {d: r.metrics["simulated_seconds"] for d, r in runs.items()}
    assert runs[True].metrics["generated_tokens"] == runs[False].metrics["generated_tokens"]
    assert seconds[True] < seconds[False], seconds
    # Identical until the last admission (the queue empties): the rule acts in the drain only.
    first = next(i for i, (a, b) in enumerate(zip(runs[False].per_step, runs[True].per_step)) if a != b)
    joins = [
        i
        for i, s in enumerate(runs[False].per_step)
        if set(s["requests"]) - set(runs[False].per_step[max(0, i - 1)]["requests"])
    ]
    assert first > max(joins)


def test_live_flat_loop_with_the_drain_rule_decodes_the_greedy_output():
    """generate(flat=True) with every prompt admitted at once: the batch drains from its first
    step, the rule chooses every step, and greedy decoding still returns the target's output."""
    from tetris_ext.drafters import NgramDrafter

    model = tiny_llama(vocab_size=16, seed=0)
    prompts = [[1, 2, 3, 1, 2, 3], [4, 5, 4, 5], [6, 7, 8, 6, 7]]
    reference = generate(model, prompts, Autoregressive(), max_new_tokens=[12, 9, 6])
    cost = LinearCostModel({"step": 0.1, "query_token": 0.001}, padded=False)
    policy = CostAwareTetris(4, cost_model=cost, drain=True)
    out = generate(model, prompts, policy, drafter=NgramDrafter(4), max_new_tokens=[12, 9, 6], flat=True)
    assert out.tokens == reference.tokens
    assert out.stats["verified_tokens"] > 0
