"""tetris_ext.sim: a replay of a recorded trace reproduces the live loop step for step.

The live run and the replay use the same policy classes (fresh objects each) and the same
batch size; the replay must give the same per-step active requests and drafted, verified,
accepted and generated counts, for n-gram chains (whose online calibration the replay re-runs),
model-drafted chains and model-drafted trees. Plus the cost models and the replay's
bookkeeping at scale (resampled requests, Poisson arrivals).
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.calibration import AcceptanceCalibration
from tetris_ext.cost_models import (
    ROOFLINES,
    LinearCostModel,
    RecordedStepTimes,
    StepShape,
    h100x4_llama70b,
    price_step,
)
from tetris_ext.decoding import generate
from tetris_ext.drafters import ModelDrafter, NgramDrafter
from tetris_ext.estimators import NgramLogistic
from tetris_ext.models import noisy_copy, tiny_llama
from tetris_ext.policies import (
    Autoregressive,
    CostAwareTetris,
    GoodputSD,
    GoodputTetris,
    StandardSD,
    Tetris,
    ThresholdSD,
)
from tetris_ext.sim import Trace, record, redraft, replay

STEP_KEYS = ("requests", "drafted", "verified", "accepted", "generated", "block_width")
COST = LinearCostModel({"step": 1e-3, "query_token": 1e-4}, padded=True)


def step_counts(per_step):
    return [{k: s[k] for k in STEP_KEYS} for s in per_step]


def random_prompts(vocab, count, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (4 + 3 * i,), generator=g).tolist() for i in range(count)]


@pytest.fixture(scope="module")
def copier():
    """A 16-token model whose greedy outputs fall into loops: n-gram drafts are often right."""
    return tiny_llama(vocab_size=16, seed=0)


@pytest.fixture(scope="module")
def ngram_trace(copier, tmp_path_factory):
    trace = record(copier, NgramDrafter(4), random_prompts(16, 6), max_new_tokens=24, max_draft=4)
    path = trace.save(tmp_path_factory.mktemp("trace") / "ngram.npz")
    return Trace.load(path)  # replays read the saved file, so the format is tested too


NGRAM_POLICIES = [
    lambda: Autoregressive(),
    lambda: StandardSD(2),
    lambda: Tetris(2, 2),
    lambda: Tetris(1, 3, min_prob=0.3),
    lambda: Tetris(capacity=4, extra=2),
    lambda: ThresholdSD(0.6, 4),
]


@pytest.mark.parametrize("make_policy", NGRAM_POLICIES, ids=lambda f: str(f()))
def test_replay_reproduces_live_ngram_run(copier, ngram_trace, make_policy):
    """With the default calibration (NgramLogistic, batched): its transition memory keys on
    each request's root, so live (the token list) and replay (the trace) must hand it the same
    roots to learn exactly the same."""
    prompts = ngram_trace.prompts
    live_drafter, replay_drafter = NgramDrafter(4), NgramDrafter(4)
    live = generate(copier, prompts, make_policy(), drafter=live_drafter, max_new_tokens=24, max_batch_size=3)
    replayed = replay(ngram_trace, make_policy(), batch_size=3, cost_model=COST, drafter=replay_drafter)
    assert step_counts(replayed.per_step) == step_counts(live.stats["per_step"])
    assert replayed.metrics["accepted_tokens"] == live.stats["accepted_tokens"]
    # The calibration learned the same thing from the same outcomes.
    live_model, replay_model = live_drafter.calibration, replay_drafter.calibration
    assert isinstance(live_model, NgramLogistic)
    assert torch.equal(replay_model.weights, live_model.weights)
    if live.stats["verified_tokens"]:
        assert not torch.equal(live_model.weights, live_model.prior)  # it did learn
    assert live_model.tracked_requests == replay_model.tracked_requests == 0  # all released
    # And the trace holds the live output.
    for r, tokens in enumerate(live.tokens):
        assert tokens == ngram_trace.continuation[r, : ngram_trace.out_len[r]].tolist()


@pytest.mark.parametrize("make_policy", NGRAM_POLICIES[2:4], ids=lambda f: str(f()))
def test_replay_reproduces_live_run_with_the_per_request_calibration(copier, ngram_trace, make_policy):
    """The older AcceptanceCalibration (by explicit argument) replays exactly too."""
    prompts = ngram_trace.prompts
    live_drafter = NgramDrafter(4, calibration=AcceptanceCalibration())
    replay_drafter = NgramDrafter(4, calibration=AcceptanceCalibration())
    live = generate(copier, prompts, make_policy(), drafter=live_drafter, max_new_tokens=24, max_batch_size=3)
    replayed = replay(ngram_trace, make_policy(), batch_size=3, cost_model=COST, drafter=replay_drafter)
    assert step_counts(replayed.per_step) == step_counts(live.stats["per_step"])
    live_model, replay_model = live_drafter.calibration, replay_drafter.calibration
    assert torch.equal(replay_model.weights, live_model.weights)
    assert live_model.updates == replay_model.updates > 0
    assert live_model.request_bias == replay_model.request_bias == {}  # all released


def test_a_trace_recorded_without_transition_agreements_replays_like_the_live_run(copier, ngram_trace):
    """Traces recorded before the fifth n-gram feature hold four; the replay recomputes the
    transition agreements from each request's context, exactly as the live drafter does."""
    assert ngram_trace.draft_features.shape[-1] == 5
    old = dataclasses.replace(ngram_trace, draft_features=ngram_trace.draft_features[..., :4].copy())
    live_drafter = NgramDrafter(4, calibration=NgramLogistic())
    replay_drafter = NgramDrafter(4, calibration=NgramLogistic())
    live = generate(
        copier, old.prompts, Tetris(2, 2), drafter=live_drafter, max_new_tokens=24, max_batch_size=3
    )
    replayed = replay(old, Tetris(2, 2), batch_size=3, cost_model=COST, drafter=replay_drafter)
    assert step_counts(replayed.per_step) == step_counts(live.stats["per_step"])
    assert torch.equal(replay_drafter.calibration.weights, live_drafter.calibration.weights)
    # Not vacuous: the agreements are not all the n-gram agreement the 4-feature path falls back on.
    recorded = ngram_trace.draft_features[ngram_trace.draft_tokens >= 0]
    assert (recorded[:, 4] != recorded[:, 2]).any()


