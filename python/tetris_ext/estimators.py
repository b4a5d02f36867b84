"""Batched acceptance estimates for n-gram drafts: a Bayesian logistic model over richer features.

``NgramLogistic()`` is ``drafters.NgramDrafter``'s default calibration
(``NgramDrafter.with_tokenizer`` adds a tokenizer's token classes).

``AcceptanceCalibration`` (calibration.py) scores a drafted token from its match statistics
alone and learns one SGD step per token in a Python loop. ``NgramLogistic`` adds what a
request and a token tell beyond the match, and scores and learns a whole batch per tensor op:

    p(accepted | parent accepted) = sigmoid(w . x)

with x (``FEATURES``):

- the match statistics (``calibration.NGRAM_FEATURES``): log1p(match length),
  log1p(earlier occurrences), agreement of those occurrences, log1p(depth), and whether the
  occurrences were unanimous (agreement == 1); and the transition agreement (the fifth raw
  feature, ``drafters.transition_agreements``: how often the request's context follows the
  token's parent with this token; without it, the n-gram agreement stands in);
- the request's own history: the log-odds of its running acceptance rate of *first* draft
  tokens (accepted / tested, exponentially decayed and smoothed towards the prior rate, so it is
  0 at a request's first step; the first token is where requests differ most, and a rate over
  all depths got a weight near 0 in the fit), and log1p of its current copy run (drafted tokens
  accepted in a row since its last rejection);
- the token's class (whitespace / punctuation / word piece / other), from a vocabulary table
  ``token_classes`` built once from the tokenizer (``token_class_table``); all zeros without one;
- ``first``: whether the token is the first of its draft (it follows the request's root, the
  target's own last token, rather than a drafted parent), and its products with the match
  statistics, the copy run and the transition agreement: a first token behaves differently (held-out Gemma traces:
  acceptance 0.71 at depth 1 against 0.87-0.92 deeper, ``by_depth`` in bench/results/estimates.json);
- the request's transition memory: whether the same transition (parent token -> drafted token)
  was verified in an earlier step of this request and accepted (``accepted_before``) or
  rejected (``rejected_before``). A greedy target that took a transition once tends to take it
  again (weights +1.3 / -1.0 in the shipped fit, data/ngram_prior.json). The parent of the
  first token is the request's root: callers pass ``roots``; without them (or without
  ``tokens``) the memory reads "never seen", which is what the model assumes of a new request.

Weights are Bayesian: the prior is a Gaussian around ``PRIOR.weights`` (``PRIOR_WITH_CLASSES``
with a token-class table), the offline fit on the *tuning* traces only (Gemma 3 270M bf16: the
bundled prompt set and two tuning sources of the held-out kinds, bench/prompts/tuning_chat.jsonl
and tuning_code.jsonl; see bench/estimates.py ``--write-prior``), with precision
``prior_samples`` x the fit's mean per-token Hessian: the prior counts as that many tuning
tokens. Each step takes one Newton step of the posterior
(the step's tested tokens add their Hessian to the precision), i.e. an online Laplace
approximation: the weights follow a new target or workload quickly at first and settle as
evidence accumulates. ``prior_samples=math.inf`` freezes the weights.

Per-request state (three numbers and the transition memory, two hashed bit maps of
``MEMORY_BUCKETS`` entries: 32 KiB) lives in tensors indexed by a slot; ``forget`` frees the
slot when the request leaves, so memory is bounded by the number of requests in flight.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "NgramLogistic",
    "NgramPrior",
    "ConstantRate",
    "FEATURES",
    "PRIOR",
    "PRIOR_WITH_CLASSES",
    "PRIOR_WEIGHTS",
    "TOKEN_CLASSES",
    "token_class_table",
    "fit_logistic",
    "fit_prior",
]

TOKEN_CLASSES = ("whitespace", "punctuation", "word", "other")
# The columns that `first` multiplies: their effect on a draft's first token differs.
FIRST_INTERACTIONS = (
    "log_match_length",
    "log_occurrences",
    "agreement",
    "unanimous",
    "log_copy_run",
    "transition_agreement",
)
FEATURES = (
    (
        "bias",
        "log_match_length",
        "log_occurrences",
        "agreement",
        "log_depth",
        "unanimous",
        "request_first_log_odds",
        "log_copy_run",
        "transition_agreement",
    )
    + tuple(f"class_{c}" for c in TOKEN_CLASSES[:-1])
    + ("first",)
    + tuple(f"first_x_{name}" for name in FIRST_INTERACTIONS)
    + ("accepted_before", "rejected_before")
)
# Transition memory: a transition (parent, token) sets one of this many buckets (a prime) per
# request and outcome. A request with n distinct transitions mistakes an unseen one for a seen
# one with probability about n / MEMORY_BUCKETS (1% at 160).
MEMORY_BUCKETS = 16381
PRIOR_PATH = Path(__file__).resolve().parent / "data" / "ngram_prior.json"
# The same fit with the token classes (for callers with a tokenizer, see ``token_class_table``).
PRIOR_WITH_CLASSES_PATH = PRIOR_PATH.with_name("ngram_prior_classes.json")


@dataclass(frozen=True)
class NgramPrior:
    """The offline fit: weights [F] over ``FEATURES``, the mean per-token Hessian [F, F] of the
    log-loss at those weights, and how many tuning tokens the prior counts as (chosen by
    leave-one-category-out replay on the tuning prompts, see bench/estimates.py)."""

    weights: tuple[float, ...]
    hessian: tuple[tuple[float, ...], ...]
    samples: float

    @classmethod
    def load(cls, path: str | Path = PRIOR_PATH) -> NgramPrior:
        data = json.loads(Path(path).read_text())
        if tuple(data["features"]) != FEATURES:
            raise ValueError(f"{path}: the prior's features {data['features']} are not {FEATURES}")
        return cls(tuple(data["weights"]), tuple(map(tuple, data["hessian"])), float(data["samples"]))

    def save(self, path: str | Path, **provenance) -> None:
        data = {
            "features": list(FEATURES),
            "weights": list(self.weights),
            "hessian": list(map(list, self.hessian)),
        }
        Path(path).write_text(json.dumps(data | {"samples": self.samples} | provenance, indent=1) + "\n")


PRIOR = NgramPrior.load()
PRIOR_WITH_CLASSES = NgramPrior.load(PRIOR_WITH_CLASSES_PATH)
PRIOR_WEIGHTS = PRIOR.weights


def token_class_table(tokenizer, vocab_size: int | None = None) -> Tensor:
    """[V] int8 class of every token id (index into TOKEN_CLASSES), from its decoded text."""
    V = vocab_size or len(tokenizer)
    table = torch.full((V,), len(TOKEN_CLASSES) - 1, dtype=torch.int8)
    for i, text in enumerate(tokenizer.convert_ids_to_tokens(list(range(min(V, len(tokenizer)))))):
        text = (text or "").replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\n")
        if text and text.isspace():
            table[i] = 0
        elif text and all(not c.isalnum() and not c.isspace() for c in text.strip()) and text.strip():
            table[i] = 1
        elif text.strip() and all(c.isalnum() or c == "_" for c in text.strip()):
            table[i] = 2
    return table


class NgramLogistic:
    """p(accepted | parent accepted) for n-gram drafts, batched (see the module docstring).

    ``prior``: initial weights over ``FEATURES`` (the mean of the Gaussian prior); a tuple of
    weights or an ``NgramPrior``; default the shipped fit, ``PRIOR_WITH_CLASSES`` when
    ``token_classes`` is given (held-out Gemma Brier 2 points lower), else ``PRIOR``.
    ``hessian``: the prior's per-token precision [F, F] (default: the ``NgramPrior``'s, else
    0.25 x identity, the curvature of a logistic at p = 1/2).
    ``prior_samples``: how many tokens' worth of evidence the prior is (default: the
    ``NgramPrior``'s, else 300); ``math.inf`` freezes the weights (no online learning).
    ``rate_prior``: the first-token acceptance rate a new request starts from (the tuning
    traces': 0.64); ``rate_decay``: per-step decay of a request's counts.
    ``token_classes``: [V] table from ``token_class_table``.
    """

    def __init__(
        self,
        prior: NgramPrior | tuple[float, ...] | None = None,
        prior_samples: float | None = None,
        hessian: Tensor | None = None,
        rate_prior: float = 0.65,
        rate_decay: float = 0.9,
        token_classes: Tensor | None = None,
        max_probability: float = 0.98,
    ):
        if prior is None:  # the shipped fit that matches the inputs
            prior = PRIOR if token_classes is None else PRIOR_WITH_CLASSES
        weights = prior.weights if isinstance(prior, NgramPrior) else tuple(prior)
        if len(weights) != len(FEATURES):
            raise ValueError(
                f"NgramLogistic: prior needs {len(FEATURES)} weights ({FEATURES}), got {len(weights)}"
            )
        if prior_samples is None:
            prior_samples = prior.samples if isinstance(prior, NgramPrior) else 300.0
        if not 0.0 < rate_prior < 1.0 or not 0.0 <= rate_decay <= 1.0 or not prior_samples > 0:
            raise ValueError(
                "NgramLogistic: need 0 < rate_prior < 1, 0 <= rate_decay <= 1, prior_samples > 0"
            )
        if hessian is None:
            hessian = (
                torch.tensor(prior.hessian, dtype=torch.float64)
                if isinstance(prior, NgramPrior)
                else 0.25 * torch.eye(len(FEATURES), dtype=torch.float64)
            )
        self.prior = torch.tensor(weights, dtype=torch.float64)
        self.weights = self.prior.clone()
        self.prior_samples = prior_samples
        # Posterior precision. Columns the prior never saw (token classes, when it was fitted
        # without a table) get one token's worth of unit curvature, so that a few tokens cannot
        # throw their weights far; the others a negligible ridge that keeps them invertible.
        self.precision = None
        if math.isfinite(prior_samples):
            hessian = hessian.to(torch.float64)
            ridge = torch.where(hessian.diagonal() > 0, 1e-6, 1.0)
            self.precision = prior_samples * hessian + torch.diag(ridge)
        self.rate_prior, self.rate_decay = rate_prior, rate_decay
        self.token_classes = token_classes
        self.max_probability = max_probability
        self._slots: dict[int, int] = {}
        self._free: list[int] = []
        # Per slot: decayed accepted and tested counts of first tokens, current copy run; and
        # the transition memory (accepted, rejected) x buckets.
        self._state = torch.zeros(0, 3, dtype=torch.float64)
        self._memory = torch.zeros(0, 2, MEMORY_BUCKETS, dtype=torch.bool)
        self.updates = 0

    # -- per-request memory -------------------------------------------------------------
    def _slot_indices(self, requests: list[int]) -> Tensor:
        for r in requests:
            if r not in self._slots:
                if not self._free:
                    size = self._state.shape[0]
                    grown = max(8, 2 * size)
                    self._free = list(range(grown - 1, size - 1, -1))
                    self._state = torch.cat([self._state, self._state.new_zeros(grown - size, 3)])
                    self._memory = torch.cat(
                        [self._memory, self._memory.new_zeros(grown - size, 2, MEMORY_BUCKETS)]
                    )
                slot = self._free.pop()
                self._state[slot] = 0.0
                self._memory[slot] = False
                self._slots[r] = slot
        return torch.tensor([self._slots[r] for r in requests], dtype=torch.long)

    def forget(self, request: int) -> None:
        """Free a finished request's state (its slot is reused)."""
        slot = self._slots.pop(request, None)
        if slot is not None:
            self._free.append(slot)

    @property
    def tracked_requests(self) -> int:
        return len(self._slots)

    @property
    def request_ids(self) -> set[int]:
        """The requests whose state is held (seen and not forgotten)."""
        return set(self._slots)

    @staticmethod
    def _buckets(tokens: Tensor, roots: Tensor | None) -> Tensor:
        """[B, N] memory bucket of each (parent, token) transition of chains; -1 where unknown
        (padding, or a first token without its root)."""
        B, N = tokens.shape
        root = roots.reshape(B, 1) if roots is not None else tokens.new_full((B, 1), -1)
        parents = torch.cat([root, tokens[:, :-1]], 1)
        known = (parents >= 0) & (tokens >= 0)
        return torch.where(known, (parents * 1_000_003 + tokens) % MEMORY_BUCKETS, -1)

    # -- the model ------------------------------------------------------------------------
    def design(
        self, features: Tensor, requests: list[int], tokens: Tensor | None = None, roots: Tensor | None = None
    ) -> Tensor:
        """Model inputs [B, N, len(FEATURES)] (float64) for raw n-gram features [B, N, 5] (or 4) of
        the requests ``requests`` (one per row), their drafted tokens [B, N] (-1: padding) and
        roots [B] (the requests' last accepted tokens, the parents of the first drafts)."""
        f = features.to(torch.float64)
        B, N = f.shape[:2]
        match_length, occurrences, agreement, depth = f[..., :4].unbind(-1)
        # Without the transition agreement (4 raw features: a trace or a caller from before
        # it), the n-gram agreement stands in: the two are equal for a one-token match.
        transition = f[..., 4] if f.shape[-1] > 4 else agreement
        slots = self._slot_indices(list(requests))  # may grow the state: index after
        accepted, tested, run = self._state[slots].unbind(-1)
        strength = 2.0  # pseudo-observations of the prior rate
        rate = (accepted + strength * self.rate_prior) / (tested + strength)
        log_odds = torch.logit(rate) - math.log(self.rate_prior / (1.0 - self.rate_prior))
        classes = torch.zeros(B, N, len(TOKEN_CLASSES) - 1, dtype=torch.float64)
        if self.token_classes is not None and tokens is not None:
            ids = tokens.clamp(0, self.token_classes.shape[0] - 1)
            one_hot = torch.nn.functional.one_hot(self.token_classes[ids].long(), len(TOKEN_CLASSES))
            classes = (one_hot[..., :-1] * (tokens >= 0)[..., None]).to(torch.float64)
        base = {
            "log_match_length": torch.log1p(match_length),
            "log_occurrences": torch.log1p(occurrences),
            "agreement": agreement,
            "unanimous": (agreement >= 1.0).to(torch.float64),
            "log_copy_run": torch.log1p(run)[:, None].expand(B, N),
            "transition_agreement": transition,
        }
        first = (depth == 1).to(torch.float64)
        memory = torch.zeros(B, N, 2, dtype=torch.float64)
        if tokens is not None:
            buckets = self._buckets(tokens, roots)
            seen = self._memory[slots[:, None], :, buckets.clamp(min=0)]  # [B, N, 2]
            memory = (seen & (buckets >= 0)[..., None]).to(torch.float64)
        columns = [
            torch.ones_like(match_length),
            base["log_match_length"],
            base["log_occurrences"],
            agreement,
            torch.log1p(depth),
            base["unanimous"],
            log_odds[:, None].expand(B, N),
            base["log_copy_run"],
            transition,
        ]
        interactions = [first] + [first * base[name] for name in FIRST_INTERACTIONS]
        return torch.cat([torch.stack(columns, -1), classes, torch.stack(interactions, -1), memory], -1)

    def predict_batch(
        self, features: Tensor, requests: list[int], tokens: Tensor | None = None, roots: Tensor | None = None
    ) -> Tensor:
        """[B, N] float64 acceptance estimates, clamped to [1 - max_probability, max_probability]."""
        p = torch.sigmoid(self.design(features, requests, tokens, roots) @ self.weights)
        return p.clamp(1.0 - self.max_probability, self.max_probability)

    def update_batch(
        self,
        features: Tensor,
        requests: list[int],
        tested: Tensor,
        accepted: Tensor,
        tokens: Tensor | None = None,
        roots: Tensor | None = None,
    ) -> None:
        """Learn from one step: features [B, N, 5] (or 4), tested / accepted [B, N] bool (tested: the
        candidate's own acceptance was decided). One Newton step of the shared weights'
        posterior; every request's first-token rate, copy run and transition memory advance."""
        x = self.design(features, requests, tokens, roots)[tested]
        y = accepted[tested].to(torch.float64)
        if self.precision is not None and len(y):
            p = torch.sigmoid(x @ self.weights)
            self.precision += (x * (p * (1.0 - p))[:, None]).T @ x
            self.weights += torch.linalg.solve(self.precision, x.T @ (y - p))
        self.updates += len(y)
        slots = self._slot_indices(list(requests))
        hits = (tested & accepted).sum(1).to(torch.float64)
        first = tested & (features[..., 3] == 1)
        first_trials = first.sum(1).to(torch.float64)
        state = self._state[slots]
        decay = torch.where(first_trials > 0, self.rate_decay, 1.0)
        state[:, 0] = decay * state[:, 0] + (first & accepted).sum(1).to(torch.float64)
        state[:, 1] = decay * state[:, 1] + first_trials
        rejected = (tested & ~accepted).any(1)
        state[:, 2] = torch.where(rejected, 0.0, state[:, 2] + hits)
        self._state[slots] = state
        if tokens is not None:
            buckets = self._buckets(tokens, roots)
            seen = tested & (buckets >= 0)
            rows = slots[:, None].expand_as(buckets)[seen]
            self._memory[rows, (~accepted[seen]).long(), buckets[seen]] = True


class ConstantRate:
    """The baseline estimator: every drafted token is accepted with the same probability
    ``rate`` (e.g. the tuning part's acceptance rate); it learns nothing."""

    def __init__(self, rate: float):
        if not 0.0 < rate < 1.0:
            raise ValueError("ConstantRate: rate must be in (0, 1)")
        self.rate = rate

    def predict_batch(self, features: Tensor, requests: list[int], tokens=None, roots=None) -> Tensor:
        return torch.full(features.shape[:-1], self.rate, dtype=torch.float64)

    def update_batch(self, features, requests, tested, accepted, tokens=None, roots=None) -> None:
        pass

    def forget(self, request: int) -> None:
        pass


def fit_logistic(x: Tensor, y: Tensor, l2: float = 1e-3, iterations: int = 100) -> Tensor:
    """Maximum-likelihood logistic regression weights [F] (L2 ``l2`` per sample on all but the
    bias) for inputs x [M, F] and 0/1 outcomes y [M], by L-BFGS (an offline prior)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=iterations, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * (w[1:] ** 2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return w.detach()


def fit_prior(x: Tensor, y: Tensor, samples: float, l2: float = 1e-3) -> NgramPrior:
    """``fit_logistic`` and the mean per-token Hessian of the log-loss at the fit (what a
    token of this data tells about the weights): the prior of ``NgramLogistic``."""
    w = fit_logistic(x, y, l2)
    x = x.to(torch.float64)
    p = torch.sigmoid(x @ w)
    hessian = (x * (p * (1.0 - p))[:, None]).T @ x / max(1, len(y))
    return NgramPrior(tuple(w.tolist()), tuple(map(tuple, hessian.tolist())), float(samples))
