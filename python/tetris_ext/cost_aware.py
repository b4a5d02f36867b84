"""CostAwareTetris: verify a candidate only while its expected gain pays for its marginal cost.

Tetris(k, extra) verifies a fixed budget of k tokens per request every step, however doubtful
the batch's candidates are; ThresholdSD stops each request at a fixed probability floor,
however cheap verification is. Both constants belong to one machine. Here both follow, every
step, from the step-cost model and the acceptance estimates:

    choose the selection S that maximises  goodput(S) = (sum_{i in S} p_i + B) / T(S)

p_i: the estimated probability that candidate i is accepted (``exp(cum_logprobs)``, the
path estimate TETRIS ranks by); B: one bonus token per request; T(S): the predicted step
latency. Adding candidate i pays iff p_i >= goodput * (marginal seconds of i): the *floor* is
goodput x marginal cost, and the *budget* is where the floor meets the ranked estimates.

The step cost depends on the engine:

- ``padded=False`` (a flattened engine: ``generate(flat=True)``, vLLM, the GPU roofline; the
  loop running the policy sets the flag, ``_GoodputPolicy``): T grows with
  the real verified tokens, so S is a prefix of the batch-wide ranking (the TETRIS order); the
  policy scans every prefix length m.
- ``padded=True`` (``generate``'s padded loop, a [B, 1 + w] block): T grows with the block
  width, and candidates within the width cost (almost) nothing more, so for each w every
  request verifies its w best candidates (a chain: its first w), and the policy scans
  w = 0..max_draft. A known cost model that charges real tokens too (the online fit does not:
  the block is computed whatever it holds) drops a candidate whose estimate is below the floor
  of that real-token cost.

T comes from a fixed ``cost_model`` (tetris_ext.cost_models) when one is known, which needs no
exploration; otherwise it is fitted online on the observed steps (on the tokens the engine
computes, slopes >= 0):

- ``padded=True``: ``LatencyModel`` (a line, as GoodputSD / GoodputTetris, with their
  exploration steps) plus the residual of each block width tried (``StepResidual``);
- ``padded=False``: ``KneeLatencyModel`` (flat up to a learnt knee, linear beyond: a GPU
  roofline's shape; a knee only where the data show one clearly, ``KNEE_EVIDENCE``: a CPU's
  noisy line otherwise grows spurious knees that move the floor; old steps forgotten and
  outlier steps clipped, ``FIT_FORGET`` / ``FIT_CLIP``), plus what each step size seen costs
  beyond it (``StepResidual``, interpolated and denoised; ``SIZE_RESIDUAL``: an engine's kernels
  by shape, e.g. a CPU's GEMM by row count), without exploration steps but a trust
  region (``_trusted``): until the fit has seen two step sizes (a slope), a step verifies at
  most ``probe`` x B candidates (a sixteenth of the batch: where the step is compute bound from
  the first token, at most a sixteenth of a step at risk; but at least ``MIN_PROBE`` or B, so
  that a noisy step shows its slope) and then one verifies nothing (the
  second size, free); after that a step computes at most twice the tokens of the largest step
  seen, so the fit grows into the unknown step by step. The line and the fixed exploration
  fractions cost the online policy 2-3% at batch 64-512 on the roofline: the line charged the
  free tokens below the knee, and one exploration step verified all 8 x B candidates (at batch
  512 a 3.5k-token step, 13 autoregressive steps); a first probe of B candidates (then B / 2)
  still cost 0.3% at batch 256, where autoregressive decoding is best.

Margin: verification's marginal seconds are charged at ``1 + margin`` (a candidate must beat
its cost by that fraction, not merely break even). A break-even candidate gains nothing in
expectation, but it costs certain seconds against an estimate, and it desynchronises requests
that would otherwise finish together. Replay of the pooled held-out traces (a
diagnosis; the margin was chosen on the tuning trace), batch 256 on the roofline (compute
bound from the first token: AR's 256 tokens sit at the knee), 2048 requests of 64 tokens: with margin 0
the policy verified tokens with p >= ~0.905 (goodput x 0.06 ms); its full-batch steps made
15.250 tokens/ms against autoregressive decoding's 15.252 (break even, as designed), but the
requests it had advanced finished early and the batch drained through 53 partial,
memory-bound steps at 10.2 tokens/ms (836 ms of 8.87 s), 0.975x autoregressive decoding,
which keeps every wave in step and never drains. Below the knee the marginal cost is 0 and the
margin changes nothing: the policy still fills the step to the knee.

Limits: with zero marginal cost up to a ``capacity`` (and prohibitive beyond it), the choice is
TETRIS's (the capacity's best candidates) for ``padded=False``, and StandardSD's (every request
its ``capacity / B`` first tokens) for ``padded=True``; with prohibitive marginal cost nothing is
verified (autoregressive decoding).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from .cost_models import CostModel, StepShape
from .drain import drain_select, draining
from .end_hazard import PRIOR_REQUESTS, EndHazard
from .policies import KneeLatencyModel, StepFeedback, _GoodputPolicy, _select
from .proposal import Proposal

__all__ = ["CostAwareTetris", "MARGIN", "GROWTH", "PROBE"]

# Chosen on the tuning trace only (bundled prompts; replay, CostAwareTetris + NgramLogistic as
# shipped since its online Bayesian update; `python bench/cost_aware.py --tune-margin 0 0.1 0.2
# 0.3 0.4 0.5 --gpu-batches 64 128 256 512 --out bench/results/cost_aware_tune_margin`): 0.3 was
# at or above the previous default 0.2 on all 10 configurations (online / known cost: CPU fit
# batch 8, roofline batch 64, 128, 256, 512). Rule: keep the default unless another margin is at
# or above it on all 10. Rechecked with NgramLogistic's token classes (2026-11-30): none is.
# Against 0.3: 0 and 0.1 lose 1.2% / 1.7% on the CPU (known cost) and 0 loses 2.3% / 3.4% at
# 256, though 0 is 1.6% above at 64 (known cost); 0.2 loses 0.9% at 128 (online); 0.4 gains 0.7%
# on the CPU and 1.7% at 128 (online) but loses 0.1% on the CPU and 0.02% at 128 (known); 0.5
# likewise (-0.05% / -0.02%). So 0.3 stays.
MARGIN = 0.3
# A flattened engine's online fit: a step computes at most GROWTH x the largest step seen so
# far (CostAwareTetris._trusted). Chosen on the tuning trace only (see bench/README.md).
GROWTH = 2.0
# ... and before the fit knows a slope, at most PROBE x B candidates (a step compute bound from
# its first token loses at most this fraction of a step). Chosen on the tuning traces only (Gemma
# and SmolLM2 bundled, roofline batch 8-512, both protocols, three request draws under burst;
# `python bench/cost_aware.py --tune-probe 1 0.125 0.0625 0.03125 ...`, bench/README.md "The first
# probe"): 1/16 left the fewest cells at 64-512 below the best baseline (8 of 24, a probe of B 17).
PROBE = 1 / 16
# ... but at least MIN_PROBE candidates (at most B): the probe must move a noisy step's seconds by
# more than their noise, or the fit may read a slope high enough to verify nothing from then on
# (and a step that verifies nothing teaches it nothing new). Live on this CPU's flat loop (~38 ms +
# 2.2 ms a token, a few ms of noise) the B / 16 probe at batch 8 was one candidate: the demo's
# CostAwareTetris verified 0.07 tokens a step, and synthetic runs on that line with 5 ms of noise
# stuck in 5 of 20 (tests/test_cost_aware.py, "stick"); with 8, none of 40 at batch 8 with 5 or
# 10 ms of noise. Larger floors cost on the roofline's tuning trace (steady, batch 64: 1.029x
# with B / 16 alone, 1.011x with 8, 0.996x with 16); from batch 128 up B / 16 >= 8 anyway.
MIN_PROBE = 8
# A flattened engine's online fit (KneeLatencyModel): a knee only when its F statistic against a
# line exceeds KNEE_EVIDENCE, old steps forgotten at FIT_FORGET per step, a step further than
# FIT_CLIP residual sigmas from the fit (within the sizes seen) counted as that far. Chosen
# offline on per-step logs of live flat-loop runs on the tuning prompts (`python
# bench/cost_fit_offline.py`; bench/README.md, "fit-log"): the largest F of any knee there was
# 7.8 (the CPU's step is a line plus noise), and refusing those knees cut the goodput lost per
# step against a hindsight cost from 2.0% to 0.15% on the first 4 logs; 4 more logs, one with a
# slow spell in its first 20 steps that the unforgetting fit kept as a 25% higher slope for
# the rest of the run, made forgetting and clipping pay: 0.76% -> 0.53% over all 8.
KNEE_EVIDENCE = 30.0
FIT_FORGET = 0.05
FIT_CLIP = 3.0
# A flattened engine's online fit prices steps with its slope lowered by this many standard
# errors (``KneeLatencyModel.predict(deviations=)``): optimism while noise leaves the slope
# uncertain, so that a slope read too steep from a noisy first probe is tested by larger steps
# instead of refusing every candidate for the rest of the run (bench/cost_aware_noise.py). Chosen
# on the tuning traces with lognormal step noise (`--optimism 0 1 2 3`): at sigma 0.15 the worst
# of 8 seeds went from 0.81x / 0.90x StandardSD(4) (code / chat) to 1.02x / 1.01x at 1, the
# medians moved by -2.0..+0.2%; 2 and 3 cost more of the median; noiseless replays are unchanged.
OPTIMISM = 1.0
# Opt-in (CostAwareTetris(knee_bracket=KNEE_BRACKET); off by default): a flattened engine's
# online fit locates a knee to within this fraction of the step size (_bracket_knee). Tried on
# the tuning traces (bench/README.md, "The drain and the probe"): +1.7% on Gemma's steady trace
# at batch 64, but 0.4-0.6% below the default's mean over six burst draws at 64 / 128 on
# Gemma (the whole run), so not the default. Its step bounded to 1/8 of the knee past the fitted
# knee (knee_reach, a0d1c30) was mixed too (bench/README.md, "The knee bracket with a bounded reach").
KNEE_BRACKET = 1 / 8
KNEE_GRID = 2 ** (1 / 16)  # two steps of KneeLatencyModel's knee grid (32 per doubling)
# A flattened engine's choice in the drain (no request waits to join): tetris_ext.drain. On since
# 2026-12-01, chosen on the tuning traces only (`python bench/cost_aware.py --tuning-only --drain
# --cost-aware-only --draws 3 --gpu-batches 8 64 128 256 512`, both models, both protocols, now with
# the live flat loop's cost line at batch 8; bench/README.md "The drain rule by default"): at or
# above the rule-less choice in 159 of 160 cells (+0.1% to +1.9% where it acts: the flat CPU line
# at batch 8, the roofline at 64-256), 2e-6 below in one (Gemma, roofline 64, online, one draw),
# within the 1e-5 counted as a tie; `python bench/threshold_tuning.py`: +0.9% to +2.0% on each
# Gemma tuning source on the flat CPU line. Off before: one cell 1.5e-5 below (earlier traces,
# and the CPU cells then were the padded loop's, where the rule never acts).
DRAIN = True
# A deep candidate discounted by the chance that its request reaches it before an unannounced end
# (tetris_ext.end_hazard, by output length). On since 2026-12-01, chosen on the tuning traces only
# (`python bench/cost_aware.py --tuning-only --end-hazard 1 4 16 --cost-aware-only --draws 3
# --gpu-batches 64 128 256 512`, both models, both protocols, both prefill engines; bench/README.md
# "An end hazard by output length"), prior 4, over the default without it: where requests end at
# random lengths (the steady protocol) +0.1% to +2.2% in every online roofline cell at 64 / 128
# (each model's and engine's mean +0.5% to +1.3%; known cost one draw 0.999); where they end at
# SmolLM2's EOS under burst the mean is level (0.999-1.002) with single draws from 0.979 to 1.012
# (mostly equal decode throughput: which group of joiners a request's end falls in, "the prefill
# split"); where none ends early (Gemma under burst) nothing changes. The constant rate it
# replaced was left off: it cost up to 1.6% under burst.
END_HAZARD = True
# A flattened engine's online fit adds, per step size, what the steps of that size cost beyond it
# (StepResidual, interpolated between the sizes seen). See bench/README.md, "The drain's steps on
# an AVX-512 host".
SIZE_RESIDUAL = True


# A known cost model's segment holds a kink when its middle's price is off the chord by more than
# this fraction (_FixedLatency): far above float rounding and a roofline's rounded attention work
# (~1e-14 of a step), far below any knee's effect.
KINK_TOLERANCE = 1e-9


class _FixedLatency:
    """Predicted step seconds (drafting + verification) from a known cost model.

    A cost model prices one shape at a time; the policy asks for up to B * N sizes per step
    (evenly spaced: a flattened engine's B + m tokens, m = 0, 1, ...; a padded loop's widths),
    so the model is priced at ``points`` evenly spaced sizes and interpolated linearly between
    them, each segment halved while its middle is off its chord (a kink inside: a roofline's
    knee). That is exact for piecewise-linear convex models (a line, a roofline) at about
    ``2 * points`` prices plus ten a kink. Interpolating across the knee, as before, charged the
    free tokens below it part of the compute slope (at 128 requests on the A100 / 8B roofline,
    0.029 ms each for the 21 free tokens left) and the tokens past it less than all of it.

    The step's context (``Proposal.context_tokens``, the KV cache its attention reads) is priced
    too: a roofline reads it beside the weights, which moves its knee (Llama-8B on one A100:
    from ~115 tokens without context to ~145 at 64 requests of 500). Attention work, each
    computed token against its request's context, is taken at the mean context (the few
    tokens each verified draft adds to its own request's are left out)."""

    def __init__(self, cost_model: CostModel, padded: bool, points: int = 33):
        self.cost_model, self.padded, self.points = cost_model, padded, points

    def _price(self, requests: int, real: int, padded: int, context: int) -> float:
        # The model's step_seconds (price_step's seconds without its split into parts): a model
        # that only hands out recorded steps in order (RecordedStepTimes) cannot predict, and says so.
        return self.cost_model.step_seconds(
            StepShape(
                requests=requests,
                query_tokens=real,
                padded_query_tokens=padded if self.padded else real,
                context_tokens=context,
                attention_work=round(real * (context / max(1, requests) + 1)),
                drafting_requests=requests,
            )
        )

    def predict(self, requests: int, real_tokens: Tensor, padded_tokens: Tensor, context: int = 0) -> Tensor:
        real, padded = real_tokens.tolist(), padded_tokens.tolist()  # priced one size at a time

        def price(i: int) -> float:
            return self._price(requests, int(real[i]), int(padded[i]), context)

        if len(real) <= self.points:
            grid = range(len(real))
        else:
            grid = torch.linspace(0, len(real) - 1, self.points).round().long().unique().tolist()
        priced = {i: price(i) for i in grid}

        def refine(lower: int, upper: int) -> None:
            """Halve [lower, upper] while its middle is off its chord. A convex cost on or below
            its chord everywhere that is on it somewhere inside is linear there."""
            if upper - lower < 2:
                return
            middle = (lower + upper) // 2
            chord = priced[lower] + (priced[upper] - priced[lower]) * (middle - lower) / (upper - lower)
            priced[middle] = price(middle)
            if abs(priced[middle] - chord) > KINK_TOLERANCE * abs(chord):
                refine(lower, middle)
                refine(middle, upper)

        for lower, upper in zip(grid[:-1], grid[1:]):
            refine(lower, upper)
        grid = sorted(priced)
        at = torch.tensor(grid, dtype=torch.float64)
        seconds = torch.tensor([priced[i] for i in grid], dtype=torch.float64)
        if len(at) == 1:
            return seconds.expand(len(real)).clamp(min=1e-9)
        index = torch.arange(len(real), dtype=torch.float64)
        upper = torch.searchsorted(at, index).clamp(1, len(at) - 1)
        lower = upper - 1
        weight = (index - at[lower]) / (at[upper] - at[lower])
        return (seconds[lower] + weight * (seconds[upper] - seconds[lower])).clamp(min=1e-9)


