"""Batched acceptance estimates for n-gram drafts: a logistic model over richer features.

``AcceptanceCalibration`` (calibration.py) scores a drafted token from its match statistics
alone and learns one SGD step per token in a Python loop. ``NgramLogistic`` adds what a
request and a token tell beyond the match, and scores and learns a whole batch per tensor op:

    p(accepted | parent accepted) = sigmoid(w . x)

with x (``FEATURES``):

- the match statistics (``calibration.NGRAM_FEATURES``): log1p(match length),
  log1p(earlier occurrences), agreement of those occurrences, log1p(depth), and whether the
  occurrences were unanimous (agreement == 1);
- the request's own history: the log-odds of its running acceptance rate (accepted / tested
  drafted tokens, exponentially decayed and smoothed towards the prior rate, so it is 0 at a
  request's first step), and log1p of its current copy run (drafted tokens accepted in a row
  since its last rejection);
- the token's class (whitespace / punctuation / word piece / other), from a vocabulary table
  ``token_classes`` built once from the tokenizer (``token_class_table``); all zeros without one.

The prior weights ``PRIOR_WEIGHTS`` come from an offline fit on the *tuning* traces only
(``fit_logistic`` on the bundled prompt set, see bench/estimates.py), so the model is useful from
the first step; online, each step takes one gradient step on the step's tested tokens, pulled
back towards the prior (a Gaussian prior, i.e. L2 around ``prior``).

Per-request state (three numbers) lives in tensors indexed by a slot; ``forget`` frees the slot
when the request leaves, so memory is bounded by the number of requests in flight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "NgramLogistic",
    "ConstantRate",
    "FEATURES",
    "PRIOR_WEIGHTS",
    "TOKEN_CLASSES",
    "token_class_table",
    "fit_logistic",
]

TOKEN_CLASSES = ("whitespace", "punctuation", "word", "other")
FEATURES = (
    "bias",
    "log_match_length",
    "log_occurrences",
    "agreement",
    "log_depth",
    "unanimous",
    "request_log_odds",
    "log_copy_run",
) + tuple(f"class_{c}" for c in TOKEN_CLASSES[:-1])

# Offline fit on the tuning traces only (`python bench/estimates.py --print-prior`: the bundled
# prompt set, Gemma 3 270M bf16), without token classes (they need the tokenizer's table; fit
# with one to use them). Deeper tokens score higher: given that their parent was accepted,
# they sit inside a copy run that has held so far.
PRIOR_WEIGHTS = (-5.123, 0.756, 1.158, 2.108, 1.091, 1.392, 0.054, 0.404, 0.0, 0.0, 0.0)


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

    ``prior``: initial weights over ``FEATURES`` (and the centre of the L2 pull).
    ``learning_rate``: step size per tested token of the online gradient step (0: no online
    learning; on the tuning traces 0 to 0.005 score within 0.1% of each other, and a small rate
    lets the weights follow another target model or workload). ``prior_strength``: how hard each
    step pulls the weights back to the prior.
    ``rate_prior``: the acceptance rate a new request starts from; ``rate_decay``: per-step
    decay of a request's counts. ``token_classes``: [V] table from ``token_class_table``.
    """

    def __init__(
        self,
        prior: tuple[float, ...] = PRIOR_WEIGHTS,
        learning_rate: float = 0.0005,
        prior_strength: float = 0.01,
        rate_prior: float = 0.45,
        rate_decay: float = 0.9,
        token_classes: Tensor | None = None,
        max_probability: float = 0.98,
    ):
        if len(prior) != len(FEATURES):
            raise ValueError(
                f"NgramLogistic: prior needs {len(FEATURES)} weights ({FEATURES}), got {len(prior)}"
            )
        if not 0.0 < rate_prior < 1.0 or not 0.0 <= rate_decay <= 1.0 or learning_rate < 0:
            raise ValueError(
                "NgramLogistic: need 0 < rate_prior < 1, 0 <= rate_decay <= 1, learning_rate >= 0"
            )
        self.prior = torch.tensor(prior, dtype=torch.float64)
        self.weights = self.prior.clone()
        self.learning_rate, self.prior_strength = learning_rate, prior_strength
        self.rate_prior, self.rate_decay = rate_prior, rate_decay
        self.token_classes = token_classes
        self.max_probability = max_probability
        self._slots: dict[int, int] = {}
        self._free: list[int] = []
        # Per slot: decayed accepted and tested counts, current copy run.
        self._state = torch.zeros(0, 3, dtype=torch.float64)
        self.updates = 0

    # -- per-request memory -------------------------------------------------------------
    def _slot_indices(self, requests: list[int]) -> Tensor:
        for r in requests:
            if r not in self._slots:
                if not self._free:
                    grown = max(8, 2 * self._state.shape[0])
                    self._free = list(range(grown - 1, self._state.shape[0] - 1, -1))
                    self._state = torch.cat(
                        [self._state, self._state.new_zeros(grown - self._state.shape[0], 3)]
                    )
                slot = self._free.pop()
                self._state[slot] = 0.0
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

    # -- the model ------------------------------------------------------------------------
    def design(self, features: Tensor, requests: list[int], tokens: Tensor | None = None) -> Tensor:
        """Model inputs [B, N, len(FEATURES)] (float64) for raw n-gram features [B, N, 4] of
        the requests ``requests`` (one per row) and their drafted tokens [B, N] (-1: padding)."""
        f = features.to(torch.float64)
        B, N = f.shape[:2]
        match_length, occurrences, agreement, depth = f.unbind(-1)
        slots = self._slot_indices(list(requests))  # may grow self._state: index after
        state = self._state[slots]  # [B, 3]
        accepted, tested, run = state.unbind(-1)
        strength = 2.0  # pseudo-observations of the prior rate
        rate = (accepted + strength * self.rate_prior) / (tested + strength)
        log_odds = torch.logit(rate) - math.log(self.rate_prior / (1.0 - self.rate_prior))
        classes = torch.zeros(B, N, len(TOKEN_CLASSES) - 1, dtype=torch.float64)
        if self.token_classes is not None and tokens is not None:
            ids = tokens.clamp(0, self.token_classes.shape[0] - 1)
            one_hot = torch.nn.functional.one_hot(self.token_classes[ids].long(), len(TOKEN_CLASSES))
            classes = (one_hot[..., :-1] * (tokens >= 0)[..., None]).to(torch.float64)
        columns = [
            torch.ones_like(match_length),
            torch.log1p(match_length),
            torch.log1p(occurrences),
            agreement,
            torch.log1p(depth),
            (agreement >= 1.0).to(torch.float64),
            log_odds[:, None].expand(B, N),
            torch.log1p(run)[:, None].expand(B, N),
        ]
        return torch.cat([torch.stack(columns, -1), classes], -1)

    def predict_batch(self, features: Tensor, requests: list[int], tokens: Tensor | None = None) -> Tensor:
        """[B, N] float64 acceptance estimates, clamped to [1 - max_probability, max_probability]."""
        p = torch.sigmoid(self.design(features, requests, tokens) @ self.weights)
        return p.clamp(1.0 - self.max_probability, self.max_probability)

    def update_batch(
        self,
        features: Tensor,
        requests: list[int],
        tested: Tensor,
        accepted: Tensor,
        tokens: Tensor | None = None,
    ) -> None:
        """Learn from one step: features [B, N, 4], tested / accepted [B, N] bool (tested: the
        candidate's own acceptance was decided). One gradient step for the shared weights;
        every request's rate and copy run advance."""
        x = self.design(features, requests, tokens)[tested]
        y = accepted[tested].to(torch.float64)
        if self.learning_rate > 0 and len(y):
            error = y - torch.sigmoid(x @ self.weights)
            self.weights += self.learning_rate * (
                x.T @ error
            ) - self.prior_strength * self.learning_rate * len(y) * (self.weights - self.prior)
        self.updates += len(y)
        slots = self._slot_indices(list(requests))
        hits = (tested & accepted).sum(1).to(torch.float64)
        trials = tested.sum(1).to(torch.float64)
        state = self._state[slots]
        decay = torch.where(trials > 0, self.rate_decay, 1.0)
        state[:, 0] = decay * state[:, 0] + hits
        state[:, 1] = decay * state[:, 1] + trials
        rejected = (tested & ~accepted).any(1)
        state[:, 2] = torch.where(rejected, 0.0, state[:, 2] + hits)
        self._state[slots] = state

    # -- the interfaces of AcceptanceCalibration (per request, and vllm/proposer.py's lists) --
    def predict_many(self, features: Tensor, requests: list) -> Tensor:
        """``predict_batch`` without tokens: features [R, N, 4], one request per row -> [R, N]."""
        return self.predict_batch(features, list(requests))

    def update_many(self, features: list[tuple[float, ...]], requests: list, accepted: list[bool]) -> None:
        """Learn from flat lists (one entry per tested token, a request's tokens in path order),
        as a serving engine collects them: grouped into one row per request, then
        ``update_batch``."""
        rows: dict = {}
        for f, r, y in zip(features, requests, accepted):
            rows.setdefault(r, []).append((f, y))
        if not rows:
            return
        N = max(len(v) for v in rows.values())
        x = torch.zeros(len(rows), N, len(features[0]))
        tested = torch.zeros(len(rows), N, dtype=torch.bool)
        hits = torch.zeros(len(rows), N, dtype=torch.bool)
        for b, entries in enumerate(rows.values()):
            x[b, : len(entries)] = torch.tensor([f for f, _ in entries])
            tested[b, : len(entries)] = True
            hits[b, : len(entries)] = torch.tensor([bool(y) for _, y in entries])
        self.update_batch(x, list(rows), tested, hits)

    # -- the per-request interface of AcceptanceCalibration ----------------------------------
    def predict(self, features: Tensor, request: int) -> Tensor:
        return self.predict_batch(features.reshape(1, -1, features.shape[-1]), [request]).reshape(
            features.shape[:-1]
        )

    def update(self, features: Tensor, request: int, accepted: Tensor) -> None:
        f = features.reshape(1, -1, features.shape[-1])
        a = accepted.reshape(1, -1)
        self.update_batch(f, [request], torch.ones_like(a, dtype=torch.bool), a)


class ConstantRate:
    """The baseline estimator: every drafted token is accepted with the same probability
    ``rate`` (e.g. the tuning part's acceptance rate); it learns nothing."""

    def __init__(self, rate: float):
        if not 0.0 < rate < 1.0:
            raise ValueError("ConstantRate: rate must be in (0, 1)")
        self.rate = rate

    def predict_batch(self, features: Tensor, requests: list[int], tokens: Tensor | None = None) -> Tensor:
        return torch.full(features.shape[:-1], self.rate, dtype=torch.float64)

    def update_batch(self, features, requests, tested, accepted, tokens=None) -> None:
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
