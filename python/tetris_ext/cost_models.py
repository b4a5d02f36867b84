"""Step-latency models for the trace-replay simulator (tetris_ext.sim).

A cost model turns the shape of one decoding step into seconds. Two kinds:

- `LinearCostModel`: a + b * requests + c * query tokens + d * (query x context) attention work,
  fitted by non-negative least squares to step times measured on a real machine
  (`measure_step_times` times the target's forward passes with a KV cache, as the live loop
  runs them; `LinearCostModel.fit` fits them).
- `RooflineCostModel`: a GPU serving a large target, from first principles: every step reads
  all weights once (memory bound) and does 2 * params FLOPs per token through the target
  (compute bound); the step takes the larger of the two, plus the KV-cache read and a fixed
  per-step overhead. The default parameters describe Llama-3.1-70B in bf16, tensor-parallel
  over 4 H100 SXM GPUs (see `h100x4_llama70b`, what the policies' constants were chosen on);
  `a100_llama8b` is a smaller machine whose steps turn compute bound at half the tokens.

The two disagree on purpose: on a CPU every verified token costs about as much as a decoded
one, so verifying doubtful drafts is expensive; on a GPU a step's first ~hundreds of tokens are
almost free, so capacity is cheap until the step turns compute bound. Seeing a policy ranking
under both tells a user which regime their numbers come from.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StepShape:
    """What one decoding step asks of the hardware."""

    requests: int  # requests verified in this step
    query_tokens: int  # tokens through the target: sum over requests of (verified drafts + 1)
    context_tokens: int = 0  # sum over requests of the KV-cache length before the step
    attention_work: int = 0  # sum over requests of query_len * context_len
    padded_query_tokens: int = 0  # requests * block width (what a padded batch computes); 0: = query_tokens
    drafting_requests: int = 0  # requests the drafter proposed for
    drafted_tokens: int = 0  # candidates the drafter proposed (all, selected or not)
    draft_passes: int = 0  # sequential forward passes of a draft model (0 for model-free drafters)
    prefill_tokens: int = 0  # prompt tokens of requests that join in this step
    prefill_requests: int = 0  # requests that join in this step


@dataclass(frozen=True)
class StepCost:
    """seconds: the whole step, prefill of joining requests included (the simulated clock);
    draft_seconds / verify_seconds: what a policy is told (the live loop times prefill apart,
    and reports drafting, and selection + verification)."""

    seconds: float
    draft_seconds: float
    verify_seconds: float
    # A chunked-prefill engine computes the joining prompts inside the step's forward: the prompt
    # tokens it computed there (None: prompts are prefilled apart), and the seconds charged to
    # them (what they add to the step's roots alone; verify_seconds has the rest of the forward).
    fused_prefill_tokens: int | None = None
    fused_prefill_seconds: float = 0.0


class CostModel(Protocol):
    name: str

    def step_seconds(self, step: StepShape) -> float:
        """Seconds of the whole step: prefill of joining requests, drafting, verification."""

    def draft_seconds(self, step: StepShape) -> float:
        """The drafting part of step_seconds (what policies see as draft latency)."""


@dataclass
class LinearCostModel:
    """seconds = sum(coef[f] * feature f); features from `features()`; fitted with NNLS.

    `padded`: charge the target for requests * block width query tokens (what a padded batch,
    like this project's reference loop, computes) rather than the real ones (a varlen engine).
    """

    coef: dict[str, float]
    name: str = "fitted"
    padded: bool = True
    info: dict = field(default_factory=dict)  # how it was fitted: samples, residuals, machine

    FEATURES = (
        "step",
        "request",
        "query_token",
        "attention_pair",
        "prefill_request",
        "prefill_token",
        "drafting_request",
        "draft_pass",
    )
    DRAFT_FEATURES = ("drafting_request", "draft_pass")

    def features(self, s: StepShape) -> dict[str, float]:
        query = s.padded_query_tokens if (self.padded and s.padded_query_tokens) else s.query_tokens
        return {
            "step": 1.0,
            "request": float(s.requests),
            "query_token": float(query),
            "attention_pair": float(s.attention_work),
            "prefill_request": float(s.prefill_requests),
            "prefill_token": float(s.prefill_tokens),
            "drafting_request": float(s.drafting_requests),
            "draft_pass": float(s.draft_passes),
        }

    def step_seconds(self, step: StepShape) -> float:
        f = self.features(step)
        return sum(self.coef.get(k, 0.0) * v for k, v in f.items())

    def draft_seconds(self, step: StepShape) -> float:
        f = self.features(step)
        return sum(self.coef.get(k, 0.0) * f[k] for k in self.DRAFT_FEATURES)

    @classmethod
    def fit(
        cls, samples: list[tuple[StepShape, float]], name: str = "fitted", padded: bool = True, **info
    ) -> LinearCostModel:
        """Non-negative least squares on relative error (each sample weighted by 1 / its time),
        so that small steps count as much as large ones. Features that are 0 in every sample
        are left out (their coefficient is 0)."""
        import numpy as np
        from scipy.optimize import nnls

        probe = cls({}, padded=padded)
        rows = [probe.features(s) for s, _ in samples]
        used = [k for k in cls.FEATURES if any(r[k] for r in rows)]
        X = np.array([[r[k] for k in used] for r in rows])
        y = np.array([t for _, t in samples])
        w = 1.0 / y
        coef, _ = nnls(X * w[:, None], y * w)
        pred = X @ coef
        rel = np.abs(pred - y) / y
        info = info | {
            "samples": len(samples),
            "median_rel_error": float(np.median(rel)),
            "max_rel_error": float(rel.max()),
        }
        return cls(dict(zip(used, map(float, coef))), name=name, padded=padded, info=info)

    def to_json(self) -> dict:
        return {
            "kind": "linear",
            "name": self.name,
            "padded": self.padded,
            "coef": self.coef,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, d: dict) -> LinearCostModel:
        return cls(
            dict(d["coef"]),
            name=d.get("name", "fitted"),
            padded=d.get("padded", True),
            info=d.get("info", {}),
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> LinearCostModel:
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass
class RooflineCostModel:
    """A dense transformer target on GPUs: max(memory time, compute time) + overhead per step.

    memory: all weights once per step, plus the KV cache of every request once per step
    (queries of one request share their KV reads, as in FlashAttention-style kernels);
    compute: 2 * params FLOPs per query token, plus 4 * layers * q_dim FLOPs per
    (query token, context token) pair for attention. Efficiencies scale the peak numbers
    to what serving kernels reach. Draft models, when present, add their own roofline per pass.
    """

    name: str
    params: float  # target parameters
    layers: int
    q_dim: int  # attention heads * head dim
    kv_bytes_per_token: float  # K and V of one token over all layers
    bytes_per_param: float
    gpus: int
    hbm_bytes_per_s: float  # per GPU
    flops_per_s: float  # dense bf16 per GPU
    bandwidth_efficiency: float = 0.8
    compute_efficiency: float = 0.6
    step_overhead_s: float = 1.5e-3  # launches, all-reduces, sampling, scheduling
    draft_params: float = 0.0  # a draft model's parameters (0: model-free drafting)
    # Where the prompts of joining requests are computed: False, in a forward of their own before
    # the step (this project's loop; vLLM V0), which reads the weights once more; True, inside
    # the step's forward beside the decoding tokens (chunked prefill: vLLM V1, SGLang), where
    # they add compute but no weight read.
    chunked_prefill: bool = False

    def _roofline(self, params: float, tokens: int, kv_bytes: float, attn_flops: float) -> float:
        bw = self.gpus * self.hbm_bytes_per_s * self.bandwidth_efficiency
        flops = self.gpus * self.flops_per_s * self.compute_efficiency
        memory = (params * self.bytes_per_param + kv_bytes) / bw
        compute = (2.0 * params * tokens + attn_flops) / flops
        return max(memory, compute)

    def step_seconds(self, s: StepShape) -> float:
        kv = s.context_tokens * self.kv_bytes_per_token
        attn = 4.0 * self.layers * self.q_dim * s.attention_work
        fused = s.prefill_tokens if self.chunked_prefill else 0
        t = self.step_overhead_s + self._roofline(self.params, s.query_tokens + fused, kv, attn)
        if s.prefill_tokens and not self.chunked_prefill:
            t += self._roofline(self.params, s.prefill_tokens, 0.0, 0.0)
        return t + self.draft_seconds(s)

    def draft_seconds(self, s: StepShape) -> float:
        """A draft model's passes (each reads its weights once); model-free drafting is free."""
        if not (self.draft_params and s.draft_passes):
            return 0.0
        per_pass = max(1, s.drafted_tokens // s.draft_passes)
        return s.draft_passes * self._roofline(self.draft_params, per_pass, 0.0, 0.0)

    def to_json(self) -> dict:
        return {"kind": "roofline"} | asdict(self)


def _bf16_gqa_target(
    name, params, layers, query_heads, kv_heads, gpus, hbm_bytes_per_s, flops_per_s, overrides
):
    """A dense bf16 target with grouped-query attention (heads of 128) on ``gpus`` GPUs."""
    head_dim = 128
    return RooflineCostModel(
        **(
            {
                "name": name,
                "params": params,
                "layers": layers,
                "q_dim": query_heads * head_dim,
                "kv_bytes_per_token": layers * 2 * kv_heads * head_dim * 2,  # (K, V) per layer, bf16
                "bytes_per_param": 2.0,
                "gpus": gpus,
                "hbm_bytes_per_s": hbm_bytes_per_s,
                "flops_per_s": flops_per_s,
            }
            | overrides
        )
    )


def h100x4_llama70b(**overrides) -> RooflineCostModel:
    """Llama-3.1-70B (80 layers, 64 query heads and 8 KV heads of 128, bf16) on 4x H100 SXM
    (3.35 TB/s HBM3 and 989 dense bf16 TFLOP/s each, tensor parallel). Weights take about
    13 ms to read per step at 80% of peak bandwidth (15 ms a step with the overhead); a token
    costs 140 GFLOP, about 0.06 ms at 60% of peak, so a step without context turns compute bound
    near 220 tokens (about 240 at 64 requests of 500 tokens, whose KV cache is read too)."""
    return _bf16_gqa_target("roofline-4xH100-70B", 70.6e9, 80, 64, 8, 4, 3.35e12, 989e12, overrides)


def a100_llama8b(**overrides) -> RooflineCostModel:
    """Llama-3.1-8B (32 layers, 32 query heads and 8 KV heads of 128, bf16) on one A100 SXM
    80GB (2.039 TB/s HBM2e, 312 dense bf16 TFLOP/s). Weights take about 9.8 ms to read per step
    at 80% of peak bandwidth; a token costs 16 GFLOP, about 0.086 ms at 60% of peak, so a step
    without context turns compute bound near 115 tokens (the KV cache's read moves it later:
    about 145 at 64 requests of 500 tokens), half the 4x H100 / 70B machine's ~220."""
    return _bf16_gqa_target("roofline-A100-8B", 8.03e9, 32, 32, 8, 1, 2.039e12, 312e12, overrides)


# The roofline machines a replay can be priced on, by name (bench/cost_aware.py --roofline).
ROOFLINES = {"4xH100-70B": h100x4_llama70b, "A100-8B": a100_llama8b}


@cache
def _faces(n: int) -> tuple:
    """The faces of ``solve_nonnegative_slopes`` for n unknowns, in its order: per face the
    indices of the free unknowns (the intercept and the slopes not held at 0), as numpy
    indices of the gram's rows and columns (an [k, k] grid) and of the moment's ([k, 1])."""
    import itertools

    import numpy as np

    faces = []
    for zeros in itertools.product((False, True), repeat=n - 1):
        free = np.array([0] + [i + 1 for i, zero in enumerate(zeros) if not zero])
        faces.append((free, np.ix_(free, free), free[:, None]))
    return tuple(faces)


def solve_nonnegative_slopes(gram, moment):
    """argmin_b  b' gram b - 2 b' moment  subject to b[1:] >= 0 (b[0], the intercept, free):
    least squares from its normal equations with slopes that cannot be negative.

    Step latency never falls when a step computes more tokens. An unconstrained fit on the
    steps a policy happens to take can say otherwise: when two features (real and padded
    tokens) nearly move together, noise splits their effect into a large positive and a large
    negative slope, and a policy that reads one slope alone as a marginal cost (the
    cost-aware floor) then refuses every candidate and never sees the data that would correct
    it. The optimum is the unconstrained optimum of one face (a set of slopes held at 0), so
    every face is solved (2^slopes systems, 4 for LatencyModel) and the best feasible kept.
    gram, moment: CPU float64 tensors.
    """
    import numpy as np
    import torch

    # Only the solves and the objective are torch's (LAPACK's least squares, the products);
    # picking a face's rows, scattering its solution and the sign test are exact numpy
    # bookkeeping, cheaper than torch's boolean indexing: the same result bit for bit (the
    # vLLM proposer runs this on every step a prompt joins; tests/test_policy_speed_equivalence.py).
    g, m = gram.numpy(), moment.numpy()
    best, best_value = torch.zeros_like(moment), float("inf")
    for free, grid, column in _faces(gram.shape[0]):
        fit = torch.linalg.lstsq(torch.from_numpy(g[grid]), torch.from_numpy(m[column]))
        solution = fit.solution.numpy()[:, 0]
        if (solution[1:] < 0).any():  # a free slope below 0 (free[0] is the intercept)
            continue
        b = np.zeros_like(m)
        b[free] = solution
        # b' gram b - 2 b' moment: the products torch's, 2 b and the difference of the two
        # floats exact in numpy and Python alike.
        face = torch.from_numpy(b)
        value = float(face @ gram @ face) - float(torch.from_numpy(2 * b) @ moment)
        if value < best_value:
            best, best_value = face, value
    return best


def price_step(model: CostModel, step: StepShape) -> StepCost:
    """The cost of one step under `model` (a model may define `price` itself)."""
    if hasattr(model, "price"):
        return model.price(step)
    total = model.step_seconds(step)
    draft = model.draft_seconds(step)
    if getattr(model, "chunked_prefill", False):
        # The prompts share the forward: charge them what they add to the step's roots alone
        # (an autoregressive step), and the verified candidates their marginal seconds beside
        # the prompts (past the knee, compute they would not pay in a step of their own).
        prompts = 0.0
        if step.prefill_tokens:
            roots = replace(step, query_tokens=step.requests)
            no_prompts = replace(roots, prefill_tokens=0, prefill_requests=0)
            prompts = model.step_seconds(roots) - model.step_seconds(no_prompts)
        return StepCost(total, draft, total - prompts - draft, step.prefill_tokens, prompts)
    without_prefill = model.step_seconds(replace(step, prefill_tokens=0, prefill_requests=0))
    return StepCost(total, draft, without_prefill - draft)


class RecordedStepTimes:
    """The step times a live run measured (`generate(...).stats["per_step"]`), handed out one
    step after another: a replay of that run then feeds latency-driven policies (GoodputSD,
    GoodputTetris) exactly what they saw live. Prefill, which the live loop times apart, is not
    included. Single use: one replay, of that run's very steps."""

    name = "recorded"

    def __init__(self, per_step: list[dict]):
        self.per_step, self.next = per_step, 0

    def price(self, step: StepShape) -> StepCost:
        if self.next >= len(self.per_step):
            raise RuntimeError("RecordedStepTimes: the replay has more steps than the recorded run")
        s = self.per_step[self.next]
        self.next += 1
        if len(s["requests"]) != step.requests:
            raise RuntimeError(
                f"RecordedStepTimes: step {self.next - 1} of the replay has {step.requests} "
                f"requests, the recorded run had {len(s['requests'])}"
            )
        verify = s["select_seconds"] + s["verify_seconds"]
        return StepCost(s["draft_seconds"] + verify, s["draft_seconds"], verify)

    def step_seconds(self, step: StepShape) -> float:
        raise TypeError("RecordedStepTimes prices whole steps in order: use price_step")

    draft_seconds = step_seconds


def measure_step_times(
    target,
    batch_sizes=(1, 4, 8, 16),
    query_lens=(1, 2, 4, 8),
    context_len=128,
    repeats=3,
    vocab_size: int | None = None,
    progress: bool = True,
) -> list[tuple[StepShape, float]]:
    """Time the target's forward pass of `q` new tokens per request on a KV cache of
    `context_len` tokens (the shape of a verification step), for every (batch, q) pair.
    Returns (StepShape, median seconds) samples for `LinearCostModel.fit`."""
    import statistics

    import torch
    from transformers import DynamicCache

    vocab = vocab_size or target.config.vocab_size
    device = next(target.parameters()).device
    gen = torch.Generator().manual_seed(0)
    samples = []
    pairs = [(b, q) for b in batch_sizes for q in query_lens]
    it = pairs
    if progress:
        from tqdm import tqdm

        it = tqdm(pairs, desc="step times", unit="shape")
    with torch.inference_mode():
        for B, q in it:
            prompt = torch.randint(0, vocab, (B, context_len), generator=gen).to(device)
            cache = DynamicCache()
            target(input_ids=prompt, past_key_values=cache, use_cache=True)
            new = torch.randint(0, vocab, (B, q), generator=gen).to(device)
            pos = torch.arange(context_len, context_len + q, device=device).expand(B, q)
            times = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                target(input_ids=new, past_key_values=cache, position_ids=pos, use_cache=True)
                times.append(time.perf_counter() - t0)
                cache.crop(context_len)
            shape = StepShape(
                requests=B,
                query_tokens=B * q,
                context_tokens=B * context_len,
                attention_work=B * q * context_len,
            )
            samples.append((shape, statistics.median(times[1:])))
    return samples


def samples_from_run_stats(stats: dict) -> list[tuple[StepShape, float]]:
    """(StepShape, seconds) of every step of a live run (`generate(...).stats`): drafting,
    selection and verification, as the loop measured them (prefill is timed apart)."""
    samples = []
    for s in stats["per_step"]:
        B = len(s["requests"])
        verified = sum(s["verified"])
        shape = StepShape(
            requests=B,
            query_tokens=B + verified,
            padded_query_tokens=B * s["block_width"],
            # the drafter ran (a step without drafting spends microseconds before selection)
            drafting_requests=B if s["draft_seconds"] > 1e-4 else 0,
            drafted_tokens=sum(s["drafted"]),
        )
        samples.append((shape, s["draft_seconds"] + s["select_seconds"] + s["verify_seconds"]))
    return samples