@pytest.mark.parametrize(
    "make_policy", [lambda: GoodputSD(4), lambda: GoodputTetris(4)], ids=["GoodputSD", "GoodputTetris"]
)
def test_replay_with_the_live_step_times_reproduces_latency_driven_policies(copier, ngram_trace, make_policy):
    live = generate(
        copier,
        ngram_trace.prompts,
        make_policy(),
        drafter=NgramDrafter(4),
        max_new_tokens=24,
        max_batch_size=3,
    )
    recorded = RecordedStepTimes(live.stats["per_step"])  # says nothing of the loop's shape
    replayed = replay(ngram_trace, make_policy(), batch_size=3, cost_model=recorded, padded=True)
    assert step_counts(replayed.per_step) == step_counts(live.stats["per_step"])
    # Not vacuous: the policy chose more than one capacity. How many it chooses depends on the
    # step times this machine measured (a loaded CI machine gave only two), so ask no more.
    assert len({sum(s["verified"]) for s in live.stats["per_step"]}) >= 2


def test_some_ngram_drafts_are_accepted(ngram_trace):
    # Otherwise the tests above would compare runs in which nothing interesting happens.
    assert 0.1 < (ngram_trace.accept_len > 0).mean() < 0.9


def test_replay_reproduces_live_run_with_eos(copier):
    prompts = random_prompts(16, 5, seed=1)
    eos = 4  # a frequent token of this model: requests finish at different steps
    trace = record(copier, NgramDrafter(3), prompts, max_new_tokens=20, max_draft=3, eos_token_id=eos)
    assert (trace.out_len < 20).any()
    live = generate(
        copier,
        prompts,
        Tetris(2, 1),
        drafter=NgramDrafter(3),
        max_new_tokens=20,
        max_batch_size=2,
        eos_token_id=eos,
    )
    # No drafter given: the replay builds one from the trace's settings with the default
    # calibration, which must be the live NgramDrafter's default for the steps to agree.
    replayed = replay(trace, Tetris(2, 1), batch_size=2, cost_model=COST)
    assert step_counts(replayed.per_step) == step_counts(live.stats["per_step"])


@pytest.fixture(scope="module")
def target_and_draft():
    target = tiny_llama(vocab_size=64, seed=0)
    return target, noisy_copy(target, 0.1)


