"""The cost-aware policy's per-step arithmetic runs in numpy for speed (cost_aware.py,
policies.KneeLatencyModel): its decisions must be those of the plain torch formulation below,
bit for bit, on random proposals and random step timings. A later speed change that alters a
selection, a budget, a floor or a fitted parameter fails here.

The reference is the torch code the policy had before (one op per formula line); keep it
plain, never "optimise" it."""

import itertools
import math

import numpy as np
import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.cost_aware import CostAwareTetris
from tetris_ext.cost_models import LinearCostModel, h100x4_llama70b
from tetris_ext.policies import KneeLatencyModel, LatencyModel, StepFeedback, _select
from tetris_ext.proposal import Proposal

pytestmark = pytest.mark.usefixtures("one_thread")

FIT_FIELDS = (
    "intercept",
    "slope",
    "knee",
    "residual",
    "slope_error",
    "mean_z",
    "count",
    "min_tokens",
    "max_tokens",
)


class TorchKneeFit(KneeLatencyModel):
    """KneeLatencyModel's fit in torch, one op per formula line (the reference)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.knees = torch.from_numpy(self.knees.copy())
        self.sums = torch.zeros(6, len(self.knees), dtype=torch.float64)
        self.all_sums = self.sums.clone()

    def observe(self, real_tokens, padded_tokens, seconds, clip=True):
        seconds = float(seconds)
        if (
            clip
            and self.clip is not None
            and self.count >= 3
            and self.min_tokens <= real_tokens <= self.max_tokens
        ):
            predicted = float(self.predict(real_tokens))
            reach = max(self.clip * self.residual, self.clip_floor * predicted)
            seconds = min(max(seconds, predicted - reach), predicted + reach)
        z = (float(real_tokens) - self.knees).clamp(min=0)
        t = torch.full_like(z, seconds)
        step = torch.stack([torch.ones_like(z), z, z * z, t, t * t, z * t])
        self.sums *= 1.0 - self.forget
        self.sums += step
        if self.forget:
            self.all_sums += step
        self.count += 1
        self.min_tokens = min(self.min_tokens, int(real_tokens))
        self.max_tokens = max(self.max_tokens, int(real_tokens))
        self._refit()

    def _refit(self):
        n, sz, szz, st, stt, szt = self._window()
        var_z, cov, var_t = szz - sz * sz / n, szt - sz * st / n, stt - st * st / n
        spread = var_z > 1e-9 * (szz + 1)
        slope = torch.where(spread, cov / torch.where(spread, var_z, 1.0), 0.0).clamp(min=0)
        error = var_t - 2 * slope * cov + slope * slope * var_z
        best = int((error <= error.min() + 1e-9 * float(stt[0])).nonzero()[0])
        line_error, best_error = max(0.0, float(error[0])), max(0.0, float(error[best]))
        if best and self.knee_evidence and not self._knee_clear(line_error, best_error, float(n[0])):
            best, best_error = 0, line_error
        self.slope, self.knee = float(slope[best]), float(self.knees[best])
        self.intercept = float((st[best] - slope[best] * sz[best]) / n[best])
        self.residual = (best_error / float(n[best])) ** 0.5
        dof, var = float(n[best]) - 2.0, float(var_z[best])
        self.slope_error = (best_error / dof / var) ** 0.5 if dof > 0 and bool(spread[best]) else 0.0
        self.mean_z = float(sz[best] / n[best])

    def predict(self, real_tokens, padded_tokens=None, deviations=0.0):
        slope = max(0.0, self.slope - deviations * self.slope_error)
        intercept = self.intercept + (self.slope - slope) * self.mean_z
        real = torch.as_tensor(real_tokens, dtype=torch.float64)
        return (intercept + slope * (real - self.knee).clamp(min=0)).clamp(min=1e-6)


class TorchCostAware(CostAwareTetris):
    """CostAwareTetris with the torch formulation of the flat choice and the torch knee fit."""

    def _shape_known(self):
        super()._shape_known()
        if self.padded is False and self.cost_model is None:
            old = self.verify_latency
            self.verify_latency = TorchKneeFit(
                forget=old.forget, knee_evidence=old.knee_evidence, clip=old.clip
            )

    def choose(self, proposal):
        self._require_shape()
        probs = torch.nan_to_num(proposal.cum_logprobs.double().exp() * (proposal.tokens >= 0))
        explore = self._exploring()
        if self.padded:
            selected = self._choose_width(proposal, probs, explore)
        else:
            selected = self._torch_prefix(proposal, probs, explore)
        self.last_budget = int(selected.sum())
        return selected

    def _torch_prefix(self, proposal, probs, explore):
        B = proposal.batch_size
        ranked = probs.reshape(-1).sort(descending=True, stable=True).values
        ranked = ranked[ranked > 0][: self.capacity][: max(0, self._trusted(B) - B)]
        if explore is not None:
            return _select(proposal, round(explore * len(ranked)))
        m = torch.arange(len(ranked) + 1, dtype=torch.float64)
        gain = torch.cat([ranked.new_zeros(1), ranked.cumsum(0)]) + B
        tokens = B + m
        if self.fixed is not None:
            latency = self.fixed.predict(B, tokens, tokens)
        else:
            latency = (
                self.verify_latency.predict(tokens, tokens, deviations=self.optimism) + self.draft_seconds
            )
            if self.use_bumps:  # the residual per step size: StepResidual's own (tested apart)
                fitted = lambda t: self.verify_latency.predict(torch.from_numpy(t)).numpy()  # noqa: E731
                residual = self.bumps.predict(tokens.long().numpy(), fitted)
                latency = (latency + torch.from_numpy(residual)).clamp(min=1e-6)
        latency = latency + self.margin * (latency - latency[0]).clamp(min=0)
        goodput = gain / latency
        best = self._bracket_knee(B, int(goodput.argmax()), len(ranked))
        self.last_floor = float(goodput[best] * (latency[min(best + 1, len(m) - 1)] - latency[best]))
        return _select(proposal, best)


def random_proposal(g, B, N):
    """Chains of random estimates, some requests drafting fewer (padding), ties included."""
    probs = torch.rand(B, N, generator=g, dtype=torch.float64) ** 0.3
    probs[torch.rand(B, N, generator=g) < 0.1] = 0.5  # ties across requests
    token_logprobs = probs.log().float()
    lengths = torch.randint(0, N + 1, (B,), generator=g)
    tokens = torch.where(torch.arange(N) < lengths[:, None], 7, -1)
    token_logprobs[tokens < 0] = -math.inf
    token_logprobs[torch.rand(B, N, generator=g) < 0.02] = math.nan  # a broken estimate: never verified
    return Proposal(tokens, None, token_logprobs, token_logprobs.cumsum(1))


def step_seconds(g, kind, tokens):
    """A CPU-like noisy line, or a roofline with a little noise and rare slow steps."""
    noise = float(torch.randn(1, generator=g, dtype=torch.float64))
    if kind == "cpu":
        return 0.038 + 0.0022 * tokens + 0.004 * noise
    slow = 3.0 if float(torch.rand(1, generator=g)) < 0.03 else 1.0
    return slow * (0.015 + 6e-5 * max(0, tokens - 240)) * (1 + 0.02 * noise)


def same_bits(a, b):
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def run_both(seed, B, N, kind, steps=40, **options):
    g = torch.Generator().manual_seed(seed)
    fast = CostAwareTetris(N, padded=options.pop("padded", False), **options)
    reference = TorchCostAware(N, padded=fast.padded, **options)
    for step in range(steps):
        proposal = random_proposal(g, B, N)
        selected = fast.choose(proposal)
        expected = reference.choose(proposal)
        assert torch.equal(selected, expected), (seed, step)
        assert fast.last_budget == reference.last_budget
        assert same_bits(fast.last_floor, reference.last_floor), (
            seed,
            step,
            fast.last_floor,
            reference.last_floor,
        )
        assert fast.bracketing == reference.bracketing
        verified = selected.sum(1)
        computed = B + int(verified.sum()) + int(torch.randint(0, 3, (1,), generator=g)) * 16  # prefill
        if fast.padded:
            computed = B * (1 + int(verified.max()))
        feedback = StepFeedback(
            verified,
            verified,
            computed_tokens=computed,
            draft_seconds=1e-4 * float(torch.rand(1, generator=g)),
            verify_seconds=step_seconds(g, kind, computed),
            padded=fast.padded,
        )
        fast.observe(feedback)
        reference.observe(feedback)
        if not fast.padded and fast.fixed is None:
            for name in FIT_FIELDS:
                assert getattr(fast.verify_latency, name) == getattr(reference.verify_latency, name), name
    return fast


@pytest.mark.parametrize("kind", ["cpu", "roofline"])
@pytest.mark.parametrize("B", [8, 64])
def test_online_flat_choice_is_the_torch_formulation_bit_for_bit(kind, B):
    for seed in range(5):
        run_both(seed, B, 5, kind)
    run_both(7, B, 8, kind, knee_bracket=1 / 8)
    run_both(8, B, 5, kind, margin=0.0, capacity=3 * B)
    run_both(3, B, 5, kind, size_residual=False)


def test_known_cost_and_padded_choices_are_the_torch_formulation_bit_for_bit():
    for seed, cost in enumerate(
        [h100x4_llama70b(), LinearCostModel({"step": 0.04, "query_token": 0.002}, padded=False)]
    ):
        run_both(seed, 64, 5, "roofline", steps=10, cost_model=cost)
    run_both(3, 8, 5, "cpu", padded=True)


def test_reference_is_not_vacuous():
    """The online runs settle on budgets strictly between nothing and everything, with floors
    above 0, and the roofline's fits include knees and lines (the knee_evidence test both ways),
    so the comparisons above exercise the whole objective and fit."""
    roofline = [run_both(seed, 64, 5, "roofline") for seed in range(5)]
    roofline.append(run_both(3, 64, 5, "roofline", size_residual=False))  # ends on a knee
    assert all(0 < policy.last_budget < 64 * 5 for policy in roofline)
    assert {policy.verify_latency.knee > 0 for policy in roofline} == {True, False}
    cpu = run_both(1, 8, 5, "cpu")
    assert 0 < cpu.last_budget < 8 * 5 and cpu.verify_latency.slope > 0 and cpu.last_floor > 0
    residual = cpu.bumps.predict(np.arange(8, 48), cpu.verify_latency.predict_array)
    assert cpu.use_bumps and np.abs(residual).max() > 1e-4  # the residual per size takes part


def torch_solve_nonnegative_slopes(gram, moment):
    """solve_nonnegative_slopes as it was in torch (boolean masks), the reference."""
    n = gram.shape[0]
    best, best_value = torch.zeros_like(moment), float("inf")
    for zeros in itertools.product((False, True), repeat=n - 1):
        free = torch.tensor((True,) + tuple(not z for z in zeros))
        b = torch.zeros_like(moment)
        b[free] = torch.linalg.lstsq(gram[free][:, free], moment[free].unsqueeze(1)).solution.squeeze(1)
        if bool((b[1:] < 0).any()):
            continue
        value = float(b @ gram @ b - 2 * b @ moment)
        if value < best_value:
            best, best_value = b, value
    return best


class TorchLatencyModel:
    """LatencyModel's sums and solve in torch, one op per formula line (the reference)."""

    def __init__(self, ridge=1e-3):
        self.ridge = ridge
        self.xtx = torch.zeros(3, 3, dtype=torch.float64)
        self.xty = torch.zeros(3, dtype=torch.float64)

    def observe(self, real_tokens, padded_tokens, seconds):
        real = torch.as_tensor(real_tokens, dtype=torch.float64)
        padded = torch.as_tensor(padded_tokens, dtype=torch.float64)
        x = torch.stack([torch.ones_like(real), real, padded], dim=-1)
        self.xtx += torch.outer(x, x)
        self.xty += x * seconds

    @property
    def coefficients(self):
        penalty = self.ridge * torch.diag(
            torch.diagonal(self.xtx) * torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
        )
        return torch_solve_nonnegative_slopes(self.xtx + penalty, self.xty)


