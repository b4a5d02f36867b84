"""The drain: once no request waits to join, the run ends when its slowest request ends.

CostAwareTetris maximises step goodput, (sum_{i in S} p_i + B) / T(S), every token of every
request worth the same. While requests wait to join that is the right value: a finished
request's slot takes the next one at once. Once none waits (``Proposal.waiting`` False) the
batch drains, and what remains of the run is the time until its *last* request finishes; a
memory-bound step costs about the same whatever the batch, so a token of a request that will
finish early anyway buys nothing, and a token of the request that finishes last saves a share
of a step.

The choice, from that objective: if every step of the drain were like this one, verifying the
selection S, the drain would last about T(S) (1 + E[max_b X_b(S)] / mu(S)) seconds: X_b(S) the
tokens request b still has to generate after this step (fewer, the more of its candidates S
verifies), mu(S) = 1 + (sum_{i in S} p_i) / B the tokens a request generates per step. The
drain verifies the S that minimises it (``drain_select``), scanning the prefixes of one order,
each candidate's estimate times its first-order value, P(b finishes last) + E[max X] / (B mu)
(the derivative: through the slowest request's tokens, and through the rate). Where every
request has as many tokens left, the maximum hardly moves and the choice is the goodput rule's
(T(S) / mu(S) least); where one has far more left than the others, its candidates come first,
and the others' only while they pay for their seconds through the rate. The expected maximum
is computed exactly under the model below, not linearised: a token of one of ten requests tied
for last shortens nothing until the nine others advance too. A candidate the request cannot
use (its depth >= the request's tokens left: the request ends on its accepted tokens, the bonus
dropped) is never verified.

The model, from what the step knows and no tuned constant: F_b is the number of steps to
generate the L_b tokens b has left (``tokens_left``; after this step L_b - 1 - its expected
accepted tokens) at the batch's tokens per step, whose mean mu and variance sigma^2 are those
of this step's proposals if every candidate were verified (1 + the accepted path, over the
requests of the batch). By the renewal approximation F_b ~ Normal(L_b / mu, L_b sigma^2 / mu^3
+ 1/12) (1/12: a step count is a whole number), independently across requests; P(b last) =
integral of f_b(t) prod_{c != b} F_c(t) dt and E[max F] = integral of 1 - prod_b F_b(t) dt, on
a grid. tokens_left is an upper bound (an EOS may end a request earlier), so a request about to
stop looks longer than it is, and its tokens are overvalued.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import ops
from .proposal import Proposal

__all__ = ["draining", "drain_select", "finish_last_probabilities"]

GRID = 256  # points of the integral over the finishing step (the result moves < 1e-3 from 128 up)


def draining(proposal: Proposal) -> bool:
    """The batch drains: the engine says no request waits to join and knows what each has left."""
    return proposal.waiting is False and proposal.tokens_left is not None


def _finish_steps(left: Tensor, mean: float, variance: float) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the steps to generate ``left`` tokens (none: 0) at ``mean``
    tokens per step with per-step ``variance`` (the renewal approximation, module doc)."""
    left = left.clamp(min=0)
    return left / mean, (left * variance / mean**3 + 1 / 12).sqrt()


def finish_last_probabilities(tokens_left: Tensor, mean: float, variance: float) -> Tensor:
    """[B] float64: P(request b finishes last) when each needs tokens_left[b] tokens at ``mean``
    tokens per step with per-step ``variance`` (renewal approximation, module doc). Sums to 1."""
    steps, sd = _finish_steps(tokens_left.double(), mean, variance)
    lo, hi = float((steps - 6 * sd).min()), float((steps + 6 * sd).max())
    t = torch.linspace(lo, hi, GRID, dtype=torch.float64)[:, None]  # [G, 1]
    z = (t - steps) / sd  # [G, B]
    log_cdf = torch.special.log_ndtr(z)
    log_pdf = -0.5 * z**2 - sd.log() - 0.5 * math.log(2 * math.pi)
    # f_b(t) prod_{c != b} F_c(t): the others' product is the whole product without b's own.
    density = (log_pdf + log_cdf.sum(1, keepdim=True) - log_cdf).exp()
    last = density.sum(0)
    total = float(last.sum())
    if not total > 0 or not math.isfinite(total):
        return torch.full_like(steps, 1 / len(steps))
    return last / total