@pytest.mark.parametrize("tree_width", [1, 2], ids=["chain", "tree"])
def test_replay_reproduces_live_model_drafter_run(target_and_draft, tree_width):
    target, draft = target_and_draft
    prompts = random_prompts(64, 6, seed=2)
    trace = record(
        target, ModelDrafter(draft, 4, tree_width=tree_width), prompts, max_new_tokens=16, max_draft=4
    )
    assert trace.is_tree == (tree_width > 1)
    assert trace.accept_len.mean() > 0.3
    policies = [lambda: StandardSD(4), lambda: Tetris(2, 2), lambda: Tetris(3, 1, min_prob=0.2)]
    if tree_width == 1:  # chains replay at any draft length (a prefix of the recorded chain)
        policies += [lambda: StandardSD(2), lambda: ThresholdSD(0.5, 4)]
    for make_policy in policies:
        live = generate(
            target,
            prompts,
            make_policy(),
            drafter=ModelDrafter(draft, 4, tree_width=tree_width),
            max_new_tokens=16,
            max_batch_size=4,
        )
        replayed = replay(trace, make_policy(), batch_size=4, cost_model=COST)
        assert step_counts(replayed.per_step) == step_counts(live.stats["per_step"]), make_policy()


def test_tree_trace_refuses_other_draft_lengths(target_and_draft):
    target, draft = target_and_draft
    trace = record(
        target, ModelDrafter(draft, 4, tree_width=2), random_prompts(64, 2), max_new_tokens=4, max_draft=4
    )
    with pytest.raises(ValueError, match="trees of 4 drafts"):
        replay(trace, StandardSD(2), batch_size=2, cost_model=COST)


def test_redraft_gives_what_record_would_with_that_drafter(copier, ngram_trace):
    # The same drafter: the very trace, bit for bit.
    again = redraft(ngram_trace, NgramDrafter(4))
    for name in (
        "draft_tokens",
        "draft_features",
        "draft_token_logprobs",
        "draft_cum_logprobs",
        "accept_len",
    ):
        assert np.array_equal(getattr(again, name), getattr(ngram_trace, name)), name
    assert again.prompts == ngram_trace.prompts and again.drafter == ngram_trace.drafter
    # Another drafter, fewer drafts: what recording with it gives, without running the model.
    other = redraft(ngram_trace, NgramDrafter(3, max_ngram=2, min_ngram=2), max_draft=3)
    recorded = record(
        copier,
        NgramDrafter(3, max_ngram=2, min_ngram=2),
        random_prompts(16, 6),
        max_new_tokens=24,
        max_draft=3,
    )
    assert not np.array_equal(other.draft_tokens, ngram_trace.draft_tokens[:, :, :3])
    for name in ("draft_tokens", "draft_features", "draft_cum_logprobs", "accept_len", "out_len"):
        assert np.array_equal(getattr(other, name), getattr(recorded, name)), name
    assert np.array_equal(other.continuation[:, :28], recorded.continuation)
    with pytest.raises(ValueError, match="max_draft must be in"):
        redraft(ngram_trace, NgramDrafter(5), max_draft=5)


def test_accept_len_is_what_full_verification_accepts(ngram_trace):
    # Verifying every drafted token of one request at a time: accepted = accept_len at each
    # position, but for the drafts past the request's budget (Proposal.usable).
    replayed = replay(ngram_trace, StandardSD(4), batch_size=1, cost_model=COST)
    positions = {r: 0 for r in range(ngram_trace.num_requests)}
    cut = 0
    for s in replayed.per_step:
        (r,) = s["requests"]
        usable = ngram_trace.max_new_tokens - positions[r] - 1
        assert s["accepted"][0] == min(ngram_trace.accept_len[r, positions[r]], usable)
        cut += ngram_trace.accept_len[r, positions[r]] > usable
        positions[r] += s["generated"][0]
    assert cut > 0  # the budget did cut some accepted run short