def latency_steps(kind, steps, g):
    """(real tokens, other tokens, seconds) of noisy steps: decode steps with the prompt tokens
    of requests joining ("prompt"), padded tokens that move with the real ones ("collinear"),
    or slopes of the given signs ("+-" etc.: a negative one sends the fit to a face)."""
    for step in range(steps):
        tokens = int(torch.randint(8, 64, (1,), generator=g))
        noise = float(torch.randn(1, generator=g, dtype=torch.float64))
        if kind == "prompt":
            other = int(torch.randint(0, 300, (1,), generator=g)) if step % 3 == 0 else 0
            yield tokens, other, 0.02 + 3e-4 * tokens + 1e-4 * other + 0.01 * noise
        elif kind == "collinear":
            other = tokens + int(torch.randint(0, 3, (1,), generator=g))
            yield tokens, other, 0.04 + 2e-3 * tokens + 0.02 * noise
        else:
            other = int(torch.randint(8, 64, (1,), generator=g))
            slopes = [1e-3 if sign == "+" else -1e-3 for sign in kind]
            yield tokens, other, 0.2 + slopes[0] * tokens + slopes[1] * other + 0.01 * noise


@pytest.mark.parametrize("kind", ["prompt", "collinear", "++", "+-", "-+", "--"])
def test_latency_model_is_the_torch_formulation_bit_for_bit(kind):
    """LatencyModel (the padded loop's line; the proposer's prompt-price fit, read on every step
    a prompt joins) against its torch formulation: the sums and the coefficients equal after
    every step; the slopes' signs put the optimum on each face of the solve in turn."""
    g = torch.Generator().manual_seed(len(kind) + ord(kind[0]) + ord(kind[-1]))
    fast, reference = LatencyModel(), TorchLatencyModel()
    faces = set()
    for step, (tokens, other, seconds) in enumerate(latency_steps(kind, 100, g)):
        fast.observe(tokens, other, seconds)
        reference.observe(tokens, other, seconds)
        assert torch.equal(fast.xtx, reference.xtx) and torch.equal(fast.xty, reference.xty), step
        expected = reference.coefficients
        assert torch.equal(fast.coefficients, expected), (step, fast.coefficients, expected)
        faces.add("".join("+" if c > 0 else "0" for c in expected[1:]))
    if len(kind) == 2:  # the fit settles on the face the signs ask for
        assert kind.replace("-", "0") in faces
