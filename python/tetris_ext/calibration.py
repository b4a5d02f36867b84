"""Online calibration of model-free draft confidences (the n-gram drafter's acceptance estimates).

A drafter without logits still has evidence about each drafted token: how long the matched
suffix was, how often it occurred before, and whether those earlier occurrences agreed on the
token. ``AcceptanceCalibration`` turns such raw statistics into the probability that the target
accepts the token given that its parent was accepted, with a logistic model that learns online
from verification outcomes:

    p = sigmoid(w . phi(features) + bias[request])

``w`` is shared by all requests (what match statistics mean for this target and this kind of
text); ``bias[request]`` is each request's own offset, so that a request whose drafts keep
being accepted is told apart from one whose drafts keep failing. Both take one stochastic
gradient step on the log-loss per observed token. Everything is deterministic and independent
of models: a trace replay that stores the raw features and the outcomes re-runs the same code
and gets the same probabilities.

It is no longer ``NgramDrafter``'s default: ``estimators.NgramLogistic`` (batched, richer
features) estimates better (bench/README.md, "The default n-gram estimator"); pass
``NgramDrafter(..., calibration=AcceptanceCalibration())`` to use this one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["AcceptanceCalibration", "NGRAM_FEATURES", "brier_score", "reliability"]

# Raw statistics of one drafted token, in this order (see drafters.ngram_match).
NGRAM_FEATURES = ("match_length", "occurrences", "agreement", "depth", "transition_agreement")


def _design(features: Tensor) -> Tensor:
    """Raw features [..., 4 or 5] -> model inputs [..., 5] (float64): bias, then scaled
    statistics of the first four ``NGRAM_FEATURES`` (this model ignores the fifth)."""
    f = features.to(torch.float64)
    match_length, occurrences, agreement, depth = f[..., :4].unbind(-1)
    return torch.stack(
        [
            torch.ones_like(match_length),
            torch.log1p(match_length),  # longer matches: more context agrees
            torch.log1p(occurrences),  # patterns seen often repeat more reliably
            agreement,  # did earlier occurrences continue with this token?
            torch.log1p(depth),  # deeper tokens rest on a longer extrapolation
        ],
        dim=-1,
    )


class AcceptanceCalibration:
    """p(accepted | parent accepted) from raw draft statistics, learned online (see module doc).

    ``prior_weights``: initial w over (bias, log1p(match length), log1p(occurrences),
    agreement, log1p(depth)); the defaults say "long, unanimous matches are usually right".
    ``learning_rate`` / ``request_learning_rate``: SGD step sizes of w and of the per-request
    offsets. ``request_shrink``: each update pulls the offset toward 0 by this fraction, so a
    request's history fades instead of locking it in.
    """

    def __init__(
        self,
        prior_weights: tuple[float, ...] = (-1.5, 0.8, 0.2, 1.5, -0.3),
        learning_rate: float = 0.05,
        request_learning_rate: float = 0.2,
        request_shrink: float = 0.02,
        max_probability: float = 0.98,
    ):
        self.weights = torch.tensor(prior_weights, dtype=torch.float64)
        self.learning_rate = learning_rate
        self.request_learning_rate = request_learning_rate
        self.request_shrink = request_shrink
        self.max_probability = max_probability
        self.request_bias: dict[int, float] = {}
        self.updates = 0

    def _logit(self, features: Tensor, request: int) -> Tensor:
        return _design(features) @ self.weights + self.request_bias.get(request, 0.0)

    def predict(self, features: Tensor, request: int) -> Tensor:
        """Acceptance probabilities [...] (float64) for raw features [..., 4 or 5] of one request.

        Clamped to [1 - max_probability, max_probability]: no draft statistic makes a token certain.
        """
        p = torch.sigmoid(self._logit(features, request))
        return p.clamp(1.0 - self.max_probability, self.max_probability)

    def update(self, features: Tensor, request: int, accepted: Tensor) -> None:
        """Learn from tokens of one request that were verified with their parent accepted.

        features [K, 4 or 5]; accepted [K] bool. One SGD step per token, in order.
        """
        x = _design(features.reshape(-1, features.shape[-1]))
        y = accepted.reshape(-1).to(torch.float64)
        for xi, yi in zip(x, y):
            bias = self.request_bias.get(request, 0.0)
            p = torch.sigmoid(xi @ self.weights + bias)
            error = float(yi - p)
            self.weights += self.learning_rate * error * xi
            self.request_bias[request] = (
                1.0 - self.request_shrink
            ) * bias + self.request_learning_rate * error
            self.updates += 1

    def predict_many(self, features: Tensor, requests: list) -> Tensor:
        """`predict` for many requests at once: features [R, N, 4 or 5], one request per row -> [R, N]."""
        bias = torch.tensor([self.request_bias.get(r, 0.0) for r in requests], dtype=torch.float64)
        p = torch.sigmoid(_design(features) @ self.weights + bias[:, None])
        return p.clamp(1.0 - self.max_probability, self.max_probability)

    def update_many(self, features: list[tuple[float, ...]], requests: list, accepted: list[bool]) -> None:
        """The same SGD steps, in the same order, as calling `update` once per token, with
        plain floats (a serving engine learns from a whole batch per step; torch ops per
        token would cost more than the step's drafting)."""
        w = self.weights.tolist()
        for f, request, y in zip(features, requests, accepted):
            x = (1.0, math.log1p(f[0]), math.log1p(f[1]), f[2], math.log1p(f[3]))
            bias = self.request_bias.get(request, 0.0)
            z = sum(wi * xi for wi, xi in zip(w, x)) + bias
            p = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
            error = float(y) - p
            w = [wi + self.learning_rate * error * xi for wi, xi in zip(w, x)]
            self.request_bias[request] = (
                1.0 - self.request_shrink
            ) * bias + self.request_learning_rate * error
            self.updates += 1
        self.weights = torch.tensor(w, dtype=torch.float64)

    def forget(self, request: int) -> None:
        """Drop a finished request's offset."""
        self.request_bias.pop(request, None)


def brier_score(predicted: Tensor, observed: Tensor) -> float:
    """Mean squared error between predicted probabilities and 0/1 outcomes (lower is better)."""
    if predicted.numel() == 0:
        return math.nan
    return float(((predicted.double() - observed.double()) ** 2).mean())


def reliability(predicted: Tensor, observed: Tensor, bins: int = 10) -> list[dict]:
    """Reliability diagram data: per probability bin, count, mean prediction, observed frequency."""
    predicted, observed = predicted.double(), observed.double()
    which = (predicted * bins).long().clamp(0, bins - 1)
    table = []
    for i in range(bins):
        members = which == i
        n = int(members.sum())
        table.append(
            {
                "low": i / bins,
                "high": (i + 1) / bins,
                "count": n,
                "mean_predicted": float(predicted[members].mean()) if n else math.nan,
                "observed": float(observed[members].mean()) if n else math.nan,
            }
        )
    return table