def test_replay_at_scale_with_arrivals(ngram_trace):
    n = 200
    result = replay(
        ngram_trace,
        Tetris(2, 2),
        batch_size=8,
        cost_model=h100x4_llama70b(),
        arrival=5.0,
        num_requests=n,
        seed=3,
    )
    m = result.metrics
    assert m["requests"] == n and len(result.requests) == n
    rows = np.array([r["row"] for r in result.requests])
    assert m["generated_tokens"] == int(ngram_trace.out_len[rows].sum())
    assert all(len(s["requests"]) <= 8 for s in result.per_step)
    for r in result.requests:
        assert r["arrival"] <= r["start"] <= r["finish"]
    assert m["simulated_seconds"] >= max(r["arrival"] for r in result.requests)
    assert 0 < m["verification_success_rate"] <= 1
    assert m["latency_p50_s"] <= m["latency_p90_s"] <= m["latency_p99_s"]
    assert m["wasted_verified_tokens"] == m["verified_tokens"] - m["accepted_tokens"]


def test_replay_runs_goodput_policies(ngram_trace):
    for policy in (GoodputSD(4), GoodputTetris(4)):
        m = replay(ngram_trace, policy, batch_size=4, cost_model=h100x4_llama70b(), num_requests=30).metrics
        assert m["generated_tokens"] > 0 and math.isfinite(m["throughput_tokens_per_s"])


def test_replay_tells_the_policy_the_shape_its_cost_model_prices(ngram_trace):
    flat_cost = LinearCostModel({"step": 1e-3, "query_token": 1e-4}, padded=False)
    for cost_model, padded in ((COST, True), (flat_cost, False), (h100x4_llama70b(), False)):
        for policy in (GoodputSD(4), GoodputTetris(4), CostAwareTetris(4)):
            replay(ngram_trace, policy, batch_size=3, cost_model=cost_model)
            assert policy.padded is padded, (policy, cost_model.name)
    # A flag that contradicts the cost model raises before any step, naming policy and loop.
    policy = CostAwareTetris(4, padded=True)
    with pytest.raises(ValueError, match=r"CostAwareTetris\(4, padded\): padded=True contradicts sim.replay"):
        replay(ngram_trace, policy, batch_size=3, cost_model=h100x4_llama70b())
    assert policy.steps == 0
    with pytest.raises(ValueError, match="padded=True contradicts cost model"):
        replay(ngram_trace, Tetris(2, 2), batch_size=3, cost_model=flat_cost, padded=True)
    # A cost model that does not say (a live run's step times): the replay's flag must, for a
    # policy that prices steps; one that does not price them replays as before.
    live = replay(ngram_trace, Tetris(2, 2), batch_size=3, cost_model=COST)
    with pytest.raises(ValueError, match=r"GoodputTetris\(4\): the engine's shape is unknown"):
        replay(ngram_trace, GoodputTetris(4), batch_size=3, cost_model=RecordedStepTimes(live.per_step))
    again = replay(ngram_trace, Tetris(2, 2), batch_size=3, cost_model=RecordedStepTimes(live.per_step))
    assert step_counts(again.per_step) == step_counts(live.per_step)


def test_linear_cost_model_fit_recovers_coefficients():
    true = {"step": 2e-3, "request": 1e-4, "query_token": 5e-4}
    model = LinearCostModel(true)
    shapes = [StepShape(requests=b, query_tokens=b * q) for b in (1, 2, 4, 8, 16) for q in (1, 2, 3, 5)]
    fitted = LinearCostModel.fit([(s, model.step_seconds(s)) for s in shapes], padded=False)
    for k, v in true.items():
        assert fitted.coef[k] == pytest.approx(v, rel=1e-6)
    assert fitted.info["max_rel_error"] < 1e-9
    again = LinearCostModel.from_json(fitted.to_json())
    assert again.step_seconds(shapes[3]) == fitted.step_seconds(shapes[3])


def test_roofline_is_flat_until_compute_bound():
    m = h100x4_llama70b()
    t = [m.step_seconds(StepShape(requests=1, query_tokens=q)) for q in (1, 16, 64, 1024, 2048)]
    assert t[0] == pytest.approx(t[2], rel=1e-3)  # weight reads dominate small steps
    flops = m.gpus * m.flops_per_s * m.compute_efficiency
    assert t[4] - t[3] == pytest.approx(2 * m.params * 1024 / flops, rel=1e-9)  # linear when compute bound
    assert m.draft_seconds(StepShape(requests=4, query_tokens=8)) == 0.0


