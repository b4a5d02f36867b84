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

import numpy as np
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
# Where `design` writes each group of columns.
_CLASS_COLUMNS = FEATURES.index(f"class_{TOKEN_CLASSES[0]}")
_FIRST = FEATURES.index("first")
_FIRST_COLUMNS = [FEATURES.index(name) for name in FIRST_INTERACTIONS]
_MEMORY_COLUMNS = slice(FEATURES.index("accepted_before"), FEATURES.index("rejected_before") + 1)
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
        # The last prediction's inputs and design matrix: an update on the very same inputs
        # (the decoding loop's drafter updates with the proposal it predicted for) reuses it.
        # `_revision` counts changes of the per-request state, which the design reads.
        self._revision = 0
        self._last_design: tuple | None = None

    # -- per-request memory -------------------------------------------------------------
    def _slot_indices(self, requests: list[int]) -> np.ndarray:
        try:  # every request known (all but a joining request's first step): one C-level pass
            return np.fromiter(map(self._slots.__getitem__, requests), dtype=np.int64, count=len(requests))
        except KeyError:
            pass
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
        return np.array([self._slots[r] for r in requests], dtype=np.int64)

    def forget(self, request: int) -> None:
        """Free a finished request's state (its slot is reused)."""
        slot = self._slots.pop(request, None)
        if slot is not None:
            self._free.append(slot)
            self._revision += 1

    @property
    def tracked_requests(self) -> int:
        return len(self._slots)

    @property
    def request_ids(self) -> set[int]:
        """The requests whose state is held (seen and not forgotten)."""
        return set(self._slots)

    @staticmethod
    def _buckets(tokens: np.ndarray, roots: Tensor | None) -> np.ndarray:
        """[B, N] memory bucket of each (parent, token) transition of chains; -1 where unknown
        (padding, or a first token without its root)."""
        B = tokens.shape[0]
        root = roots.numpy().reshape(B, 1) if roots is not None else np.full((B, 1), -1, dtype=np.int64)
        parents = np.concatenate([root, tokens[:, :-1]], 1)
        known = (parents >= 0) & (tokens >= 0)
        return np.where(known, (parents * 1_000_003 + tokens) % MEMORY_BUCKETS, -1)

    # -- the model ------------------------------------------------------------------------
    # The design matrix is filled column by column in one float64 numpy array (one tensor at
    # the end): the same values as stacking torch columns, for a fraction of the small-op
    # overhead. Only exact operations (copies, comparisons, products with 0 / 1, + - * /) run
    # in numpy; the transcendental ones (log1p, logit) stay torch calls on the same inputs, so
    # every value is bit for bit what the column-stacking formula gave (tests/ compare them).
    def design(
        self, features: Tensor, requests: list[int], tokens: Tensor | None = None, roots: Tensor | None = None
    ) -> Tensor:
        """Model inputs [B, N, len(FEATURES)] (float64) for raw n-gram features [B, N, 5] (or 4) of
        the requests ``requests`` (one per row), their drafted tokens [B, N] (-1: padding) and
        roots [B] (the requests' last accepted tokens, the parents of the first drafts)."""
        raw = features.numpy().astype(np.float64)  # float32 -> float64: exact
        f = torch.from_numpy(raw)
        B, N = raw.shape[:2]
        slots = self._slot_indices(list(requests))  # may grow the state: read it after
        state = self._state.numpy()[slots]  # accepted, tested, copy run of first tokens
        x = np.zeros((B, N, len(FEATURES)))  # the token classes and the memory: 0 unless set
        x[..., 0] = 1.0
        x[..., 1] = torch.log1p(f[..., 0]).numpy()  # match length
        x[..., 2] = torch.log1p(f[..., 1]).numpy()  # occurrences
        x[..., 3] = raw[..., 2]  # agreement
        x[..., 4] = torch.log1p(f[..., 3]).numpy()  # depth
        x[..., 5] = raw[..., 2] >= 1.0  # unanimous
        x[..., 6] = self._request_log_odds(state)[:, None]
        x[..., 7] = torch.log1p(torch.from_numpy(state[:, 2])).numpy()[:, None]  # copy run
        # Without the transition agreement (4 raw features: a trace or a caller from before
        # it), the n-gram agreement stands in: the two are equal for a one-token match.
        x[..., 8] = raw[..., 4] if raw.shape[-1] > 4 else raw[..., 2]
        tokens_np = None if tokens is None else tokens.numpy()
        if self.token_classes is not None and tokens_np is not None:
            table = self.token_classes.numpy()
            classes = table[np.clip(tokens_np, 0, table.shape[0] - 1)]
            for c in range(len(TOKEN_CLASSES) - 1):
                x[..., _CLASS_COLUMNS + c] = (classes == c) & (tokens_np >= 0)
        first = raw[..., 3] == 1.0
        x[..., _FIRST] = first
        x[..., _FIRST + 1 : _MEMORY_COLUMNS.start] = x[..., _FIRST_COLUMNS] * first[..., None]
        if tokens_np is not None:
            buckets = self._buckets(tokens_np, roots)
            seen = self._memory.numpy()[slots[:, None], :, np.maximum(buckets, 0)]  # [B, N, 2]
            x[..., _MEMORY_COLUMNS] = seen & (buckets >= 0)[..., None]
        return torch.from_numpy(x)

    def _request_log_odds(self, state: np.ndarray) -> np.ndarray:
        """[B] log-odds of each request's smoothed first-token rate, less the prior's."""
        strength = 2.0  # pseudo-observations of the prior rate
        rate = (state[:, 0] + strength * self.rate_prior) / (state[:, 1] + strength)
        return torch.logit(torch.from_numpy(rate)).numpy() - math.log(
            self.rate_prior / (1.0 - self.rate_prior)
        )

    def predict_batch(
        self, features: Tensor, requests: list[int], tokens: Tensor | None = None, roots: Tensor | None = None
    ) -> Tensor:
        """[B, N] float64 acceptance estimates, clamped to [1 - max_probability, max_probability]."""
        x = self.design(features, requests, tokens, roots)
        self._last_design = (_copies(features, tokens, roots), list(requests), self._revision, x)
        return self.predict_design(x)

    def predict_design(self, design: Tensor) -> Tensor:
        """Estimates [...] for rows [..., len(FEATURES)] of `design` (see `predict_batch`)."""
        p = torch.sigmoid(design @ self.weights)
        values = p.numpy()  # the clamp in place in numpy (min / max: exact)
        np.minimum(
            np.maximum(values, 1.0 - self.max_probability, out=values), self.max_probability, out=values
        )
        return p

    def _design_since_prediction(
        self, features: Tensor, requests: list[int], tokens: Tensor | None, roots: Tensor | None
    ) -> Tensor:
        """`design` of these inputs: the last prediction's matrix when it scored equal inputs
        and no request state changed since (the same values, by construction), else computed
        afresh. Inputs compare by value against copies (inference tensors, which the decoding
        loop makes, track no in-place changes): a few microseconds against ~40 for a design."""
        last, self._last_design = self._last_design, None
        if last is not None:
            copies, last_requests, revision, x = last
            if revision == self._revision and last_requests == list(requests):
                if all(_equal(a, b) for a, b in zip(copies, (features, tokens, roots))):
                    return x
        return self.design(features, requests, tokens, roots)

    def update_batch(
        self,
        features: Tensor,
        requests: list[int],
        tested: Tensor,
        accepted: Tensor,
        tokens: Tensor | None = None,
        roots: Tensor | None = None,
        design: Tensor | None = None,
    ) -> None:
        """Learn from one step: features [B, N, 5] (or 4), tested / accepted [B, N] bool (tested: the
        candidate's own acceptance was decided). One Newton step of the shared weights'
        posterior; every request's first-token rate, copy run and transition memory advance.
        design: ``design(features, requests, tokens, roots)`` (its tested rows at least), for a
        caller that kept the rows of a prediction after which no update ran (the same values);
        default: the last prediction's when it scored these inputs, else computed."""
        if design is None:
            design = self._design_since_prediction(features, requests, tokens, roots)
        # Boolean masks in numpy (the same rows, in the same order, as torch's), then tensors.
        # The Newton step's elementwise parts are numpy's too, in place on views of the tensors
        # (exact: the same bits); the sigmoid, the matrix products and the solve stay torch's.
        tested, accepted = tested.numpy(), accepted.numpy()
        tested_rows = design.numpy()[tested]  # the design rows of the tested drafts
        if self.precision is not None and len(tested_rows):
            x = torch.from_numpy(tested_rows)
            precision, weights = self.precision.numpy(), self.weights.numpy()  # views: updated in place
            p = torch.sigmoid(x @ self.weights).numpy()
            precision += (torch.from_numpy(tested_rows * (p * (1.0 - p))[:, None]).T @ x).numpy()
            residual = torch.from_numpy(accepted[tested].astype(np.float64) - p)
            weights += torch.linalg.solve(self.precision, x.T @ residual).numpy()
        self.updates += len(tested_rows)
        self._revision += 1
        # The per-request state in numpy (views of the tensors): exact arithmetic, fewer ops.
        slots = self._slot_indices(list(requests))
        # Counts are int64 sums of the masks; adding them to float64 converts them exactly.
        first = tested & (features.numpy()[..., 3] == 1)
        first_trials = first.sum(1)
        state = self._state.numpy()
        rows = state[slots]
        # The decay in float32, as the torch.where of two Python floats (the default dtype)
        # that computed it first: a float64 one would change every request's rate in the
        # last bits (outputs stay bit for bit those of earlier versions).
        decay = np.where(first_trials > 0, np.float32(self.rate_decay), np.float32(1.0))
        rows[:, 0] = decay * rows[:, 0] + (first & accepted).sum(1)
        rows[:, 1] = decay * rows[:, 1] + first_trials
        rejected = (tested & ~accepted).any(1)  # a rejection resets the copy run
        rows[:, 2] = np.where(rejected, 0.0, rows[:, 2] + (tested & accepted).sum(1))
        state[slots] = rows
        if tokens is not None:
            buckets = self._buckets(tokens.numpy(), roots)
            seen_b, seen_n = np.nonzero(tested & (buckets >= 0))  # row-major, as a mask selects
            outcome = (~accepted[seen_b, seen_n]).astype(np.int64)  # 0: accepted, 1: rejected
            self._memory.numpy()[slots[seen_b], outcome, buckets[seen_b, seen_n]] = True


def _copies(*tensors: Tensor | None) -> tuple:
    return tuple(None if t is None else t.clone() for t in tensors)


def _equal(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


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
