"""cost_aware.CostAwareTetris: the floor and the budget follow from the step cost; limits
(TETRIS, StandardSD, autoregressive); the same object runs live and in a replay."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.cost_aware import KNEE_BRACKET, MIN_PROBE, PROBE, CostAwareTetris, _FixedLatency
from tetris_ext.cost_models import ROOFLINES, LinearCostModel, RecordedStepTimes, StepShape, a100_llama8b
from tetris_ext.decoding import generate
from tetris_ext.drafters import NgramDrafter
from tetris_ext.estimators import NgramLogistic
from tetris_ext.models import tiny_llama
from tetris_ext.policies import Autoregressive, StandardSD, StepFeedback, Tetris
from tetris_ext.proposal import Proposal
from tetris_ext.sim import record, replay

pytestmark = pytest.mark.usefixtures("one_thread")

PROBS = [[0.95, 0.9, 0.85, 0.5], [0.6, 0.3, 0.1, 0.05], [0.99, 0.98, 0.97, 0.96]]


def chain_proposal(probs):
    """Rows of per-token acceptance probabilities -> a chain proposal."""
    tokens = torch.full((len(probs), len(probs[0])), 7, dtype=torch.long)
    token_logprobs = torch.tensor(probs).log()
    return Proposal(tokens, None, token_logprobs, token_logprobs.cumsum(1))


def rows(selected):
    return [r.nonzero().flatten().tolist() for r in selected]


class KinkedCost:
    """`base` seconds up to `free` query tokens (padded or real), `steep` seconds per token beyond."""

    def __init__(self, free, steep, padded, base=0.1):
        self.name, self.free, self.steep, self.padded, self.base = "kinked", free, steep, padded, base

    def step_seconds(self, s):
        tokens = s.padded_query_tokens if self.padded else s.query_tokens
        return self.base + self.steep * max(0, tokens - self.free)

    def draft_seconds(self, s):
        return 0.0


def brute_force_prefix(probs, B, seconds_of, margin=0.0):
    """The best prefix of the batch-wide ranking by (expected + B) / seconds, verification's
    seconds (beyond the empty prefix's) charged 1 + margin times."""
    ranked = sorted((p for row in probs for p in row), reverse=True)
    charged = lambda m: seconds_of(m) + margin * (seconds_of(m) - seconds_of(0))  # noqa: E731
    values = [(sum(ranked[:m]) + B) / charged(m) for m in range(len(ranked) + 1)]
    return max(range(len(values)), key=values.__getitem__)


def test_flat_engine_verifies_the_ranked_prefix_that_maximises_goodput():
    proposal = chain_proposal(PROBS)
    cum = proposal.cum_logprobs.exp().tolist()
    for per_token in (1e-3, 5e-3, 2e-2, 0.05):
        cost = LinearCostModel({"step": 0.1, "query_token": per_token}, padded=False)
        policy = CostAwareTetris(4, padded=False, cost_model=cost)
        selected = policy.choose(proposal)
        best = brute_force_prefix(
            cum, 3, lambda m, per_token=per_token: 0.1 + per_token * (3 + m), policy.margin
        )
        assert int(selected.sum()) == best
        # The selection is TETRIS's for that budget, and every verified estimate clears the floor.
        assert torch.equal(selected, Tetris(capacity=best, extra=0).choose(proposal))
        chosen = proposal.cum_logprobs.exp()[selected]
        assert bool((chosen >= policy.last_floor - 1e-9).all())


def test_floor_rises_and_budget_falls_with_the_marginal_cost():
    proposal = chain_proposal(PROBS)
    budgets, floors = [], []
    for per_token in (1e-4, 1e-3, 1e-2, 1e-1):
        policy = CostAwareTetris(
            4, padded=False, cost_model=LinearCostModel({"step": 0.1, "query_token": per_token}, padded=False)
        )
        budgets.append(int(policy.choose(proposal).sum()))
        floors.append(policy.last_floor)
    assert budgets == sorted(budgets, reverse=True) and budgets[0] > budgets[-1]
    assert floors == sorted(floors)


def test_limits_tetris_standard_sd_and_autoregressive():
    proposal = chain_proposal(PROBS)
    B = 3
    # Free up to a capacity, prohibitive beyond: the capacity's best candidates = TETRIS.
    flat = CostAwareTetris(4, padded=False, cost_model=KinkedCost(B + 2 * B, 10.0, padded=False))
    assert torch.equal(flat.choose(proposal), Tetris(2, 2).choose(proposal))
    # Padded loop, free up to width 1 + k: every request its first k = StandardSD(k).
    for k in (1, 2, 3):
        padded = CostAwareTetris(4, padded=True, cost_model=KinkedCost(B * (1 + k), 10.0, padded=True))
        assert torch.equal(padded.choose(proposal), StandardSD(k).choose(proposal))
    # Prohibitive marginal cost: nothing is verified.
    for mode in (True, False):
        costly = CostAwareTetris(
            4, padded=mode, cost_model=LinearCostModel({"step": 0.01, "query_token": 1.0}, padded=mode)
        )
        assert int(costly.choose(proposal).sum()) == 0


def test_respects_capacity_and_never_selects_padding():
    proposal = chain_proposal(PROBS)
    proposal.tokens[1, 2:] = -1
    proposal.cum_logprobs[1, 2:] = -math.inf
    proposal.cum_logprobs[0, 3] = math.nan
    for mode in (True, False):
        policy = CostAwareTetris(
            4, padded=mode, capacity=4, cost_model=LinearCostModel({"step": 1.0}, padded=mode)
        )
        selected = policy.choose(proposal)
        assert int(selected.sum()) <= 4
        assert not selected[1, 2:].any() and not selected[0, 3]


def feed(policy, B, verified, seconds, width):
    """One step's feedback from an engine of the policy's shape: a padded one computed the
    [B, width] block, a flattened one the real tokens."""
    computed = B * width if policy.padded else B + sum(verified)
    policy.observe(
        StepFeedback(
            torch.tensor(verified), torch.zeros(B, dtype=torch.long), computed, 0.0, seconds, policy.padded
        )
    )


def test_online_fit_explores_then_follows_the_measured_cost():
    proposal = chain_proposal(PROBS)
    B = 3
    cheap, costly = CostAwareTetris(4, padded=True), CostAwareTetris(4, padded=True)
    for policy, per_token in ((cheap, 1e-4), (costly, 0.5)):
        for fraction in policy.exploration:
            w = round(fraction * 4)
            assert rows(policy.choose(proposal)) == [list(range(w))] * B  # exploration widths
            feed(policy, B, [w] * B, 0.1 + per_token * B * (1 + w), 1 + w)
    chosen = rows(cheap.choose(proposal))  # the full width; at most the worthless tail dropped
    assert chosen[0] == chosen[2] == [0, 1, 2, 3] and chosen[1][:3] == [0, 1, 2]
    assert int(costly.choose(proposal).sum()) == 0


def test_break_even_candidates_are_not_verified_but_free_ones_are():
    """Compute bound (every token costs): a candidate that merely breaks even is not worth
    verifying (it desynchronises requests; module doc, "Margin"); below a roofline's knee
    (free tokens) every candidate still is."""
    B, step, per_token = 4, 1e-3, 1e-3
    # Autoregressive goodput B / (step + B * per_token) = 800 tokens/s; a token pays its
    # 1 ms iff p >= 0.8. Candidates at 0.85 (6% above break even) on every row:
    proposal = chain_proposal([[0.85, 1e-3, 1e-3]] * B)
    for padded in (False, True):
        costly = LinearCostModel({"step": step, "query_token": per_token}, padded=padded)
        assert int(CostAwareTetris(3, padded=padded, cost_model=costly).choose(proposal).sum()) == 0
        # margin 0: the break-even rule takes them
        assert (
            int(CostAwareTetris(3, padded=padded, cost_model=costly, margin=0.0).choose(proposal).sum()) == B
        )
        free = KinkedCost(B * 2, 1.0, padded=padded)  # free up to one candidate per request
        assert int(CostAwareTetris(3, padded=padded, cost_model=free).choose(proposal).sum()) == B


def test_invalid_arguments():
    for make in (
        lambda: CostAwareTetris(0),
        lambda: CostAwareTetris(4, capacity=-1),
        lambda: CostAwareTetris(4, margin=-0.1),
        lambda: CostAwareTetris(4, padded=False, growth=1.0),
        lambda: CostAwareTetris(4, padded=False, probe=0.0),
    ):
        with pytest.raises(ValueError):
            make()


def test_same_decisions_live_and_in_replay():
    copier = tiny_llama(vocab_size=16, seed=0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 16, (4 + 3 * i,), generator=g).tolist() for i in range(5)]
    trace = record(copier, NgramDrafter(4), prompts, max_new_tokens=20, max_draft=4)
    cost = LinearCostModel({"step": 1e-3, "query_token": 2e-4}, padded=True)
    live = generate(
        copier,
        prompts,
        CostAwareTetris(4, cost_model=cost),
        drafter=NgramDrafter(4, calibration=NgramLogistic()),
        max_new_tokens=20,
        max_batch_size=3,
    )
    replayed = replay(
        trace,
        CostAwareTetris(4, cost_model=cost),
        batch_size=3,
        cost_model=cost,
        drafter=NgramDrafter(4, calibration=NgramLogistic()),
    )
    keys = ("requests", "verified", "accepted", "generated", "block_width")
    assert [{k: s[k] for k in keys} for s in replayed.per_step] == [
        {k: s[k] for k in keys} for s in live.stats["per_step"]
    ]
    assert len({s["block_width"] for s in live.stats["per_step"]}) >= 2  # it did choose widths