class StepResidual:
    """What a step costs beyond the online fit, per step shape: a padded loop's block width, a
    flattened engine's computed tokens.

    Engines pick kernels by shape, so a step's cost is not the fit's line (or knee) in its
    size. A padded loop on this CPU: a one-token step over a 300-500 token context costs more
    than a two-token one (PyTorch's attention for a single query), about 0.19 s against 0.13 s
    at batch 8. A flattened engine: MKL's float32 GEMM for the output head (Gemma 3's 262k x
    640, a [V, H] weight) costs below sixteen rows as if it reread the weights every three rows
    on an AVX-512 host (bench/flat_step.py --head), so a packed step of 3 / 11 / 14 / 19
    tokens costs 105 / 314 / 380 / 232 ms (bench/README.md, "The drain's steps on an AVX-512
    host"). A line cannot bend there; the
    residual of each shape seen can. Per shape, running means of the step's seconds and
    tokens (exponential, weight >= ``rate``, to follow a growing context); the residual is
    their difference from the *current* fit (``fitted``: tokens -> seconds), shrunk towards 0
    by n / (n + 1) so that one noisy step rules out nothing. ``interpolate``: a shape not seen
    takes the residual interpolated between the nearest shapes seen on either side (0 beyond
    them): a flattened engine has B x (1 + max_draft) sizes, too many to learn one by one, and
    neighbouring sizes share their kernels. ``denoise``: a shape's residual counts only as far
    as it stands out of the noise of its running mean, shrunk further by max(0, 1 - noise^2 /
    (n r^2)) (James-Stein's positive part; noise^2: the variance of the steps about their own
    shape's mean, pooled over the shapes seen twice, none until one has been; n: the steps a
    running mean weighs, at most (2 - rate) / rate). On a step that is a line plus noise the
    residuals are noise, and a size that looks costly by chance would not be tried again to
    show otherwise; the variance about each shape's own mean leaves out what the residuals
    are for, which the scatter about the fit would count as noise."""

    def __init__(self, shapes: int = 0, rate: float = 0.1, interpolate: bool = False, denoise: bool = False):
        self.seconds, self.tokens, self.count = np.zeros(shapes), np.zeros(shapes), np.zeros(shapes)
        self.squares = np.zeros(shapes)  # running means of the seconds squared (``denoise``)
        self.rate, self.interpolate, self.denoise = rate, interpolate, denoise

    def observe(self, shape: int, tokens: int, seconds: float) -> None:
        if shape >= len(self.count):
            grow = np.zeros(max(shape + 1, 2 * len(self.count)) - len(self.count))
            self.seconds, self.tokens, self.count, self.squares = (
                np.concatenate([a, grow]) for a in (self.seconds, self.tokens, self.count, self.squares)
            )
        self.count[shape] += 1
        weight = max(1.0 / float(self.count[shape]), self.rate)
        self.seconds[shape] += weight * (seconds - self.seconds[shape])
        self.tokens[shape] += weight * (tokens - self.tokens[shape])
        self.squares[shape] += weight * (seconds * seconds - self.squares[shape])

    def predict(self, shapes: np.ndarray, fitted) -> np.ndarray:
        """The residual (float64) of each shape in ``shapes`` (int array) from ``fitted``."""
        shapes = np.asarray(shapes)
        seen = np.flatnonzero(self.count)
        if not len(seen):
            return np.zeros(shapes.shape)
        residual = (self.seconds - np.asarray(fitted(self.tokens), dtype=np.float64)) * (
            self.count / (self.count + 1)
        )
        if self.denoise:
            residual = residual * self._signal(residual)
        if self.interpolate:
            return np.interp(shapes, seen, residual[seen], left=0.0, right=0.0)
        return np.concatenate([residual, np.zeros(max(0, int(shapes.max(initial=0)) + 1 - len(residual)))])[
            shapes
        ]

    def _signal(self, residual: np.ndarray) -> np.ndarray:
        """The share of each shape's residual that stands out of its mean's noise (``denoise``)."""
        weighed = np.minimum(self.count, (2 - self.rate) / self.rate)
        repeated = weighed >= 2
        if not repeated.any():
            return np.zeros_like(residual)  # no noise level known yet: no residual
        variance = np.maximum(self.squares - self.seconds * self.seconds, 0.0)
        noise = float((weighed * variance)[repeated].sum() / (weighed[repeated] - 1).sum())
        squared = np.maximum(residual * residual * weighed, 1e-300)
        return np.maximum(0.0, 1.0 - noise / squared)


