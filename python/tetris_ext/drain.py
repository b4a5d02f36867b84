"""The drain: once no request waits to join, the run ends when its slowest request ends.

CostAwareTetris maximises step goodput, (sum_{i in S} p_i + B) / T(S), every token of every
request worth the same. While requests wait to join that is the right value: a finished
request's slot takes the next one at once. Once none waits (``Proposal.waiting`` False) the
batch drains, and what remains of the run is the time until its *last* request finishes; a
memory-bound step costs about the same whatever the batch, so a token of a request that will
finish early anyway buys nothing, and a token of the request that finishes last saves a share
of a step.

The value, from that objective: the drain lasts max_b F_b steps, F_b the steps request b still
needs, and the derivative of E[max_b F_b] with respect to request b's progress is
P(b finishes last) (times the steps per token). So in the drain a token of request b is worth
``w_b = B * P(b finishes last)`` tokens of the goodput rule, and the policy maximises
(sum_{i in S} w_b(i) p_i + B) / T(S): the bonus tokens are worth sum_b w_b = B, and where every
request is as likely to finish last (the same tokens left) every w_b is 1 and the rule is
today's exactly. A candidate the request cannot use (its depth >= the request's tokens left:
the request ends on its accepted tokens, the bonus dropped) is worth 0.

P(b finishes last), from what the step knows and no tuned constant: F_b is the number of steps
to generate b's ``tokens_left`` L_b at the batch's tokens per step, whose mean mu and variance
sigma^2 are those of this step's proposals if every candidate were verified (1 + the accepted
path, over the requests of the batch). By the renewal approximation F_b ~ Normal(L_b / mu,
L_b sigma^2 / mu^3 + 1/12) (1/12: a step count is a whole number), independently across
requests, and P(b last) = integral of f_b(t) prod_{c != b} F_c(t) dt, on a grid. tokens_left is
an upper bound (an EOS may end a request earlier), so a request about to stop looks longer than
it is: its tokens are then overvalued, never the others' undervalued by more than that.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .proposal import Proposal

__all__ = ["draining", "drain_weighted_probs", "finish_last_probabilities"]

GRID = 256  # points of the integral over the finishing step (the result moves < 1e-3 from 128 up)


def draining(proposal: Proposal) -> bool:
    """The batch drains: the engine says no request waits to join and knows what each has left."""
    return proposal.waiting is False and proposal.tokens_left is not None


def _depths(proposal: Proposal) -> Tensor:
    """[B, N] int64: each candidate's depth below the root (1 for the root's children)."""
    B, N = proposal.tokens.shape
    if proposal.parents is None:
        return (torch.arange(N, device=proposal.tokens.device) + 1).expand(B, N)
    parents = proposal.parents
    depth = torch.ones(B, N, dtype=torch.long, device=parents.device)
    for n in range(N):  # parents precede their children
        above = parents[:, n]
        depth[:, n] = torch.where(above >= 0, depth.gather(1, above.clamp(min=0)[:, None])[:, 0] + 1, 1)
    return depth


def finish_last_probabilities(tokens_left: Tensor, mean: float, variance: float) -> Tensor:
    """[B] float64: P(request b finishes last) when each needs tokens_left[b] tokens at ``mean``
    tokens per step with per-step ``variance`` (renewal approximation, module doc). Sums to 1."""
    left = tokens_left.double()
    steps = left / mean
    sd = (left * variance / mean**3 + 1 / 12).sqrt()
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
        return torch.full_like(left, 1 / len(left))
    return last / total


def drain_weighted_probs(proposal: Proposal, probs: Tensor) -> Tensor:
    """``probs`` [B, N] (acceptance estimates, 0 for padding) as the drain values them: each
    candidate's times its request's weight w_b = B * P(b finishes last), 0 where the request's
    tokens left cannot use it (module doc). Call only while ``draining(proposal)``."""
    B, N = probs.shape
    left = proposal.tokens_left.to(probs.device)
    depth = _depths(proposal).to(probs.device)
    usable = probs * (depth < left[:, None])
    if B == 0 or N == 0:
        return usable
    # Tokens of this step if every usable candidate were verified: 1 + A, P(A >= k) = the
    # probability mass of the candidates at depth k, so E[A] = sum p, E[A^2] = sum (2 depth - 1) p.
    accepted = usable.sum(1)
    second = (usable * (2 * depth - 1)).sum(1)
    mean = 1 + float(accepted.mean())
    variance = max(0.0, float((second + 2 * accepted + 1).mean()) - mean**2)
    weight = B * finish_last_probabilities(left, mean, variance).to(probs.dtype)
    return usable * weight[:, None]
