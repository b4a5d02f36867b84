"""Selection policies: how much each request drafts, and which candidates the target verifies.

A policy never touches a model. Before the first step ``engine.Engine`` (the live loop and the
trace replay alike; the vLLM proposer does the same) calls ``bind_engine(padded, loop)``: the
shape of what the engine computes, for policies that price steps (``GoodputSD``,
``GoodputTetris``, ``CostAwareTetris``). Each step it then calls

1. ``num_draft(num_requests) -> int``: how many tokens each active request drafts;
2. ``choose(proposal) -> selected``: [B, N] bool, the candidates to verify, always decided by
   ``tetris_ext.ops.select`` (so the choice is ancestor-closed and ties are deterministic);
3. ``observe(feedback)``: per-request verified / accepted counts and the measured (or
   simulated) step latency, for policies that adapt online.

Scores are the proposal's ``cum_logprobs``: the estimated probability, in log space, that a
candidate and all its ancestors are accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from . import ops
from .cost_models import solve_nonnegative_slopes
from .proposal import Proposal

__all__ = [
    "Policy",
    "StepFeedback",
    "Autoregressive",
    "StandardSD",
    "Tetris",
    "GoodputSD",
    "ThresholdSD",
    "GoodputTetris",
    "LatencyModel",
    "KneeLatencyModel",
    "AcceptanceRate",
]


@dataclass
class StepFeedback:
    """What one step cost and achieved, and on what shape of engine.

    verified / accepted: [B] int64 per request. num_requests: B. computed_tokens: the query
    tokens the target's verification forward computed: B * block width on a padded engine
    (``padded`` True: this project's [B, 1 + w] block), the real tokens on a flattened one
    (``padded`` False: ``generate(flat=True)``, the vLLM proposer, a roofline replay: B +
    verified drafts). draft_seconds / verify_seconds: latency of drafting, and of selection +
    target forward + verification. prefill_tokens: None for an engine whose decode steps
    compute nothing else (this project's loops, a replay priced with prompts prefilled apart);
    for one that schedules prompt
    tokens into its decode steps (vLLM's chunked prefill: a request joining; a replay priced
    by ``RooflineCostModel(chunked_prefill=True)``), the prompt
    tokens this step computed beside its ``computed_tokens``, 0 when none. They are priced
    apart (``_GoodputPolicy._without_prefill``): a prompt token needs no logits, so with Gemma
    3 270M (a 262k vocabulary) in vLLM on this CPU it cost 0.5 ms against 2-7 ms for a
    verified one, and counted as one it cut the fitted slope about five times (bench/README.md,
    "vLLM: prompt tokens priced apart").
    output_lens / generated / ended_early: [B] per request, each its output length after the
    step (int64), the output tokens the step added (accepted drafts and bonus tokens, cut at
    its end; int64) and whether it ended in the step before its budget (bool: an EOS; in a
    replay, the recorded output's end): where requests end unannounced, by output length
    (``CostAwareTetris(end_hazard=True)``, tetris_ext.end_hazard); None where the engine does
    not say.
    """

    verified: Tensor
    accepted: Tensor
    computed_tokens: int
    draft_seconds: float
    verify_seconds: float
    padded: bool
    prefill_tokens: int | None = None
    output_lens: Tensor | None = None
    generated: Tensor | None = None
    ended_early: Tensor | None = None

    @property
    def num_requests(self) -> int:
        return self.verified.shape[0]

    @property
    def real_tokens(self) -> int:
        """The step's real query tokens: each request's root and its verified drafts."""
        return self.num_requests + int(self.verified.sum())


class Policy:
    """Base class; see the module docstring for the protocol."""

    name = "Policy"

    def bind_engine(self, padded: bool | None, loop: str) -> bool | None:
        """Called by whoever runs the policy (``engine.Engine``: ``generate``, ``sim.replay``;
        the vLLM proposer) before its first step: the engine computes a padded [B, 1 + w]
        block (``padded``), the real tokens only (False), or it does not say (None). ``loop``
        names the loop for error messages. Returns the shape in force (policies that price
        steps may pin it); policies that do not price steps take the loop's."""
        return padded

    def num_draft(self, num_requests: int) -> int:
        return 0

    def choose(self, proposal: Proposal) -> Tensor:
        return _select(proposal, budget=0)

    def observe(self, feedback: StepFeedback) -> None:
        pass

    def __repr__(self) -> str:
        return self.name


def _select(
    proposal: Proposal, budget: int, per_request: int | None = None, min_prob: float | None = None
) -> Tensor:
    scores = proposal.cum_logprobs
    caps = None
    if per_request is not None:
        caps = torch.full((proposal.batch_size,), per_request, dtype=torch.int64, device=scores.device)
    min_score = None if min_prob is None else (math.log(min_prob) if min_prob > 0 else -math.inf)
    selected, _ = ops.select(scores, budget, proposal.parents, caps, min_score)
    return selected


class Autoregressive(Policy):
    """No drafts: one token per request per step."""

    name = "Autoregressive"


class StandardSD(Policy):
    """Every request drafts and verifies k tokens (k nodes of the best paths for trees)."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError("StandardSD: k must be >= 1")
        self.k = k
        self.name = f"StandardSD({k})"

    def num_draft(self, num_requests: int) -> int:
        return self.k

    def choose(self, proposal: Proposal) -> Tensor:
        return _select(proposal, self.k * proposal.batch_size, per_request=self.k)


class Tetris(Policy):
    """TETRIS: draft k + extra per request, verify the best candidates of the whole batch.

    Capacity: the number of tokens StandardSD(k) verifies in the same step: k per request,
    fewer for a request that drafted fewer (the paper's ``k * B`` whenever every request drafts
    at least k, as a draft model does); or the absolute ``capacity``. ``full_budget``: ``k * B``
    every step whatever was drafted (the paper's formula read literally): with drafters that
    run short (n-gram drafts), the slots StandardSD(k) would leave empty then go to other
    requests' deeper, less likely drafts, and the batch-wide ranking verifies worse than
    StandardSD(k) (bench/fixed_budget_estimates.py). ``min_prob``: never verify a candidate
    whose estimated probability of being accepted is below it, even with capacity left.
    """

    def __init__(
        self,
        k: int | None = None,
        extra: int = 1,
        capacity: int | None = None,
        min_prob: float | None = None,
        full_budget: bool = False,
    ):
        if (k is None) == (capacity is None):
            raise ValueError("Tetris: give exactly one of k (capacity k per request) and capacity")
        if (k is not None and k < 1) or (capacity is not None and capacity < 0) or extra < 0:
            raise ValueError("Tetris: need k >= 1, capacity >= 0, extra >= 0")
        if min_prob is not None and not 0.0 <= min_prob <= 1.0:
            raise ValueError("Tetris: min_prob must be in [0, 1]")
        if full_budget and k is None:
            raise ValueError("Tetris: full_budget goes with k (an absolute capacity is always spent)")
        self.k, self.extra, self.capacity, self.min_prob = k, extra, capacity, min_prob
        self.full_budget = full_budget
        size = f"{k}, {extra}" if k is not None else f"capacity={capacity}, extra={extra}"
        options = ("" if min_prob is None else f", min_prob={min_prob:g}") + (
            ", full_budget" if full_budget else ""
        )
        self.name = f"Tetris({size}{options})"

    def budget(self, num_requests: int) -> int:
        """The most candidates a step of ``num_requests`` requests verifies."""
        return self.capacity if self.capacity is not None else self.k * num_requests

    def step_budget(self, proposal: Proposal) -> int:
        """This step's capacity: StandardSD(k)'s verified count (each request's first k
        candidates at most), unless ``full_budget`` or an absolute ``capacity``."""
        if self.capacity is not None or self.full_budget:
            return self.budget(proposal.batch_size)
        # A host read of the proposal (a sync where a drafter's proposal lives on a GPU): the
        # count depends on what was drafted, and ops.select takes the budget as an int.
        return int(proposal.counts().clamp(max=self.k).sum())

    def num_draft(self, num_requests: int) -> int:
        per_request = self.k if self.k is not None else math.ceil(self.capacity / max(1, num_requests))
        return per_request + self.extra

    def choose(self, proposal: Proposal) -> Tensor:
        return _select(proposal, self.step_budget(proposal), min_prob=self.min_prob)


class ThresholdSD(Policy):
    """SpecDec++-style stopping: each request verifies its chain while the predicted
    probability that some drafted token is rejected (1 - cumulative probability) stays at or
    below ``threshold``; at most ``max_k`` tokens, no batch budget."""

    def __init__(self, threshold: float = 0.7, max_k: int = 6):
        if not 0.0 <= threshold <= 1.0 or max_k < 1:
            raise ValueError("ThresholdSD: need 0 <= threshold <= 1 and max_k >= 1")
        self.threshold, self.max_k = threshold, max_k
        self.name = f"ThresholdSD({threshold:g}, {max_k})"

    def num_draft(self, num_requests: int) -> int:
        return self.max_k

    def choose(self, proposal: Proposal) -> Tensor:
        B = proposal.batch_size
        return _select(proposal, self.max_k * B, per_request=self.max_k, min_prob=1.0 - self.threshold)


# ------------------------------------------------------------------------------------------
# online estimates for the goodput-driven policies


class LatencyModel:
    """Step latency as a linear function of the verification size, fitted online.

    seconds = c0 + c1 * real_tokens + c2 * padded_tokens, where real_tokens = requests +
    verified drafts (what a varlen engine computes) and padded_tokens = requests * block width
    (what a padded batch computes). Least squares over every observed step, with a small
    ridge on the slopes, so that collinear data (padded == real) stays stable. The solve runs
    when the coefficients are read, not at every step observed.
    """

    def __init__(self, ridge: float = 1e-3):
        self.ridge = ridge
        # The sums accumulate in numpy (float64): a step's products and sums are exact
        # elementwise operations, the same bits as torch's for a fraction of the per-op cost
        # (the vLLM proposer observes every step).
        self._xtx, self._xty = np.zeros((3, 3)), np.zeros(3)
        self.count = 0
        self._coefficients = torch.zeros(3, dtype=torch.float64)
        self._stale = False

    @property
    def xtx(self) -> Tensor:
        """[3, 3] float64: the sum of x x' over the steps, x = (1, real, padded)."""
        return torch.from_numpy(self._xtx)

    @property
    def xty(self) -> Tensor:
        """[3] float64: the sum of x * seconds over the steps."""
        return torch.from_numpy(self._xty)

    @staticmethod
    def _features(real_tokens, padded_tokens) -> Tensor:
        real = torch.as_tensor(real_tokens, dtype=torch.float64)
        padded = torch.as_tensor(padded_tokens, dtype=torch.float64)
        return torch.stack([torch.ones_like(real), real, padded], dim=-1)

    def observe(self, real_tokens: int, padded_tokens: int, seconds: float) -> None:
        x = np.array([1.0, float(real_tokens), float(padded_tokens)])
        self._xtx += np.multiply.outer(x, x)
        self._xty += x * float(seconds)
        self.count += 1
        self._stale = True

    @property
    def coefficients(self) -> Tensor:
        """[3] float64: c0, c1, c2 (slopes >= 0)."""
        if self._stale:
            # A ridge on the two slopes only (never the intercept), relative to the data's scale:
            # a tie-breaker when real and padded tokens move together, not a bias.
            penalty = self.ridge * np.diag(np.diagonal(self._xtx) * np.array([0.0, 1.0, 1.0]))
            self._coefficients = solve_nonnegative_slopes(torch.from_numpy(self._xtx + penalty), self.xty)
            self._stale = False
        return self._coefficients

    def predict(self, real_tokens, padded_tokens) -> Tensor:
        """Predicted seconds (float64 tensor, broadcasting over the inputs); never below 1e-6."""
        return (self._features(real_tokens, padded_tokens) @ self.coefficients).clamp(min=1e-6)


class KneeLatencyModel:
    """Step latency flat up to a knee, linear beyond it, fitted online: the roofline's shape.

    seconds = a + s * max(0, tokens - knee), s >= 0. A GPU step reads all weights whatever it
    computes, so its first tokens are (nearly) free and every token past the knee, where the
    step turns compute bound, costs the same; a straight line through such steps charges the
    free tokens and undercharges the costly ones. For each knee of a geometric grid (8 per
    doubling, and 0: a straight line) the fit is one-variable least squares on running sums
    (n, z, z^2, t, t^2, z t with z = max(0, tokens - knee)), so an observation costs O(knees)
    and no step is stored; the knee with the least squared error wins (the lowest one among
    equals: data that a line fits exactly are read as a line, never as a wall past the last
    point). ``min_tokens`` / ``max_tokens``: the smallest and largest step observed.

    Three guards for measured (noisy) step times, each off at 0 / None:

    - ``forget``: every observation first scales the sums by 1 - forget (exponential
      forgetting, an effective window of about 1 / forget steps): the context grows, the
      requests change and a shared machine has slow spells, so old steps describe another cost.
      Only while the window's steps still tell a slope: when their sizes spread by less than
      ``min_spread`` tokens (a policy that has settled on one size, e.g. verifying nothing for
      hundreds of steps where the step is compute bound), the fit uses every step seen
      instead; the forgotten sizes alone would leave the slope to the drift of a single size's
      seconds, and a slope read as 0 calls every token free (steady replay, batch 512: one
      step verified 576 candidates after 239 steps of none).
    - ``knee_evidence``: a knee replaces the line only when it explains the data clearly: the
      F statistic of the extra parameter, (SSE_line - SSE_knee) * (n - 3) / SSE_knee with n the
      (weighted) count, must exceed it. On a CPU, whose step is a line plus noise, the best of
      hundreds of knees always fits the noise a little better, and a spurious knee moved the
      floor by half (bench/README.md, "fit-log"); a roofline's steps pass by orders of
      magnitude.
    - ``clip``: a step whose size lies within those seen, and whose seconds lie further than
      ``clip`` residual standard deviations (at least ``clip_floor`` of the prediction) from
      the fit, counts as that far: one preempted step does not move the fit. Steps beyond the
      sizes seen are never clipped: they are how the fit learns the unknown.

    Same interface as LatencyModel (real and padded tokens); it reads ``real_tokens`` only,
    the tokens a flattened engine computes."""

    def __init__(
        self,
        per_doubling: int = 32,
        doublings: int = 20,
        forget: float = 0.0,
        knee_evidence: float = 0.0,
        clip: float | None = None,
        clip_floor: float = 0.1,
        min_spread: float = 1.0,
    ):
        bad = knee_evidence < 0 or (clip is not None and clip <= 0) or clip_floor < 0 or min_spread < 0
        if not 0.0 <= forget < 1.0 or bad:
            raise ValueError(
                "KneeLatencyModel: need 0 <= forget < 1, knee_evidence >= 0, clip > 0 (or None), "
                "clip_floor >= 0, min_spread >= 0"
            )
        self.forget, self.knee_evidence, self.clip, self.clip_floor = forget, knee_evidence, clip, clip_floor
        self.min_spread = min_spread
        steps = torch.arange(per_doubling * doublings + 1, dtype=torch.float64)
        # The fit runs in numpy (float64): a policy observes and predicts every step on vectors of
        # a few hundred values, where each torch op's dispatch cost more than its arithmetic. Only
        # exact elementwise operations and comparisons, so the numbers are torch's bit for bit
        # (tests/test_policy_speed_equivalence.py); the grid's powers stay torch's.
        self.knees = torch.cat([torch.zeros(1, dtype=torch.float64), 2.0 ** (steps / per_doubling)]).numpy()
        self.sums = np.zeros((6, len(self.knees)))
        self.all_sums = self.sums.copy()  # never forgotten (``forget``)
        self._step = np.ones_like(self.sums)  # one observation's terms (``observe``)
        self.count, self.min_tokens, self.max_tokens = 0, 1 << 62, 0
        self.intercept, self.slope, self.knee, self.residual = 0.0, 0.0, 0.0, 0.0
        self.slope_error, self.mean_z = 0.0, 0.0  # for ``predict(deviations=)``

    def observe(self, real_tokens: int, padded_tokens: int, seconds: float, clip: bool = True) -> None:
        """One step. ``clip=False``: a step placed to measure where the fit is unsure (a knee's
        bracket, CostAwareTetris) is taken as measured, as steps beyond the sizes seen are."""
        seconds = self.clipped(real_tokens, seconds) if clip else float(seconds)
        # The step's row of every sum, (1, z, z^2, t, t^2, z t) per knee, written into one buffer.
        step = self._step
        z = np.maximum(float(real_tokens) - self.knees, 0.0, out=step[1])
        np.multiply(z, z, out=step[2])
        step[3], step[4] = seconds, seconds * seconds
        np.multiply(z, seconds, out=step[5])
        self.sums *= 1.0 - self.forget
        self.sums += step
        if self.forget:
            self.all_sums += step
        self.count += 1
        self.min_tokens = min(self.min_tokens, int(real_tokens))
        self.max_tokens = max(self.max_tokens, int(real_tokens))
        self._refit()

    def clipped(self, real_tokens: int, seconds: float) -> float:
        """A step's seconds as the fit takes them (``clip``): within the sizes seen, at most
        ``clip`` residual standard deviations (at least ``clip_floor`` of the prediction) from it."""
        seconds = float(seconds)
        if self.clip is not None and self.count >= 3 and self.min_tokens <= real_tokens <= self.max_tokens:
            predicted = float(self.predict_array(real_tokens))
            reach = max(self.clip * self.residual, self.clip_floor * predicted)
            seconds = min(max(seconds, predicted - reach), predicted + reach)
        return seconds

    def _window(self) -> np.ndarray:
        """The sums to fit: the forgotten ones while their step sizes spread (``forget``)."""
        if not self.forget:
            return self.sums
        n, sz, szz = (float(v) for v in self.sums[:3, 0])  # knee 0: z = the step's tokens
        spread = max(0.0, szz / n - (sz / n) ** 2) ** 0.5
        return self.sums if spread >= self.min_spread else self.all_sums

    def _refit(self) -> None:
        sums = self._window()
        sz, szz, szt = sums[1], sums[2], sums[5]
        # The count, t and t^2 sums are the same for every knee: scalars (the same operations
        # per knee as on their rows, fewer vector passes).
        n, st, stt = float(sums[0, 0]), float(sums[3, 0]), float(sums[4, 0])
        var_z, cov, var_t = szz - sz * sz / n, szt - sz * st / n, stt - st * st / n
        spread = var_z > 1e-9 * (szz + 1)  # at least two distinct z: a slope is defined
        slope = np.maximum(np.where(spread, cov / np.where(spread, var_z, 1.0), 0.0), 0.0)
        error = var_t - 2 * slope * cov + slope * slope * var_z
        best = int(np.flatnonzero(error <= error.min() + 1e-9 * stt)[0])
        line_error, best_error = max(0.0, float(error[0])), max(0.0, float(error[best]))
        if best and self.knee_evidence and not self._knee_clear(line_error, best_error, n):
            best, best_error = 0, line_error
        self.slope, self.knee = float(slope[best]), float(self.knees[best])
        self.intercept = float((st - slope[best] * sz[best]) / n)
        self.residual = (best_error / n) ** 0.5  # for ``clip``
        # The slope's standard error (n - 2 degrees of freedom; 0 until a third step shows the
        # noise) and the mean step size it pivots about, for ``predict(deviations=)``.
        dof, var = n - 2.0, float(var_z[best])
        self.slope_error = (best_error / dof / var) ** 0.5 if dof > 0 and bool(spread[best]) else 0.0
        self.mean_z = float(sz[best] / n)

    def _knee_clear(self, line_error: float, knee_error: float, n: float) -> bool:
        """Whether the knee's gain over the line passes the F test (``knee_evidence``)."""
        if n <= 3:
            return False  # three points: some knee fits any three exactly
        return (line_error - knee_error) * (n - 3) > self.knee_evidence * knee_error

    def predict(self, real_tokens, padded_tokens=None, deviations: float = 0.0) -> Tensor:
        """Predicted seconds (float64 tensor, broadcasting over the inputs); never below 1e-6.
        ``deviations`` > 0: the slope lowered by that many standard errors (not below 0), the
        line turned about the mean step size it was fitted on: what a step of another size may
        cost at best while noise leaves the slope uncertain (a noiseless fit: unchanged)."""
        return torch.as_tensor(self.predict_array(real_tokens, deviations))

    def predict_array(self, real_tokens, deviations: float = 0.0) -> np.ndarray:
        """``predict`` as a float64 numpy array (or scalar): the policies' per-step scan."""
        slope = max(0.0, self.slope - deviations * self.slope_error)
        intercept = self.intercept + (self.slope - slope) * self.mean_z
        if type(real_tokens) is int:  # one step (observe's clip): the same operations on floats
            return np.float64(max(intercept + slope * max(real_tokens - self.knee, 0.0), 1e-6))
        real = np.asarray(real_tokens, dtype=np.float64)
        return np.maximum(intercept + slope * np.maximum(real - self.knee, 0.0), 1e-6)


class AcceptanceRate:
    """Running per-token acceptance rate alpha (geometric model), an exponential average.

    A request that verified v tokens and accepted a made a + 1 acceptance trials with a
    successes when a < v (the last trial failed), and a trials with a successes when a == v.
    """

    def __init__(self, prior: float = 0.5, decay: float = 0.9):
        self.successes, self.trials, self.decay = prior, 1.0, decay

    def observe(self, verified: Tensor, accepted: Tensor) -> None:
        successes = float(accepted.sum())
        trials = successes + float((accepted < verified).sum())
        if trials > 0:
            self.successes = self.decay * self.successes + successes
            self.trials = self.decay * self.trials + trials

    @property
    def value(self) -> float:
        return min(max(self.successes / self.trials, 1e-3), 0.999)


def _shape_name(padded: bool) -> str:
    return "a padded [B, 1 + w] block per step" if padded else "the real tokens only (a flattened engine)"


class _GoodputPolicy(Policy):
    """Shared machinery: the latency models, and a few exploration steps at different sizes
    so that the latency fit sees more than one point.

    The engine's shape (``padded``): what a step computes, so what it costs. None (the
    default): the loop that runs the policy sets it before the first step (``bind_engine``:
    ``generate`` from its ``flat``, ``sim.replay`` from its cost model, the vLLM proposer
    flat); True / False pins it, and a loop of the other shape then raises ValueError. A
    policy used directly (``choose`` / ``observe`` without a loop) needs the flag: without
    it they raise ValueError rather than guess."""

    exploration = (1.0, 0.0, 0.5)  # fractions of the largest size tried in the first steps
    # Steps an engine that mixes prompt tokens into decode steps must have shown before a
    # step carrying them is priced (``_without_prefill``): the joint fit needs a few points.
    prefill_warmup = 8

    def __init__(self, padded: bool | None = None):
        self.padded = padded
        self.verify_latency = LatencyModel()
        # seconds ~ c0 + c1 x computed tokens + c2 x prompt tokens, on every step of an engine
        # that reports prompt tokens (StepFeedback.prefill_tokens): c2 is a prompt token's price.
        self.prefill_fit = LatencyModel()
        self.draft_seconds = 0.0  # running mean of the drafting latency
        self.steps = 0

    def bind_engine(self, padded: bool | None, loop: str) -> bool:
        if padded is None:  # the loop does not say: the policy's flag must
            self._require_shape(f"{loop} does not say it: pass padded=True or False")
        elif self.padded is None:
            self.padded = bool(padded)
            self._shape_known()
        elif self.padded != bool(padded):
            raise ValueError(
                f"{self.name}: padded={self.padded} contradicts {loop}, which computes "
                f"{_shape_name(padded)}; leave padded unset (the loop sets it) or run a loop "
                f"of the policy's shape"
            )
        return self.padded

    def _shape_known(self) -> None:
        """Hook: the engine's shape (``self.padded``) has just been set."""

    def _require_shape(self, why: str = "") -> bool:
        if self.padded is None:
            raise ValueError(
                f"{self.name}: the engine's shape is unknown; "
                + (
                    why
                    or "run the policy in generate, sim.replay or the vLLM proposer (they set "
                    "it), or pass padded=True (a [B, 1 + w] block per step) or padded=False (a "
                    "flattened engine: the real tokens only)"
                )
            )
        return self.padded

    def _exploring(self) -> float | None:
        return self.exploration[self.steps] if self.steps < len(self.exploration) else None

    def _step_tokens(self, feedback: StepFeedback) -> tuple[int, int]:
        """(real, padded) query tokens of the step, the latency fit's features: a padded
        engine computes its block around the real tokens, a flattened one only what it
        computed (both features that count)."""
        if feedback.padded:
            return feedback.real_tokens, feedback.computed_tokens
        return feedback.computed_tokens, feedback.computed_tokens

    def observe(self, feedback: StepFeedback) -> None:
        if self._require_shape() != feedback.padded:
            raise ValueError(
                f"{self.name}: padded={self.padded}, but the feedback comes from an engine that "
                f"computes {_shape_name(feedback.padded)}"
            )
        decode_step = self._without_prefill(feedback)
        if decode_step is not None:
            self._observe_latency(decode_step)
        self.draft_seconds = (
            feedback.draft_seconds
            if self.steps == 0
            else 0.8 * self.draft_seconds + 0.2 * feedback.draft_seconds
        )
        self.steps += 1

    def _observe_latency(self, feedback: StepFeedback) -> None:
        self.verify_latency.observe(*self._step_tokens(feedback), feedback.verify_seconds)

    def _without_prefill(self, feedback: StepFeedback) -> StepFeedback | None:
        """The step as its decode part alone, what the latency fit prices: its seconds less
        its prompt tokens' price (``prefill_fit``'s c2, a line in both counts fitted on every
        step of such an engine), or None (nothing to learn) while that fit has seen fewer than
        ``prefill_warmup`` steps. Unchanged when the step computed no prompt tokens."""
        prompt = feedback.prefill_tokens
        if prompt is None:
            return feedback
        self.prefill_fit.observe(feedback.computed_tokens, prompt, feedback.verify_seconds)
        if not prompt:  # a decode step already (prefill_tokens 0)
            return feedback
        if self.prefill_fit.count < self.prefill_warmup:
            return None
        price = float(self.prefill_fit.coefficients[2])
        seconds = max(feedback.verify_seconds - price * prompt, 1e-6)
        return replace(feedback, verify_seconds=seconds, prefill_tokens=None)


class GoodputSD(_GoodputPolicy):
    """DSD / SmartSpec-style: one window k in 0..max_k for the whole batch, chosen each step
    to maximise predicted goodput = (expected accepted tokens + one bonus token per request)
    / predicted step latency, with a running acceptance rate and the fitted latency model.
    padded: the engine's shape (``_GoodputPolicy``; None: set by the loop that runs it)."""

    def __init__(self, max_k: int, padded: bool | None = None):
        super().__init__(padded)
        if max_k < 1:
            raise ValueError("GoodputSD: max_k must be >= 1")
        self.max_k = max_k
        self.acceptance = AcceptanceRate()
        self.name = f"GoodputSD({max_k})"
        self.k = max_k

    def num_draft(self, num_requests: int) -> int:
        explore = self._exploring()
        if explore is not None:
            self.k = round(explore * self.max_k)
            return self.k
        ks = torch.arange(self.max_k + 1, dtype=torch.float64)
        alpha = self.acceptance.value
        # Expected accepted tokens of a k-chain: alpha + alpha^2 + ... + alpha^k.
        expected = torch.tensor([sum(alpha**i for i in range(1, k + 1)) for k in range(self.max_k + 1)])
        tokens = num_requests * (ks + 1)
        latency = self.verify_latency.predict(tokens, tokens) + self.draft_seconds * (ks > 0)
        goodput = num_requests * (expected + 1) / latency
        self.k = int(goodput.argmax())
        return self.k

    def choose(self, proposal: Proposal) -> Tensor:
        self._require_shape()
        return _select(proposal, self.k * proposal.batch_size, per_request=self.k)

    def observe(self, feedback: StepFeedback) -> None:
        super().observe(feedback)
        self.acceptance.observe(feedback.verified, feedback.accepted)


class GoodputTetris(_GoodputPolicy):
    """TETRIS ranking with a goodput-chosen capacity: draft ``max_draft`` per request, rank the
    batch's candidates like Tetris, and verify the top m, m chosen to maximise
    (sum of the top m acceptance estimates + one bonus per request) / predicted latency(m).
    Never more than ``capacity`` when given. padded: the engine's shape (``_GoodputPolicy``;
    None: set by the loop that runs it): a padded step costs requests x block width, a
    flattened one (``generate(flat=True)``, vLLM) its real tokens."""

    def __init__(self, max_draft: int, capacity: int | None = None, padded: bool | None = None):
        super().__init__(padded)
        if max_draft < 1 or (capacity is not None and capacity < 0):
            raise ValueError("GoodputTetris: need max_draft >= 1 and capacity >= 0")
        self.max_draft, self.capacity = max_draft, capacity
        self.name = f"GoodputTetris({max_draft}{'' if capacity is None else f', capacity={capacity}'})"
        self.last_budget = 0

    def num_draft(self, num_requests: int) -> int:
        return self.max_draft

    def choose(self, proposal: Proposal) -> Tensor:
        self._require_shape()
        B = proposal.batch_size
        limit = B * proposal.num_candidates if self.capacity is None else self.capacity
        # The batch's candidates in TETRIS order (best estimate first; ancestors never rank
        # below their descendants because cumulative log-probabilities only decrease).
        scores = proposal.cum_logprobs.reshape(-1)
        order = torch.sort(scores, descending=True, stable=True).indices
        order = order[torch.isfinite(scores[order])][:limit]
        explore = self._exploring()
        if explore is not None:
            budget = round(explore * len(order))
        else:
            budget = self._best_budget(scores[order].double().exp(), order // proposal.num_candidates, B)
        self.last_budget = budget
        return _select(proposal, budget)

    def _best_budget(self, probs: Tensor, rows: Tensor, B: int) -> int:
        m = torch.arange(len(probs) + 1, dtype=torch.float64)
        expected = torch.cat([probs.new_zeros(1), probs.cumsum(0)])
        padded_tokens = B + m  # varlen: the real tokens
        if self.padded:
            # Block width after taking the top m: 1 + the largest per-request count.
            per_request = torch.nn.functional.one_hot(rows, B).cumsum(0) if len(rows) else torch.zeros(0, B)
            widest = (
                torch.cat([torch.zeros(1), per_request.max(1).values.double()])
                if len(rows)
                else torch.zeros(1)
            )
            padded_tokens = B * (1 + widest)
        latency = self.verify_latency.predict(B + m, padded_tokens) + self.draft_seconds
        goodput = (expected + B) / latency
        return int(goodput.argmax())


def __getattr__(name: str):
    """``policies.CostAwareTetris``: the cost-aware policy lives in cost_aware.py (it builds on
    _GoodputPolicy here, so it is imported on first use)."""
    if name == "CostAwareTetris":
        from .cost_aware import CostAwareTetris

        return CostAwareTetris
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