class CostAwareTetris(_GoodputPolicy):
    """Batch-wide ranking with the floor and the budget from the step-cost model (module doc).

    max_draft: candidates drafted per request. padded: the engine computes a [B, width] block
    (True: ``generate(flat=False)``, a padded cost model) or only the real tokens (False:
    ``generate(flat=True)``, vLLM, the roofline); None (the default): the loop that runs the
    policy sets it before the first step, and an explicit flag that contradicts the loop raises
    ValueError (``_GoodputPolicy``); used directly, ``choose`` / ``observe`` need the flag.
    cost_model: a known step-cost model (no online fit, no exploration); None fits one online.
    capacity: never verify more than this many candidates per step. width_residual: a padded
    loop's online fit adds each tried width's residual (``StepResidual``); False: the line only.
    margin: verification's marginal seconds count 1 + margin times (module doc, "Margin");
    0: verify every candidate that breaks even. growth: a flattened engine's online fit lets a
    step compute at most this many times the tokens of the largest step seen (``_trusted``);
    probe: and, before it knows a slope, verify at most this fraction of B candidates (at least
    min_probe, or B). knee_bracket: None (the default) or a fraction: the online flat fit then
    places steps inside the knee's bracket until it is that narrow (``_bracket_knee``; opt-in,
    ``KNEE_BRACKET`` says why). optimism: a flattened engine's online fit prices steps with its
    slope lowered by this many standard errors (``OPTIMISM``; 0: the fitted slope as is).
    drain: a flattened engine's choice, once no request waits to join, minimises the drain's
    expected remaining time instead of maximising the step's goodput (tetris_ext.drain; needs
    the engine's ``Proposal.tokens_left`` / ``waiting``, else inert; None: ``DRAIN``). A padded
    loop's block-width choice (``_choose_width``) does not use it.
    end_hazard: a candidate at depth d counts p x P(its request reaches depth d), the chance
    that no EOS ends it first, by output length, learnt from the requests seen
    (tetris_ext.end_hazard; the engine's ``Proposal.output_lens`` and ``StepFeedback.output_lens``
    / ``generated`` / ``ended_early``; certain until one has ended early): a draft past the
    request's unannounced end is accepted and thrown away (bench/README.md, "Why the
    cost-aware policy trails a fixed floor at 64"); inert where the engine does not say
    (None: ``END_HAZARD``). end_prior: the pseudo-requests each output length's rate is
    shrunk by (``end_hazard.PRIOR_REQUESTS``). size_residual: a flattened engine's online fit
    adds what the steps of each size seen cost beyond it (``StepResidual``, interpolated between
    the sizes seen, counted as far as it stands out of the steps' noise; None: ``SIZE_RESIDUAL``).
    """

    def __init__(
        self,
        max_draft: int = 8,
        padded: bool | None = None,
        cost_model: CostModel | None = None,
        capacity: int | None = None,
        width_residual: bool = True,
        margin: float = MARGIN,
        growth: float = GROWTH,
        probe: float = PROBE,
        min_probe: int = MIN_PROBE,
        knee_bracket: float | None = None,
        optimism: float | None = None,
        drain: bool | None = None,
        end_hazard: bool | None = None,
        end_prior: float = PRIOR_REQUESTS,
        size_residual: bool | None = None,
    ):
        super().__init__(padded)
        optimism = OPTIMISM if optimism is None else optimism
        if (
            max_draft < 1
            or (capacity is not None and capacity < 0)
            or not margin >= 0
            or not growth > 1
            or not probe > 0
            or min_probe < 1
            or (knee_bracket is not None and not knee_bracket > 0)
            or not optimism >= 0
        ):
            raise ValueError(
                "CostAwareTetris: need max_draft >= 1, capacity >= 0, margin >= 0, growth > 1, "
                "probe > 0, min_probe >= 1, knee_bracket > 0 (or None) and optimism >= 0"
            )
        self.max_draft, self.capacity, self.margin = max_draft, capacity, margin
        self.cost_model, self.fixed = cost_model, None
        self.last_budget, self.last_floor = 0, float("nan")
        self.width_residual = width_residual
        self.size_residual = SIZE_RESIDUAL if size_residual is None else size_residual
        self.growth, self.probe, self.min_probe = growth, probe, min_probe
        self.knee_bracket, self.optimism = knee_bracket, optimism
        self.drain = DRAIN if drain is None else drain
        self.end_hazard = EndHazard(end_prior) if (END_HAZARD if end_hazard is None else end_hazard) else None
        self.sizes_seen: set[int] = set()  # a flattened engine's online fit: the step sizes observed
        self.prompts_told = False  # the last choice was told its step's prompt tokens (_choose_prefix)
        self.context = 0  # the tokens the current step's requests hold in the cache (choose)
        self.bracketing = False  # the last step chosen was in the knee's bracket (_bracket_knee)
        self._shape_known()

    def _shape_known(self) -> None:
        """What depends on the engine's shape: the name, the known cost's pricing, and a
        flattened engine's online fit (a knee model instead of the line)."""
        shape = {None: "", True: ", padded", False: ", flat"}[self.padded]
        model = "" if self.cost_model is None else f", cost={self.cost_model.name}"
        self.name = (
            f"CostAwareTetris({self.max_draft}{shape}{model}"
            f"{'' if self.capacity is None else f', capacity={self.capacity}'})"
        )
        if self.padded is None:
            return
        # The online fit's residual per step shape: a padded loop's width, a flattened engine's
        # computed tokens (interpolated between the sizes seen; StepResidual).
        self.bumps = (
            StepResidual(self.max_draft + 2, interpolate=False)
            if self.padded
            else StepResidual(interpolate=True, denoise=True)
        )
        self.use_bumps = self.width_residual if self.padded else self.size_residual
        if self.cost_model is not None:
            self.fixed = _FixedLatency(self.cost_model, self.padded)
        elif not self.padded:
            self.verify_latency = KneeLatencyModel(
                forget=FIT_FORGET, knee_evidence=KNEE_EVIDENCE, clip=FIT_CLIP
            )

    def num_draft(self, num_requests: int) -> int:
        return self.max_draft

    def _step_tokens(self, feedback: StepFeedback) -> tuple[int, int]:
        """The tokens the engine computed, the online fit's one count: a padded loop computes
        its [B, width] block whatever the selection (the real tokens only cost bookkeeping), a
        flattened engine its real tokens. Fitting both counts at once let noise split one
        effect into opposite slopes, and the padded floor, which reads the real-token slope
        alone, then refused every candidate (live on code: 94 steps instead of 64)."""
        return feedback.computed_tokens, feedback.computed_tokens

    def _without_prefill(self, feedback: StepFeedback) -> StepFeedback | None:
        """A flattened engine that told the step's prompt tokens before the choice: the choice
        priced them as computed tokens (``_flat_latency``), so the fit learns the same, the
        whole forward on all its tokens (a roofline computes a prompt token as a decoding one).
        Otherwise (vLLM: the step is planned after the proposer drafts) the prompt tokens are
        priced apart (``_GoodputPolicy._without_prefill``)."""
        if feedback.prefill_tokens is not None and self.prompts_told and not self.padded:
            computed = feedback.computed_tokens + feedback.prefill_tokens
            return replace(feedback, computed_tokens=computed, prefill_tokens=None)
        return super()._without_prefill(feedback)

    def _observe_latency(self, feedback: StepFeedback) -> None:
        if self.fixed is not None:
            return super()._observe_latency(feedback)
        if self.padded:
            self.bumps.observe(
                feedback.computed_tokens // feedback.num_requests,
                feedback.computed_tokens,
                feedback.verify_seconds,
            )
            return super()._observe_latency(feedback)
        tokens = self._step_tokens(feedback)
        self.sizes_seen.add(tokens[0])
        # A step in the knee's bracket measures what the fit does not know: never clipped. Its
        # residual is clipped as the fit clips the step: one preempted step would otherwise mark
        # its size (and, interpolated, its neighbours) costly, and a size that looks costly is
        # not tried again to show otherwise.
        seconds = feedback.verify_seconds
        clipped = seconds if self.bracketing else self.verify_latency.clipped(tokens[0], seconds)
        self.bumps.observe(tokens[0], tokens[0], clipped)
        self.verify_latency.observe(*tokens, seconds, clip=not self.bracketing)

    def _exploring(self):
        """Exploration steps only for a padded loop's line fit: a known model needs none, and a
        flattened engine's knee fit grows into the unknown step by step (``_trusted``)."""
        return None if self.fixed is not None or not self.padded else super()._exploring()

    def _trusted(self, B: int) -> int:
        """A flattened engine's online fit: the most tokens a step may compute. Beyond the steps
        it has seen the knee fit knows nothing (flat so far, it calls every candidate free, and
        one step verifying all 8 x 512 candidates costs 13 autoregressive steps). Until it has
        seen two step sizes it knows no slope, and where the step is compute bound from the
        first token (batch 256 and up on the 70B roofline) every verified candidate costs:
        so first a probe of ``probe`` x B candidates (B / 16: at most a sixteenth of a step
        at risk; at least ``MIN_PROBE``, or B, so that a noisy step shows its slope), then a
        step that verifies nothing (a second size at no risk); then at most
        ``growth`` x the largest step seen, where the fit's slope prices what it adds."""
        if self.fixed is not None or self.padded:
            return 1 << 62
        fit = self.verify_latency
        if not fit.count or fit.min_tokens == fit.max_tokens:  # no slope known yet
            seen_above = fit.count and fit.max_tokens > B
            return B if seen_above else B + max(math.ceil(self.probe * B), min(B, self.min_probe))
        return int(self.growth * max(B, fit.max_tokens))

    def _latency(self, B: int, real: Tensor, padded: Tensor) -> Tensor:
        """Predicted step seconds of a padded loop (tensors), from a known cost or the line fit."""
        if self.fixed is not None:
            return self.fixed.predict(B, real, padded, self.context)
        seconds = self.verify_latency.predict(padded, padded) + self.draft_seconds
        if self.use_bumps:
            widths = torch.div(padded, B, rounding_mode="floor").long().numpy()
            fitted = lambda t: self.verify_latency.predict(torch.from_numpy(t), torch.from_numpy(t)).numpy()  # noqa: E731
            residual = self.bumps.predict(widths, fitted)
            seconds = (seconds + torch.from_numpy(residual)).clamp(min=1e-6)
        return seconds

    def _flat_latency(self, B: int, tokens: np.ndarray, prompt: int = 0) -> np.ndarray:
        """Predicted step seconds of a flattened engine computing ``tokens`` decoding tokens
        (float64 numpy: the per-step scan stays off torch's per-op dispatch), from a known cost
        or the knee fit. ``prompt``: joining requests' prompt tokens in the same forward (a
        chunked-prefill engine that says so before the choice, ``Proposal.prefill_tokens``):
        the step then computes ``tokens + prompt``, less what the prompts add to the step that
        verifies nothing (their own cost, not the candidates'): a candidate pays its marginal
        seconds beside the prompts, which past the knee is compute even where the decoding
        tokens alone would sit below it."""
        if not prompt:
            return self._flat_forward(B, tokens)
        own = self._flat_forward(B, np.array([B + prompt, B], dtype=np.float64))
        return self._flat_forward(B, tokens + prompt) - (own[0] - own[1])

    def _flat_forward(self, B: int, tokens: np.ndarray) -> np.ndarray:
        if self.fixed is not None:
            steps = torch.from_numpy(tokens)
            return self.fixed.predict(B, steps, steps, self.context).numpy()
        seconds = self.verify_latency.predict_array(tokens, deviations=self.optimism) + self.draft_seconds
        if self.use_bumps:
            residual = self.bumps.predict(tokens.astype(np.int64), self.verify_latency.predict_array)
            seconds = np.maximum(seconds + residual, 1e-6)
        return seconds

    def _flat_seconds(self, B: int, prompt: int = 0):
        """m [M] float64 tensor -> the seconds, margin included, of flat steps computing B + m
        decoding tokens (and ``prompt`` prompt tokens, ``_flat_latency``)."""
        return lambda m: torch.from_numpy(self._with_margin(self._flat_latency(B, (B + m).numpy(), prompt)))

    def _with_margin(self, latency: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Step seconds with verification's extra seconds (beyond ``latency[0]``, the step that
        verifies nothing) charged at 1 + margin: a candidate must beat its marginal cost by
        that fraction, not merely break even (module doc, "Margin")."""
        return latency + self.margin * (latency - latency[0]).clip(min=0)

    def observe(self, feedback: StepFeedback) -> None:
        told = (feedback.output_lens, feedback.generated, feedback.ended_early)
        if all(t is not None for t in told):
            after, generated, ended = told
            self.observe_lengths(after - generated, after, ended)
        super().observe(feedback)

    def observe_lengths(self, before: Tensor, after: Tensor, ended_early: Tensor) -> None:
        """Requests' output lengths before and after a step ([B] int64) and whether each ended
        early in it ([B] bool), for ``end_hazard`` (nothing without it). ``observe`` passes the
        engine's ``StepFeedback``; the vLLM proposer calls it itself (a request's end shows a
        step after its last tokens, apart from the step it times)."""
        if self.end_hazard is not None:
            self.end_hazard.observe(before, after, ended_early)

    def choose(self, proposal: Proposal) -> Tensor:
        self._require_shape()
        self.context = proposal.context_tokens or 0  # the KV cache a known cost model prices
        if self.end_hazard is not None and proposal.output_lens is not None:
            # times the chance the request runs to that depth (0 in log while none ended early)
            reach = self.end_hazard.log_reach(proposal.output_lens, proposal.depths())
            proposal = replace(
                proposal, cum_logprobs=proposal.cum_logprobs + reach.to(proposal.cum_logprobs.device)
            )
        probs = proposal.cum_logprobs.double().exp()
        explore = self._exploring()
        if self.padded:
            probs = probs.masked_fill_(proposal.tokens < 0, 0.0).nan_to_num_()  # padding, NaN: 0
            selected = self._choose_width(proposal, probs, explore)
        else:  # the scan in numpy (float64); the estimates stay torch's (numpy's exp may differ)
            probs = probs.cpu().numpy()
            probs[proposal.tokens.cpu().numpy() < 0] = 0.0  # padding, NaN: 0 (exact, as torch's)
            selected = self._choose_prefix(proposal, np.nan_to_num(probs, copy=False), explore)
        self.last_budget = int(np.count_nonzero(selected.cpu().numpy()))
        return selected

    def _choose_prefix(self, proposal: Proposal, probs: np.ndarray, explore) -> Tensor:
        """Flattened engine: the best prefix of the batch-wide ranking; in the drain (no request
        waits to join, each one's tokens left known; ``drain``), the drain's (tetris_ext.drain).
        probs: [B, N] estimates (float64 numpy, 0 for padding); the scan is numpy for speed,
        exact as torch's (tests/test_policy_speed_equivalence.py)."""
        B = proposal.batch_size
        # A chunked-prefill engine that tells this step's prompt tokens: priced with them, and
        # the trust region counts them among the step's tokens (``_trusted``).
        self.prompts_told = proposal.prefill_tokens is not None
        prompt = proposal.prefill_tokens or 0
        room = max(0, self._trusted(B) - B - prompt)
        if self.drain and explore is None and draining(proposal):
            self.last_floor = float("nan")
            limit = min(room, probs.size if self.capacity is None else self.capacity)
            return drain_select(proposal, torch.from_numpy(probs), self._flat_seconds(B, prompt), limit)
        ranked = np.sort(probs.reshape(-1))[::-1]  # best first
        ranked = ranked[ranked > 0][: self.capacity][:room]
        if explore is not None:
            return _select(proposal, round(explore * len(ranked)))
        m = np.arange(len(ranked) + 1, dtype=np.float64)
        gain = np.concatenate([[0.0], ranked.cumsum()]) + B
        latency = self._with_margin(self._flat_latency(B, B + m, prompt))
        goodput = gain / latency
        best = self._bracket_knee(B, int(goodput.argmax()), len(ranked))
        self.last_floor = float(goodput[best] * (latency[min(best + 1, len(m) - 1)] - latency[best]))
        return _select(proposal, best)

    def _bracket_knee(self, B: int, best: int, candidates: int) -> int:
        """A flattened engine's online fit: the step computing ``B + best`` tokens, or one at
        the middle of the knee's bracket. Between the largest step seen at or below the fitted
        knee and the smallest seen beyond it every knee fits the steps alike, and the fit takes
        the lowest (``KneeLatencyModel``): the doubling trust region (``_trusted``) overshoots a
        roofline's knee by up to 2x, and the policy then settled wherever the lowest knee and the
        single steep step put its floor, never learning better (steady roofline, batch 64: 147 to
        161 candidates a step by the first probe's size, 0.996-1.029x the best baseline). So while
        the chosen step lies inside a bracket wider than ``knee_bracket`` of its upper end, the
        step is the bracket's middle instead: a flat step there lifts the lowest knee to it, a
        steep one pins the slope with a second point beyond the knee. Brackets only narrow, so
        this ends after a few steps. Off (``knee_bracket=None``) by default: ``KNEE_BRACKET``."""
        self.bracketing = False
        fit = self.verify_latency
        if self.knee_bracket is None or self.fixed is not None or self.padded or fit.knee <= 0:
            return best
        edge = fit.knee * KNEE_GRID  # the knee grid's resolution: a step there is still flat
        below = [n for n in self.sizes_seen if n <= edge]
        above = [n for n in self.sizes_seen if n > edge]
        if not below or not above:
            return best
        low, high = max(below), min(above)
        width = high - low
        if width <= self.knee_bracket * high or not low - width < B + best < high:
            return best  # the knee is known well enough, or the choice does not hinge on it
        self.bracketing = True
        return min(max(0, (low + high) // 2 - B), candidates)

    def _choose_width(self, proposal: Proposal, probs: Tensor, explore) -> Tensor:
        """Padded loop: the best block width 1 + w; every request verifies its w best
        candidates (a chain: its first w), less those whose estimate does not pay for their
        real-token cost."""
        B, N = proposal.tokens.shape
        if explore is not None:
            return _select(proposal, B * N, per_request=round(explore * N))
        order = probs.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(N).expand(B, N))  # 0 = best of its row
        widths = torch.arange(N + 1)
        inside = ((rank[None] < widths[:, None, None]) & (probs > 0)[None]).flatten(1)  # [W, B * N]
        real = B + inside.sum(1).double()
        latency = self._latency(B, real, B * (1 + widths.double()))
        goodput = ((probs.flatten()[None] * inside).sum(1) + B) / self._with_margin(latency)
        w = int(goodput.argmax())
        # A candidate within the width still pays its real-token cost (if the model has one):
        # verify it only when p >= goodput x the seconds of one more real token.
        one_more = self._latency(B, real[w : w + 1] + 1, B * (1 + widths[w : w + 1].double()))
        self.last_floor = float(goodput[w] * (1 + self.margin) * (one_more - latency[w : w + 1]).clamp(min=0))
        cap = B * N if self.capacity is None else self.capacity
        return _select(
            proposal, cap, per_request=w, min_prob=self.last_floor if self.last_floor > 0 else None
        )