def test_flat_engine_fits_its_latency_on_real_tokens_only():
    flat = CostAwareTetris(4, padded=False)
    feed(flat, 3, [4, 0, 0], 0.1 + 0.01 * 7, 5)  # padded width 5 -> 15 padded tokens, 7 real
    assert flat.verify_latency.min_tokens == flat.verify_latency.max_tokens == 7  # real, not 15


def _fitted_decode_slope(report_prompt: bool, prompt_every: int = 2, seed: int = 0) -> float:
    """Seconds per decode token that a flat online fit reads from 80 steps of a vLLM-like engine
    at batch 32: 5 ms + 3 ms a decode token, and every ``prompt_every``-th step (0: none) also a joining
    request's 300-800 prompt tokens at 0.6 ms each (no logits); 2 ms of noise. The prompt
    tokens are reported apart (``prefill_tokens``) or, as before, counted as decode tokens."""
    B, g = 32, torch.Generator().manual_seed(seed)
    policy = CostAwareTetris(5, padded=False)
    for step in range(80):
        verified = torch.randint(0, 3, (B,), generator=g)
        decode = B + int(verified.sum())
        prompt = (
            int(torch.randint(300, 800, (1,), generator=g))
            if prompt_every and step % prompt_every == 1
            else 0
        )
        seconds = 0.005 + 0.003 * decode + 0.0006 * prompt + 0.002 * float(torch.randn(1, generator=g))
        computed, reported = (decode, prompt) if report_prompt else (decode + prompt, None)
        policy.observe(
            StepFeedback(verified, torch.zeros(B, dtype=torch.long), computed, 0.0, seconds, False, reported)
        )
    seconds = policy.verify_latency.predict_array(np.array([64.0, 96.0]), deviations=0)
    return float(seconds[1] - seconds[0]) / 32


def test_prompt_tokens_in_a_decode_step_are_priced_apart():
    """vLLM schedules a joining request's prompt into a decode step. Those tokens need no logits
    and cost a fraction of a verified token; counted as decode tokens they flattened the fitted
    slope (in vLLM at max_num_seqs 32 the proposer then verified ~50 drafts a step at VSR 0.6).
    Priced apart, the fit reads the decode steps' own slope, and a step without prompt tokens
    teaches the fit exactly what it taught before."""
    assert _fitted_decode_slope(report_prompt=True) == pytest.approx(0.003, rel=0.1)
    assert _fitted_decode_slope(report_prompt=False) < 0.0015
    never = _fitted_decode_slope(report_prompt=True, prompt_every=0)
    assert never == _fitted_decode_slope(report_prompt=False, prompt_every=0)