@pytest.mark.parametrize("name, knee", [("4xH100-70B", (200, 240)), ("A100-8B", (105, 125))])
def test_roofline_machines_turn_compute_bound_where_they_say(name, knee):
    """The step of a roofline machine (no context) is flat up to its knee and compute bound
    after it, at the token count its docstring gives."""
    m = ROOFLINES[name]()
    flat = m.step_seconds(StepShape(requests=1, query_tokens=1))
    low, high = knee
    assert m.step_seconds(StepShape(requests=1, query_tokens=low)) == pytest.approx(flat, rel=1e-9)
    assert m.step_seconds(StepShape(requests=1, query_tokens=high)) > flat * 1.01


def test_chunked_prefill_computes_the_prompts_in_the_steps_forward():
    """A chunked-prefill engine adds the joining prompts' compute to the step's forward, never a
    second weight read; without prompts the two engines cost the same."""
    apart, chunked = h100x4_llama70b(), h100x4_llama70b(chunked_prefill=True)
    decode = StepShape(requests=64, query_tokens=128, context_tokens=64 * 300)
    joining = dataclasses.replace(decode, prefill_tokens=200, prefill_requests=1)
    assert chunked.step_seconds(decode) == apart.step_seconds(decode)
    assert chunked.step_seconds(joining) == apart.step_seconds(dataclasses.replace(decode, query_tokens=328))
    weights = (
        apart.params
        * apart.bytes_per_param
        / (apart.gpus * apart.hbm_bytes_per_s * apart.bandwidth_efficiency)
    )
    # Under the knee the prompts ride along for free: the saving is the whole second weight read.
    small = dataclasses.replace(joining, prefill_tokens=50)
    assert apart.step_seconds(small) - chunked.step_seconds(small) == pytest.approx(weights)
    assert chunked.step_seconds(joining) < apart.step_seconds(joining)
    # The prompts are charged what they add to the step's roots alone; the candidates the rest.
    cost = price_step(chunked, joining)
    roots = dataclasses.replace(decode, query_tokens=64)
    assert cost.fused_prefill_tokens == 200
    assert cost.fused_prefill_seconds == pytest.approx(
        chunked.step_seconds(dataclasses.replace(roots, prefill_tokens=200)) - chunked.step_seconds(roots)
    )
    assert cost.draft_seconds + cost.verify_seconds + cost.fused_prefill_seconds == pytest.approx(
        cost.seconds
    )
    assert cost.verify_seconds > price_step(chunked, decode).verify_seconds  # past the knee beside them
    ar = price_step(chunked, dataclasses.replace(roots, prefill_tokens=200))  # verifies nothing
    assert ar.verify_seconds == pytest.approx(price_step(chunked, roots).verify_seconds)
    assert price_step(apart, joining).fused_prefill_tokens is None


class _FeedbackLog(Tetris):
    """Tetris(2, 2) that keeps what each step tells it."""

    def __init__(self):
        super().__init__(2, 2)
        self.feedback = []

    def observe(self, feedback):
        self.feedback.append(feedback)
        super().observe(feedback)


def test_a_chunked_prefill_replay_tells_the_policy_the_whole_forward_and_its_prompt_tokens(ngram_trace):
    chunked = h100x4_llama70b(chunked_prefill=True)
    policy = _FeedbackLog()
    result = replay(ngram_trace, policy, batch_size=3, cost_model=chunked, num_requests=12)
    rows, seen, joins = {r["id"]: r["row"] for r in result.requests}, set(), []
    for step in result.per_step:  # a request joins at the first step it decodes in
        joins.append(sum(len(ngram_trace.prompts[rows[i]]) - 1 for i in step["requests"] if i not in seen))
        seen |= set(step["requests"])
    assert [f.prefill_tokens for f in policy.feedback] == joins and sum(joins) > 0
    for f, step in zip(policy.feedback, result.per_step):  # the forward's seconds, prompts included
        assert f.draft_seconds + f.verify_seconds == pytest.approx(step["step_seconds"])
    apart = _FeedbackLog()
    replay(ngram_trace, apart, batch_size=3, cost_model=h100x4_llama70b(), num_requests=12)
    assert {f.prefill_tokens for f in apart.feedback} == {None}


def test_also_price_equals_a_replay_under_that_model(ngram_trace):
    gpu = h100x4_llama70b()
    both = replay(
        ngram_trace, Tetris(2, 2), batch_size=4, cost_model=COST, also_price=(gpu,), num_requests=40
    )
    alone = replay(ngram_trace, Tetris(2, 2), batch_size=4, cost_model=gpu, num_requests=40)
    assert both.also[gpu.name] == pytest.approx(alone.metrics)
    with pytest.raises(ValueError, match="arrival"):
        replay(ngram_trace, Tetris(2, 2), batch_size=4, cost_model=COST, also_price=(gpu,), arrival=1.0)