def _usable(proposal: Proposal, probs: Tensor) -> tuple[Tensor, Tensor]:
    """``probs`` with 0 where the request's tokens left cannot use the candidate (an engine has
    made those padding already, ``Proposal.usable``; a direct caller may not), and the depths."""
    return probs * proposal.within_budget().to(probs.device), proposal.depths().to(probs.device)


def _step_tokens(usable: Tensor, depth: Tensor) -> tuple[float, float]:
    """Mean and variance of a request's tokens per step (1 + its accepted path) if every usable
    candidate were verified, over the batch: P(A >= k) = the estimates at depth k sum to, so
    E[A] = sum p and E[A^2] = sum (2 depth - 1) p."""
    accepted = usable.sum(1)
    second = (usable * (2 * depth - 1)).sum(1)
    mean = 1 + float(accepted.mean())
    return mean, max(0.0, float((second + 2 * accepted + 1).mean()) - mean**2)


def _log_cdfs(left: Tensor, mean: float, variance: float, t: Tensor) -> Tensor:
    """[..., G]: log P(F <= t) of requests with ``left`` [...] tokens still to generate after this
    step (0 or less: done, F = 0)."""
    steps, sd = _finish_steps(left, mean, variance)
    log_cdf = torch.special.log_ndtr((t - steps[..., None]) / sd[..., None])
    return torch.where(left[..., None] > 0, log_cdf, torch.zeros_like(log_cdf))


def drain_select(proposal: Proposal, probs: Tensor, latency, limit: int) -> Tensor:
    """[B, N] bool: the drain's selection (module doc): of the prefixes of the candidates in the
    order of their first-order value (at most ``limit`` long), the one minimising
    T(S) (1 + E[max_b X_b(S)] / mu(S)). ``latency``: predicted seconds of steps computing B + m
    tokens, m a [M] float64 tensor. Call only while ``draining(proposal)``."""
    B, N = probs.shape
    usable, depth = _usable(proposal, probs.double())
    mean, variance = _step_tokens(usable, depth)
    last = finish_last_probabilities(proposal.tokens_left, mean, variance)
    # Each request's usable candidates, best first (for chains: the chain), and what each adds.
    sorted_p = usable.sort(dim=1, descending=True, stable=True).values
    left = proposal.tokens_left.double() - 1  # after this step's bonus token
    after = left[:, None] - sorted_p.cumsum(1)  # [B, N]: tokens left once its first j+1 are verified
    steps, spread = _finish_steps(left, mean, variance)
    t = torch.linspace(0.0, max(float((steps + 6 * spread).max()), 1.0), GRID, dtype=torch.float64)
    before = _log_cdfs(left, mean, variance, t)  # [B, G], in steps at the rate ``mean``
    steps = _log_cdfs(after, mean, variance, t)  # [B, N, G]
    delta = steps - torch.cat([before[:, None], steps[:, :-1]], 1)  # what candidate j changes
    dt = float(t[1] - t[0])
    most_left = mean * float((1 - before.sum(0).exp()).sum()) * dt  # E[max X] before, in tokens
    # First-order value of a candidate: -dJ/dp ~ P(b last) + E[max X] / (B mu), times p.
    key = (sorted_p * (B * last + most_left / mean)[:, None]).flatten()
    ranked = key.argsort(descending=True, stable=True)[: min(int((key > 0).sum()), max(0, limit))]
    log_all = torch.cat([before.sum(0)[None], before.sum(0) + delta.flatten(0, 1)[ranked].cumsum(0)])
    most_lefts = mean * (1 - log_all.exp()).sum(1) * dt  # E[max X] after each prefix, in tokens
    rate = 1 + torch.cat([sorted_p.new_zeros(1), sorted_p.flatten()[ranked].cumsum(0)]) / B
    m = torch.arange(len(ranked) + 1, dtype=torch.float64)
    best = int((latency(m) * (1 + most_lefts / rate)).argmin())
    counts = torch.zeros(B * N, dtype=torch.long)
    counts[ranked[:best]] = 1
    return ops.select(proposal.cum_logprobs, best, proposal.parents, counts.view(B, N).sum(1), None)[0]