def test_prompts_told_before_the_choice_price_the_candidates_beside_them():
    """A chunked-prefill engine that tells the step's prompt tokens (Proposal.prefill_tokens):
    below the knee the candidates ride along free, but beside a long prompt the step is past it
    and each candidate costs compute, so the policy verifies fewer (the brute force on that
    forward, the prompts' own cost left to them); with no prompt it chooses as before."""
    from dataclasses import replace

    proposal = chain_proposal(PROBS)
    cum = proposal.cum_logprobs.exp().tolist()
    cost = KinkedCost(free=10, steep=0.02, padded=False)
    forward = lambda tokens: cost.step_seconds(StepShape(requests=3, query_tokens=tokens))  # noqa: E731
    counts = {}
    for prompt in (None, 0, 5, 40):
        policy = CostAwareTetris(4, padded=False, cost_model=cost)
        counts[prompt] = int(policy.choose(replace(proposal, prefill_tokens=prompt)).sum())
        p = prompt or 0
        seconds = lambda m, p=p: forward(3 + m + p) - (forward(3 + p) - forward(3))  # noqa: E731
        assert counts[prompt] == brute_force_prefix(cum, 3, seconds, policy.margin)
    assert counts[None] == counts[0] == 7 and counts[5] < 7 and counts[40] < 7
    with pytest.raises(ValueError, match="prefill_tokens"):
        replace(proposal, prefill_tokens=-1)


@pytest.mark.parametrize("machine", ["A100-8B", "4xH100-70B", "A100-8B chunked", "line"])
@pytest.mark.parametrize("requests", [32, 128])
def test_a_known_cost_is_priced_exactly_at_every_step_size(machine, requests):
    """The known cost's interpolation (_FixedLatency) equals the model at every size the policy
    asks about, the roofline's knee included (a segment with a kink inside is halved until
    its parts are linear). Interpolating over 33 sizes, it charged the free tokens below the knee part of the
    compute slope: up to 4% of a step off at 128 requests on the A100 / 8B roofline."""
    name, _, chunked = machine.partition(" ")
    if name == "line":
        cost = LinearCostModel({"step": 0.01, "query_token": 1e-4, "attention_pair": 1e-8}, padded=False)
    else:
        cost = ROOFLINES[name](chunked_prefill=bool(chunked))
    context = requests * 300
    sizes = requests + torch.arange(requests * 8 + 1)
    fixed = _FixedLatency(cost, padded=False)
    predicted = fixed.predict(requests, sizes, sizes, context)
    exact = torch.tensor(
        [fixed._price(requests, int(t), int(t), context) for t in sizes], dtype=torch.float64
    )
    torch.testing.assert_close(predicted, exact, rtol=1e-9, atol=0)


def test_a_recorded_run_is_no_known_cost_model():
    """RecordedStepTimes hands out a live run's steps in order, one per replayed step: it cannot
    predict a step, and the policy says so instead of consuming the recording with its questions."""
    recorded = RecordedStepTimes(
        [{"requests": [0], "draft_seconds": 0.0, "select_seconds": 0.0, "verify_seconds": 0.01}]
    )
    policy = CostAwareTetris(2, padded=False, cost_model=recorded)
    probs = torch.full((1, 2), 0.9)
    with pytest.raises(TypeError, match="RecordedStepTimes"):
        policy.choose(Proposal(torch.full((1, 2), 3), None, probs.log(), probs.log().cumsum(1)))
    assert recorded.next == 0