def test_oracle_estimates_mark_exactly_the_target_path():
    from tetris_ext.proposal import Proposal
    from tetris_ext.sim import ORACLE_MISS, oracle_estimates

    tokens = torch.tensor([[5, 6, 7, -1], [1, 9, 3, 4]])
    truth = torch.tensor([[5, 6, 0, 0], [2, 9, 3, 4]])
    logp = torch.full((2, 4), -0.5)
    p = oracle_estimates(Proposal(tokens, None, logp, logp.cumsum(1)), truth)
    on_path = torch.tensor([[True, True, False, False], [False, False, False, False]])
    real = tokens >= 0
    assert torch.equal(p.cum_logprobs[on_path], torch.zeros(2))
    assert torch.allclose(p.cum_logprobs[real & ~on_path], torch.tensor(math.log(ORACLE_MISS)))
    assert torch.isneginf(p.cum_logprobs[~real]).all()
    # a token may match the target while its parent did not: its own estimate is 1, its path's ~0
    assert p.token_logprobs[1, 1] == 0 and p.cum_logprobs[1, 1] < -9


def test_oracle_replay_verifies_only_accepted_tokens_and_never_takes_more_steps(ngram_trace):
    # Tetris drafting 4 per request, verifying 4 per step across the batch: ranked by the
    # truth, the accepted candidates come first.
    common = dict(batch_size=4, cost_model=COST, keep_steps=False)
    oracle = replay(ngram_trace, Tetris(capacity=4, extra=3), oracle=True, **common).metrics
    estimated = replay(ngram_trace, Tetris(capacity=4, extra=3), **common).metrics
    assert oracle["verification_success_rate"] > estimated["verification_success_rate"]
    assert oracle["steps"] <= estimated["steps"]
    full = replay(ngram_trace, StandardSD(4), oracle=True, **common).metrics
    assert full["generated_tokens"] == estimated["generated_tokens"]


def test_steady_protocol_cuts_outputs_and_measures_the_full_batch_window(ngram_trace):
    """truncate_outputs: seeded lengths in [fraction x recorded, recorded]; steady_window: a
    closed loop at one second per step (and 10 ms per prompt token to prefill), autoregressive,
    keeps the batch full until the queue empties, so the window makes exactly B tokens per
    decoding second, while the whole run (the drain of unequal requests included) makes fewer."""
    B, n = 4, 40
    every_step = LinearCostModel({"step": 1.0, "prefill_token": 0.01}, padded=True)
    runs = [
        replay(
            ngram_trace,
            Autoregressive(),
            batch_size=B,
            cost_model=every_step,
            num_requests=n,
            truncate_outputs=0.25,
            steady_window=True,
            keep_steps=False,
            seed=seed,
        )
        for seed in (0, 0, 1)
    ]
    full = replay(ngram_trace, Autoregressive(), batch_size=B, cost_model=every_step, num_requests=n)
    recorded = {r["id"]: r["tokens"] for r in full.requests}
    cut = {r["id"]: r["tokens"] for r in runs[0].requests}
    assert all(math.ceil(0.25 * recorded[i]) <= cut[i] <= recorded[i] for i in cut)
    assert sum(cut.values()) < 0.8 * sum(recorded.values())
    assert [r["row"] for r in runs[0].requests] == [r["row"] for r in full.requests]  # same draw
    assert runs[0].requests == runs[1].requests and runs[0].requests != runs[2].requests
    m = runs[0].metrics
    assert m["steady_decode_throughput_tokens_per_s"] == pytest.approx(B)
    assert 0.5 * B < m["steady_throughput_tokens_per_s"] < B  # the window's prefill counted
    assert m["steady_steps"] == pytest.approx(m["steady_decode_seconds"])
    assert m["steady_seconds"] > m["steady_steps"] > 0
    assert m["throughput_tokens_per_s"] < 0.95 * B
    assert m["service_per_token_p50_s"] == pytest.approx(1.0, rel=0.1)
    assert runs[0].per_step == [] and "steady_seconds" not in full.metrics