def test_a_known_roofline_prices_the_kv_cache_the_step_reads():
    """With a known roofline the policy prices the step it will run, the requests' KV cache
    (Proposal.context_tokens) read beside the weights: on Llama-8B / A100 the step of 64
    requests of 500 tokens stays memory bound to ~145 tokens, not the ~115 of a step without
    context, so likely drafts fill it that far and no further (past the knee each costs compute
    that a draft below 0.97 does not repay): its last flat size, or the one after it, which
    crosses the knee part of the way. Without a context it chooses as before."""
    B, N = 64, 8
    token_probs = torch.linspace(0.97, 0.9, B)[:, None].expand(B, N)
    proposal = Proposal(torch.full((B, N), 3), None, token_probs.log(), token_probs.log().cumsum(1))
    cost = a100_llama8b()
    chosen = {}
    for context in (None, 0, B * 500):
        policy = CostAwareTetris(N, padded=False, cost_model=cost, drain=False, end_hazard=False)
        chosen[context] = B + int(policy.choose(replace(proposal, context_tokens=context)).sum())
    assert chosen[None] == chosen[0]
    for context, knee in ((0, 114), (B * 500, 142)):
        shape = lambda tokens, c=context: StepShape(  # noqa: E731
            requests=B, query_tokens=tokens, context_tokens=c, attention_work=tokens * (c // B + 1)
        )
        flat = cost.step_seconds(shape(B))
        assert cost.step_seconds(shape(knee)) == pytest.approx(flat, rel=1e-12)  # the knee is there
        assert cost.step_seconds(shape(knee + 1)) > flat * (1 + 1e-9)
        assert knee <= chosen[context] <= knee + 1, chosen
    assert chosen[B * 500] - chosen[0] >= 16
    with pytest.raises(ValueError, match="context_tokens"):
        replace(proposal, context_tokens=-1)


class ContextSpy(Autoregressive):
    def __init__(self):
        self.seen = []

    def choose(self, proposal):
        self.seen.append(proposal.context_tokens)
        return super().choose(proposal)


def test_generate_and_replay_tell_the_policy_the_steps_context():
    """Proposal.context_tokens: the tokens the step's requests hold in the cache, each its
    prompt and output less the root (not cached yet): [3, 2] prompt tokens, then one more a
    request per step; the third prompt (3 tokens) joins as the first request leaves."""
    spy = ContextSpy()
    model = tiny_llama(vocab_size=16, seed=0)
    generate(model, [[1, 2, 3], [4, 5], [6, 7, 8]], spy, max_new_tokens=[3, 2, 2], max_batch_size=2)
    assert spy.seen == [(3 - 1) + (2 - 1), 3 + 2, (3 + 2 - 1) + (3 - 1), 3]
    spy = ContextSpy()
    trace = record(model, NgramDrafter(2), [[1, 2, 3], [4, 5]], max_new_tokens=4, max_draft=2)
    replay(trace, spy, batch_size=2, cost_model=LinearCostModel({"step": 0.01}, padded=False))
    assert spy.seen == [3, 5, 7, 9]


# Step times measured live (Gemma 3 270M bf16, one thread, batch 8, held-out code prompts of
# 300-500 tokens): by block width. A one-token step is *slower* than a 2-4 token one there
# (PyTorch's CPU attention for a single query), the kind of bump a linear fit cannot follow.
MEASURED_CODE_SECONDS = {1: 0.19, 2: 0.13, 3: 0.125, 4: 0.12, 5: 0.15, 6: 0.2, 7: 0.22, 8: 0.25, 9: 0.3}


def test_padded_online_fit_does_not_collapse_into_autoregressive_decoding():
    """Regression: the live code run took 94 steps where StandardSD(3) took 64. The online fit
    split the cost between real and padded tokens into opposite slopes (+0.011, -0.010 s per
    token), the padded floor read the real slope alone, rose above 1, and every later step
    verified nothing, which taught the fit nothing new."""
    B = 8
    probs = torch.tensor([[0.75 * 0.85**i for i in range(8)]] * B)
    proposal = Proposal(torch.full((B, 8), 7), None, probs.log(), probs.log().cumsum(1))
    policy = CostAwareTetris(8, padded=True)
    # The exploration steps of that run: widths 9, 1, 5 (64, 0, 26 verified drafts).
    for verified, seconds, width in (
        ([8] * B, 0.307, 9),
        ([0] * B, 0.19, 1),
        ([4, 3, 3, 3, 4, 3, 3, 3], 0.176, 5),
    ):
        policy.choose(proposal)
        feed(policy, B, verified, seconds, width)
    for _ in range(6):
        per_row = policy.choose(proposal).sum(1)
        width = int(per_row.max()) + 1
        assert int(per_row.min()) >= 2, f"verified {per_row.tolist()} with floor {policy.last_floor}"
        feed(policy, B, per_row.tolist(), MEASURED_CODE_SECONDS[width], width)
    assert bool((policy.verify_latency.coefficients[1:] >= 0).all())


def test_latency_slopes_are_never_negative():
    """Noisy steps where real and padded tokens nearly move together: least squares alone
    gives one slope a negative sign; the fit keeps both >= 0 and still predicts the data."""
    from tetris_ext.policies import LatencyModel

    model = LatencyModel()
    steps = [(72, 72, 0.307), (8, 8, 0.19), (34, 40, 0.176), (10, 16, 0.15)] + [
        (8, 8, 0.2 + 0.01 * (i % 3)) for i in range(20)
    ]
    for real, padded, seconds in steps:
        model.observe(real, padded, seconds)
    assert bool((model.coefficients[1:] >= 0).all())
    unconstrained = torch.linalg.lstsq(model.xtx, model.xty.unsqueeze(1)).solution.squeeze(1)
    assert bool((unconstrained[1:] < 0).any())  # the data do pull a slope negative
    assert float(model.predict(8, 8)) == pytest.approx(0.2, abs=0.02)


def test_padded_policy_learns_a_costly_width_a_line_cannot_fit():
    """A one-token step that costs more than a 2-4 token one (MEASURED_CODE_SECONDS): after steps
    at several widths, the policy predicts width 1 near its measured cost and prefers a wider
    block even for doubtful drafts, where the line through the same points chooses width 1."""
    B = 8
    probs = torch.tensor([[0.05 * 0.5**i for i in range(8)]] * B)
    proposal = Proposal(torch.full((B, 8), 7), None, probs.log(), probs.log().cumsum(1))
    widths = torch.arange(1, 10, dtype=torch.float64) * B
    chosen = {}
    for bumps in (True, False):
        policy = CostAwareTetris(8, padded=True, width_residual=bumps)
        for width in (9, 1, 5, 1, 4, 4, 3, 3, 1, 4, 2, 3):
            feed(policy, B, [width - 1] * B, MEASURED_CODE_SECONDS[width], width)
        predicted = policy._latency(B, widths, widths)
        chosen[bumps] = int(policy.choose(proposal).sum(1).max()) + 1
        if bumps:
            assert float(predicted[0]) == pytest.approx(MEASURED_CODE_SECONDS[1], rel=0.1)
            assert float(predicted[0]) > float(predicted[2])
        else:
            assert float(predicted[0]) < float(predicted[2])
    assert chosen[False] == 1 and chosen[True] > 1


def mkl_head_staircase(tokens):
    """A packed step on an AVX-512 host in float32 (bench/README.md, "The drain's steps on an
    AVX-512 host"): below 16 tokens MKL's GEMM for the output head costs as if it reread its
    weights every three rows (+65 ms each), from 16 as if once; 4 ms a token past 24."""
    if tokens < 16:
        return 0.04 + 0.065 * -(-tokens // 3)
    return 0.24 + 0.004 * max(0, tokens - 24)


def test_step_residual_interpolates_between_the_sizes_seen():
    """Each size's running mean less the current fit, shrunk by n / (n + 1); between sizes
    seen, interpolated; beyond them, 0. A padded loop's widths are not interpolated."""
    from tetris_ext.cost_aware import StepResidual

    fit = lambda tokens: 0.01 * tokens  # noqa: E731
    sizes = StepResidual(interpolate=True)
    sizes.observe(10, 10, 0.1 + 0.2)  # 0.2 above the fit, once: 0.1 after shrinking
    for seconds in (0.2, 0.2, 0.2):
        sizes.observe(20, 20, seconds)  # on the fit
    residual = sizes.predict(np.array([5, 10, 15, 20, 25, 400]), fit)
    assert residual == pytest.approx([0.0, 0.1, 0.05, 0.0, 0.0, 0.0])
    widths = StepResidual(4)
    widths.observe(1, 8, 0.08 + 0.3)
    widths.observe(3, 24, 0.24)
    assert widths.predict(np.array([1, 2, 3, 9]), fit) == pytest.approx([0.15, 0.0, 0.0, 0.0])


def test_step_residual_counts_only_what_stands_out_of_the_noise():
    """``denoise``: no residual until a size has been seen twice (no noise level known); on a
    line plus noise the residuals of sizes seen a few times shrink to (nearly) nothing, while a
    size that costs 10 noise deviations more keeps nearly all of its residual."""
    from tetris_ext.cost_aware import StepResidual

    fit = lambda tokens: 0.04 + 0.002 * tokens  # noqa: E731
    rng = np.random.default_rng(0)
    sizes = StepResidual(interpolate=True, denoise=True)
    sizes.observe(20, 20, 0.2)
    assert sizes.predict(np.array([20]), fit) == pytest.approx([0.0])  # no size seen twice yet
    for _ in range(4):
        for tokens in range(8, 40, 2):
            sizes.observe(tokens, tokens, float(fit(tokens)) + 0.005 * rng.standard_normal())
        sizes.observe(13, 13, float(fit(13)) + 0.05 + 0.005 * rng.standard_normal())
    residual = sizes.predict(np.arange(8, 40), fit)
    plain = StepResidual(interpolate=True)
    plain.seconds, plain.tokens, plain.count = sizes.seconds, sizes.tokens, sizes.count
    noise = plain.predict(np.arange(8, 40, 2), fit)
    assert np.abs(residual[::2]).mean() < 0.5 * np.abs(noise).mean()  # noise, mostly shrunk away
    assert residual[13 - 8] > 0.9 * 0.05 * 4 / 5  # the costly size: n / (n + 1), barely more


def test_flat_policy_learns_a_costly_size_a_line_cannot_fit():
    """The drain of a live flat-loop run on an AVX-512 host: 3 requests left, steps of 10-15
    tokens cost more than steps of 16-24. After steps at sizes a run shows (full batches of 8
    from 8 to 48 tokens, a few drain steps), the policy with the residual per size verifies
    enough to reach the cheap sizes; the line alone (``size_residual=False``) stops in the
    costly ones, at 1.5x the seconds."""
    B = 3
    probs = torch.tensor([[0.8 ** (i + 1) for i in range(8)]] * B, dtype=torch.float64)
    proposal = Proposal(torch.full((B, 8), 7), None, probs.log().float(), probs.log().cumsum(1).float())
    sizes = [8, 24, 16, 40, 32, 20, 48, 12, 28, 36, 9, 18, 44, 24, 30, 14, 22, 3, 26, 11]
    chosen = {}
    for residual in (True, False):
        policy = CostAwareTetris(8, padded=False, size_residual=residual)
        for tokens in sizes:
            batch = 8 if tokens >= 8 else B
            feed(policy, batch, [tokens - batch] + [0] * (batch - 1), mkl_head_staircase(tokens), 1)
        chosen[residual] = B + int(policy.choose(proposal).sum())
    assert 16 <= chosen[True] <= 24 and 10 <= chosen[False] <= 15
    assert mkl_head_staircase(chosen[False]) > 1.5 * mkl_head_staircase(chosen[True])


def roofline_seconds(tokens):
    """A 70B-on-4-GPUs-like step: 15 ms flat up to a knee at 240 tokens, 0.06 ms a token beyond."""
    return 0.015 + 6e-5 * max(0, tokens - 240)


def test_knee_fit_recovers_a_roofline_a_line_cannot():
    """The steps a policy takes around a roofline's knee: the knee fit predicts every size
    within 2%; the line through the same steps charges the free tokens below the knee (and
    undercharges past it) by far more."""
    from tetris_ext.policies import KneeLatencyModel, LatencyModel

    knee, line = KneeLatencyModel(), LatencyModel()
    for tokens in (128, 96, 256, 512, 230, 235, 228, 300, 232):
        for model in (knee, line):
            model.observe(tokens, tokens, roofline_seconds(tokens))
    sizes = [64, 128, 200, 240, 300, 600, 1000]
    truth = torch.tensor([roofline_seconds(x) for x in sizes], dtype=torch.float64)
    assert torch.allclose(knee.predict(sizes), truth, rtol=0.02)
    assert float(((line.predict(sizes, sizes) - truth).abs() / truth).max()) > 0.1
    assert knee.min_tokens == 96 and knee.max_tokens == 512


def cpu_like_steps(count, seed=0, slope=0.002, intercept=0.04):
    """(tokens, seconds) of a CPU's flat verification step: a line (40 ms + 2 ms a token) plus
    a few ms of noise, 9-40 tokens, as bench/results/cost_aware_fit_log_bundled*.json."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(9, 41, (count,), generator=g)
    noise = 0.004 * torch.randn(count, generator=g, dtype=torch.float64)
    return [(int(t), intercept + slope * int(t) + float(e)) for t, e in zip(tokens, noise)]


def test_knee_evidence_reads_a_noisy_line_as_a_line_and_a_roofline_as_a_knee():
    """Without the evidence test some knee of the grid always fits a noisy line's noise a
    little better, and the fit jumps between knees (a floor moved by half, live); with it the
    line stays a line, while a roofline's knee (noise and all) still passes by far."""
    from tetris_ext.cost_aware import KNEE_EVIDENCE
    from tetris_ext.policies import KneeLatencyModel

    knees = {}
    for evidence in (0.0, KNEE_EVIDENCE):
        fit = KneeLatencyModel(knee_evidence=evidence)
        seen = set()
        for tokens, seconds in cpu_like_steps(120):
            fit.observe(tokens, tokens, seconds)
            seen.add(fit.knee)
        knees[evidence] = seen
    assert knees[0.0] != {0.0}  # the unguarded fit read knees into the noise
    assert knees[KNEE_EVIDENCE] == {0.0}
    roofline = KneeLatencyModel(knee_evidence=KNEE_EVIDENCE)
    g = torch.Generator().manual_seed(1)
    for tokens in torch.randint(64, 700, (40,), generator=g).tolist():
        roofline.observe(
            tokens, tokens, roofline_seconds(tokens) * (1 + 0.01 * float(torch.randn(1, generator=g)))
        )
    assert roofline.knee == pytest.approx(240, rel=0.1)
    assert roofline.slope == pytest.approx(6e-5, rel=0.1)


def test_knee_evidence_needs_more_than_three_steps():
    """Some knee fits any three points exactly: a knee needs a fourth step to be believed."""
    from tetris_ext.policies import KneeLatencyModel

    fit = KneeLatencyModel(knee_evidence=30.0)
    for tokens in (100, 240, 500):
        fit.observe(tokens, tokens, roofline_seconds(tokens))
    assert fit.knee == 0.0
    fit.observe(300, 300, roofline_seconds(300))
    assert fit.knee == pytest.approx(240, rel=0.05)


def test_forgetting_follows_a_cost_that_changes():
    """The step's slope doubles halfway (the context grew): a fit that forgets old steps ends
    near the new slope, the running sums without forgetting halfway between."""
    from tetris_ext.policies import KneeLatencyModel

    slopes = {}
    for forget in (0.0, 0.05):
        fit = KneeLatencyModel(forget=forget, knee_evidence=30.0)
        for tokens, seconds in cpu_like_steps(150, seed=2) + cpu_like_steps(150, seed=3, slope=0.004):
            fit.observe(tokens, tokens, seconds)
        slopes[forget] = fit.slope
    assert slopes[0.05] == pytest.approx(0.004, rel=0.1)
    assert slopes[0.0] < 0.0035


def test_forgetting_keeps_the_slope_while_steps_settle_on_one_size():
    """A few steps of two sizes tell the slope (60 us a token); then 300 steps of one size whose
    seconds creep up 60% (a compute-bound policy verifying nothing while contexts grow): the
    forgotten window alone holds almost only that size, and its slope drifts towards 0 (every
    token free); falling back on every step seen keeps most of it."""
    from tetris_ext.policies import KneeLatencyModel

    def run(min_spread):
        fit = KneeLatencyModel(forget=0.05, knee_evidence=30.0, min_spread=min_spread)
        for i in range(6):
            tokens = 512 if i % 2 else 1024
            fit.observe(tokens, tokens, 0.01 + 6e-5 * tokens)
        for i in range(300):
            fit.observe(512, 512, (0.01 + 6e-5 * 512) * (1 + 0.6 * i / 300))
        return fit.slope

    assert run(1.0) > 3e-5  # every step: at least half the true slope
    assert run(0.0) < 2e-5  # the forgotten window alone


def test_clipping_bounds_an_outlier_step_inside_the_seen_sizes_only():
    """A preempted step (+100 ms) among sizes already seen moves a clipped fit by a few
    sigmas' worth at most; a step past the largest seen is never clipped (it is how the fit
    learns the unknown)."""
    from tetris_ext.policies import KneeLatencyModel

    steps = cpu_like_steps(60, seed=4)
    fits = {clip: KneeLatencyModel(knee_evidence=30.0, clip=clip) for clip in (None, 3.0)}
    for fit in fits.values():
        for tokens, seconds in steps:
            fit.observe(tokens, tokens, seconds)
    before = float(fits[3.0].predict(20))
    for fit in fits.values():
        fit.observe(20, 20, before + 0.1)
    assert float(fits[None].predict(20)) - before > 1e-3
    assert float(fits[3.0].predict(20)) - before < 0.4e-3
    far = KneeLatencyModel(clip=3.0)
    for tokens, seconds in steps:
        far.observe(tokens, tokens, seconds)
    far.observe(200, 200, 2.0)  # beyond every size seen: taken as measured
    assert float(far.predict(200)) > 1.0
    placed = KneeLatencyModel(knee_evidence=30.0, clip=3.0)  # a step placed to measure: clip=False
    for tokens, seconds in steps:
        placed.observe(tokens, tokens, seconds)
    placed.observe(20, 20, before + 0.1, clip=False)
    assert float(placed.predict(20)) - before > 1e-3  # as far as the unclipped fit moves


def test_online_flat_floor_recovers_from_a_slow_spell():
    """The live flat loop's fit: a slow spell on the first 20 steps (the other tenants of a
    shared CPU) that hits the large steps hardest (10 ms + 5 ms a token instead of 40 ms + 2 ms;
    in the tuning logs' worst run the fit read 2.7 ms a token for the rest of the run) must not
    set the floor for the rest of the run. After 100 normal steps the policy's floor is within
    2% of a policy's that never saw the spell; running sums without forgetting keep the spell
    (bench/README.md, "fit-log"). The fit's own slope, without ``optimism`` (which lowers an
    uncertain slope and so would also soften the unforgetting fit's spell), and without the
    residual per step size (``size_residual``, which follows each size's recent steps and so
    would also mend the unforgetting fit's floor)."""
    from tetris_ext.policies import KneeLatencyModel

    B = 8
    g = torch.Generator().manual_seed(5)
    probs = (0.2 + 0.8 * torch.rand(B, 8, generator=g, dtype=torch.float64)).cumprod(1)
    proposal = Proposal(torch.full((B, 8), 7), None, probs.log().float(), probs.log().float())
    spell = cpu_like_steps(20, seed=6, slope=0.005, intercept=0.01)
    normal = cpu_like_steps(100, seed=7)
    floors = {}
    for name, steps in (("spell", spell + normal), ("unforgetting", spell + normal), ("calm", normal)):
        policy = CostAwareTetris(8, padded=False, optimism=0.0, size_residual=False)
        if name == "unforgetting":
            policy.verify_latency = KneeLatencyModel(knee_evidence=30.0)
        for tokens, seconds in steps:
            verified = torch.zeros(B, dtype=torch.long)
            verified[: tokens - B] = 1
            verified[0] += max(0, tokens - 2 * B)
            feed(policy, B, verified.tolist(), seconds, 1)
        policy.choose(proposal)
        floors[name] = policy.last_floor
    assert floors["spell"] == pytest.approx(floors["calm"], rel=0.02)
    assert floors["unforgetting"] > 1.05 * floors["calm"]


def test_knee_fit_rejects_bad_settings():
    from tetris_ext.policies import KneeLatencyModel

    for kwargs in (
        {"forget": 1.0},
        {"forget": -0.1},
        {"knee_evidence": -1},
        {"clip": 0.0},
        {"clip_floor": -1},
        {"min_spread": -1},
    ):
        with pytest.raises(ValueError, match="KneeLatencyModel"):
            KneeLatencyModel(**kwargs)


def test_online_flat_policy_finds_the_known_cost_budget_cheaply():
    """A flattened engine on a roofline, batch 64, the cost fitted online: within a few steps
    the policy verifies what the known-cost policy verifies, and getting there never costs a
    step of more than twice the largest step seen so far (the fixed exploration fractions
    verified every candidate: 64 x 8 at 0.06 ms each, a 32 ms step where 15 ms buys the
    knee's worth)."""
    B, N = 64, 8
    g = torch.Generator().manual_seed(0)
    first = 0.3 + 0.69 * torch.rand(B, 1, generator=g, dtype=torch.float64)
    probs = first * torch.linspace(1.0, 0.4, N, dtype=torch.float64).cumprod(0)
    proposal = Proposal(torch.full((B, N), 7), None, probs.log().float(), probs.log().float())
    roofline = KinkedCost(240, 6e-5, padded=False)
    known = int(CostAwareTetris(N, padded=False, cost_model=roofline).choose(proposal).sum())
    online, largest = CostAwareTetris(N, padded=False), B
    for _ in range(12):
        verified = online.choose(proposal).sum(1)
        tokens = B + int(verified.sum())
        assert tokens <= 2 * largest, f"a step of {tokens} tokens after at most {largest}"
        largest = max(largest, tokens)
        seconds = roofline.step_seconds(StepShape(requests=B, query_tokens=tokens))
        feed(online, B, verified.tolist(), seconds, N + 1)
    assert abs(int(online.choose(proposal).sum()) - known) <= 0.03 * known


def test_online_flat_probe_is_bounded_where_every_token_costs():
    """Batch 256 on a step compute bound from the first token (the 70B roofline's shape
    there: 0.06 ms a token), the cost fitted online: before the fit knows a slope the policy
    verifies at most B / 16 candidates, then nothing (a second step size at no risk), and from
    then on nothing, as the known-cost policy and autoregressive decoding do. (The previous
    trust region's first probe verified B candidates: a step of twice the cost.)"""
    B, N = 256, 8
    g = torch.Generator().manual_seed(1)
    first = 0.5 + 0.45 * torch.rand(B, 1, generator=g, dtype=torch.float64)
    probs = first * torch.linspace(1.0, 0.6, N, dtype=torch.float64).cumprod(0)
    proposal = Proposal(torch.full((B, N), 7), None, probs.log().float(), probs.log().float())
    compute_bound = KinkedCost(0, 6e-5, padded=False, base=1.5e-3)
    assert int(CostAwareTetris(N, padded=False, cost_model=compute_bound).choose(proposal).sum()) == 0
    online = CostAwareTetris(N, padded=False)
    chosen = []
    for _ in range(10):
        verified = online.choose(proposal).sum(1)
        chosen.append(int(verified.sum()))
        seconds = compute_bound.step_seconds(StepShape(requests=B, query_tokens=B + chosen[-1]))
        feed(online, B, verified.tolist(), seconds, N + 1)
    assert 0 < chosen[0] <= math.ceil(B * PROBE), chosen
    assert chosen[1:] == [0] * 9, chosen


def test_online_flat_policy_does_not_stick_at_verifying_nothing_on_a_noisy_line():
    """Batch 8 on a CPU-like flat step (38 ms + 2.2 ms a token, 5 ms of noise), where the known
    cost verifies a dozen candidates a step: the first probe must move the step's seconds by
    more than the noise. A one-candidate probe (B / 16 alone) let noise read a steep slope in
    some runs, and the policy then verified nothing for good (5 of 20 seeds)."""
    B, N = 8, 5
    stuck = 0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        policy, late = CostAwareTetris(N, padded=False), 0
        for step in range(40):
            first = 0.5 + 0.45 * torch.rand(B, 1, generator=g, dtype=torch.float64)
            probs = first * torch.linspace(1.0, 0.75, N, dtype=torch.float64).cumprod(0)
            logprobs = probs.log().float()
            verified = policy.choose(Proposal(torch.full((B, N), 7), None, logprobs, logprobs)).sum(1)
            tokens = B + int(verified.sum())
            seconds = 0.038 + 0.0022 * tokens + 0.005 * float(torch.randn(1, generator=g))
            feed(policy, B, verified.tolist(), seconds, N + 1)
            late += int(verified.sum()) if step >= 10 else 0
        stuck += late == 0
    assert stuck == 0


def test_online_flat_probe_never_exceeds_its_bound_then_grows_where_tokens_are_free():
    """Until the fit has seen two step sizes a step verifies at most ceil(probe x B) candidates
    (at least MIN_PROBE, or B), whatever the estimates; then, where tokens are free, the trust
    region doubles from the largest step seen."""
    for B, probe in ((8, PROBE), (64, PROBE), (64, 0.25), (512, PROBE)):
        proposal = Proposal(
            torch.full((B, 8), 7), None, torch.zeros(B, 8), torch.full((B, 8), -1e-3)
        )  # every candidate ~certain
        policy = CostAwareTetris(8, padded=False, probe=probe)
        first = int(policy.choose(proposal).sum())
        assert first == max(math.ceil(probe * B), min(B, MIN_PROBE))
        feed(policy, B, [1] * first + [0] * (B - first), 0.02, 9)
        assert int(policy.choose(proposal).sum()) == 0  # the second size, at no risk
        feed(policy, B, [0] * B, 0.02, 9)
        assert int(policy.choose(proposal).sum()) == min(8 * B, 2 * (B + first) - B)  # flat: doubles


def _settled_budget(policy, proposal, cost, steps=16):
    """The candidates ``policy`` verifies after ``steps`` steps priced by ``cost``."""
    B, N = proposal.tokens.shape
    for _ in range(steps):
        verified = policy.choose(proposal).sum(1)
        seconds = cost.step_seconds(StepShape(requests=B, query_tokens=B + int(verified.sum())))
        feed(policy, B, verified.tolist(), seconds, N + 1)
    return int(policy.choose(proposal).sum())


def test_online_flat_fit_locates_the_knee_whatever_the_first_probe():
    """Batch 64 on rooflines whose knee binds (nothing pays past it) and lies between the trust
    region's doublings: with the knee's bracketing (``knee_bracket``, opt-in) the online
    policy's steps settle at the knee whatever the first probe's size. Without it (the
    default) they settle where the doublings happened to land (the fit takes the lowest knee
    between its last flat step and its one steep step), 11 of these 15 runs 18-64 tokens below the knee."""
    B, N = 64, 8
    g = torch.Generator().manual_seed(2)
    first = 0.6 + 0.39 * torch.rand(B, 1, generator=g, dtype=torch.float64)
    probs = first * torch.linspace(1.0, 0.9, N, dtype=torch.float64).cumprod(0)
    proposal = Proposal(torch.full((B, N), 7), None, probs.log().float(), probs.log().float())
    missed = []
    for knee in (180, 200, 215, 230, 260):
        roofline = KinkedCost(knee, 1.5e-4, padded=False, base=0.015)
        for min_probe in (1, 8, 16):
            online = CostAwareTetris(N, padded=False, min_probe=min_probe, knee_bracket=KNEE_BRACKET)
            step = B + _settled_budget(online, proposal, roofline)
            assert knee - knee / 16 <= step <= knee + 2, (knee, min_probe, step)
            unbracketed = CostAwareTetris(N, padded=False, min_probe=min_probe)
            step = B + _settled_budget(unbracketed, proposal, roofline)
            missed += [(knee, min_probe, step)] if step < knee - knee / 16 else []
    assert len(missed) >= 8, missed  # the test can tell the difference


def test_optimistic_slope_is_the_fit_when_noiseless_and_lower_by_its_standard_error_when_noisy():
    import random

    from tetris_ext.policies import KneeLatencyModel

    exact = KneeLatencyModel()
    for tokens in (8, 16, 8, 12, 8):
        exact.observe(tokens, tokens, 0.038 + 0.0022 * tokens)
    assert exact.slope_error < 1e-9
    torch.testing.assert_close(exact.predict([8, 40], deviations=2.0), exact.predict([8, 40]))
    rng = random.Random(0)
    noisy = KneeLatencyModel()
    for tokens in [16] + [8] * 30:  # one probe, then steps of one size: a poorly known slope
        noisy.observe(tokens, tokens, (0.038 + 0.0022 * tokens) * (1 + 0.15 * rng.uniform(-1, 1)))
    assert noisy.slope_error > 0.0003
    at_mean = noisy.mean_z + noisy.knee
    torch.testing.assert_close(noisy.predict(at_mean, deviations=1.0), noisy.predict(at_mean))
    lowered = max(0.0, noisy.slope - 1.0 * noisy.slope_error)
    gap = noisy.predict(40) - noisy.predict(40, deviations=1.0)
    assert float(gap) == pytest.approx((noisy.slope - lowered) * (40 - at_mean), rel=1e-9)
    with pytest.raises(ValueError, match="optimism"):
        CostAwareTetris(8, padded=False, optimism=-1.0)


def test_end_hazard_discounts_deep_candidates_by_where_requests_end():
    """end_hazard: a candidate at depth d counts p x P(its request reaches depth d), by output
    length from the requests seen (tetris_ext.end_hazard); until one has ended early, the
    default's choice. A request just short of the length where others ended loses its deep
    candidates; one well before it keeps them."""
    probs = [[0.95, 0.9, 0.85, 0.8], [0.95, 0.9, 0.85, 0.8]]
    cost = LinearCostModel({"step": 0.1, "query_token": 1e-2}, padded=False)
    plain = CostAwareTetris(4, padded=False, cost_model=cost, end_hazard=False)
    hazard = CostAwareTetris(4, padded=False, cost_model=cost)  # on by default (END_HAZARD)
    lens = torch.tensor([2, 8])  # request 1 at 8 tokens: others ended at their 10th
    proposal = replace(chain_proposal(probs), output_lens=lens)
    timing = dict(draft_seconds=0.0, verify_seconds=0.2, padded=False)

    def step(before, after, ended):
        n = len(before)
        counts = dict(verified=torch.zeros(n, dtype=torch.long), accepted=torch.zeros(n, dtype=torch.long))
        feedback = StepFeedback(
            **counts,
            computed_tokens=n,
            **timing,
            output_lens=torch.tensor(after),
            generated=torch.tensor(after) - torch.tensor(before),
            ended_early=torch.tensor(ended),
        )
        for policy in (plain, hazard):
            policy.observe(feedback)

    step([0] * 8, [6] * 8, [False] * 8)  # eight requests, none ended yet: the same choice
    assert torch.equal(hazard.choose(proposal), plain.choose(proposal))
    assert int(plain.choose(proposal).sum()) == 8  # cheap: every candidate
    step([6] * 8, [10] * 4 + [20] * 4, [True] * 4 + [False] * 4)  # four end at 10, four reach their budget
    chosen = hazard.choose(proposal)
    reach = hazard.end_hazard.log_reach(lens, proposal.depths())
    assert reach[1, 1] > reach[1, 2]  # past the 10th token: half the requests ended there
    discounted = (proposal.cum_logprobs + reach).double().exp()
    best = brute_force_prefix(discounted.tolist(), 2, lambda m: 0.1 + 1e-2 * (2 + m), hazard.margin)
    assert int(chosen.sum()) == best < 8
    # the same estimates in both rows: the request far from length 10 keeps its deepest draft
    assert chosen[0].all() and not chosen[1, -1]
    assert discounted[chosen].min() >= discounted[~chosen].max()


def test_the_engine_tells_the_policy_where_requests_ended_before_their_budget():
    """StepFeedback.output_lens / generated / ended_early from a replay: the recorded outputs
    end at an EOS before the budget for some requests; the hazard counts each early end at its
    length and every generated token once."""
    target = tiny_llama(vocab_size=32, seed=3)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [3, 1, 4, 1, 5]]
    eos = int(record(target, NgramDrafter(4), prompts, 12, 4).continuation[0, 3])  # a token it says
    trace = record(target, NgramDrafter(4), prompts, 12, 4, eos_token_id=eos)
    policy = CostAwareTetris(4)
    result = replay(trace, policy, 2, LinearCostModel({"step": 0.1, "query_token": 1e-3}, padded=False))
    early = [r["tokens"] for r in result.requests if r["tokens"] < 12]
    assert early
    assert policy.end_hazard.went_on.sum() == result.metrics["generated_tokens"]
    assert np.nonzero(policy.end_hazard.ended)[0].tolist() == sorted(set(early))
    assert policy.end_hazard.ended.sum() == len(early)
