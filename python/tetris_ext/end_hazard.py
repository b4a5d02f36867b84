"""How likely a request is to end (an EOS) before a draft's depth, learnt from output lengths.

A request's budget bounds its drafts (``Proposal.usable``), but an EOS ends it unannounced: a
draft past that end is verified, accepted and thrown away. ``EndHazard`` is a discrete-time
hazard by output length, as a Kaplan-Meier estimate counts it: h(n) = P(the request ends at
its n-th output token | it produced n tokens), from every request seen, running ones included
(a request with g tokens so far produced tokens 1..g without ending; where it ends is not yet
known, so it says nothing past g). A request at g tokens reaches its d-th next token only if it
does not end at any of the tokens g + 1 .. g + d - 1:

    P(reaches depth d) = prod_{n = g+1}^{g+d-1} (1 - h(n))

A length that few requests reached says little, so each h(n) is shrunk towards the pooled rate
(all early ends over all the lengths requests passed) by ``prior`` pseudo-requests: with no
early end seen h = 0 everywhere, and with many requests at n, h(n) is their own rate. A
constant rate (the pooled one alone) fits neither lengths that cluster (SmolLM2's EOS) nor a
cut at a fraction of each answer's length (the replay's steady protocol), whose hazard rises as
requests get longer.

Memory: two counts per output length seen, whatever the number of requests.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["EndHazard", "PRIOR_REQUESTS"]

# Pseudo-requests behind each length's rate. Chosen on the tuning traces only among 1, 4 and 16
# (bench/README.md, "An end hazard by output length"): with the online cost, the best worst draw
# over all cells of the three, and each model's and protocol's best mean or within 0.15% of it.
PRIOR_REQUESTS = 4.0


class EndHazard:
    """Counts, per output length n: ``ended[n]`` requests ended early (an EOS) at their n-th
    token, ``went_on[n]`` requests that produced an (n + 1)-th token. A request ending at its
    budget is not an early end: it went on at every length before its last and counts nothing
    at its last."""

    def __init__(self, prior: float = PRIOR_REQUESTS):
        if not prior > 0:
            raise ValueError(f"EndHazard: prior must be > 0 pseudo-requests, got {prior}")
        self.prior = prior
        self.ended = np.zeros(0, dtype=np.int64)
        self.went_on = np.zeros(0, dtype=np.int64)

    def _grow(self, size: int) -> None:
        if size > len(self.ended):
            more = size - len(self.ended)
            self.ended = np.concatenate([self.ended, np.zeros(more, dtype=np.int64)])
            self.went_on = np.concatenate([self.went_on, np.zeros(more, dtype=np.int64)])

    def observe(self, before: Tensor, after: Tensor, ended_early: Tensor) -> None:
        """One step of B requests: output lengths ``before`` and ``after`` it ([B] int64) and
        whether each ended early in it ([B] bool). Batched: no loop over requests."""
        before, after = before.numpy().astype(np.int64), after.numpy().astype(np.int64)
        early = ended_early.numpy().astype(bool)
        if np.any(after < before) or np.any(before < 0):
            raise ValueError("EndHazard.observe: need 0 <= before <= after for every request")
        if not len(after):
            return
        self._grow(int(after.max()) + 2)
        # went on at lengths before .. after - 1: a difference array, then its running sum
        steps = np.zeros(len(self.went_on) + 1, dtype=np.int64)
        np.add.at(steps, before, 1)
        np.add.at(steps, after, -1)
        self.went_on += np.cumsum(steps)[:-1]
        np.add.at(self.ended, after[early], 1)

    def pooled(self) -> float:
        """Early ends over the lengths at which a request could have ended (its 1st token on:
        none ends before producing one): the rate every length is shrunk towards."""
        exposed = self.ended[1:].sum() + self.went_on[1:].sum()
        return float(self.ended.sum() / exposed) if exposed else 0.0

    def rates(self) -> np.ndarray:
        """h(n) for every length seen (float64), shrunk towards ``pooled``."""
        return (self.ended + self.prior * self.pooled()) / (self.ended + self.went_on + self.prior)

    def log_reach(self, output_lens: Tensor, depths: Tensor) -> Tensor:
        """[B, N] float32: log P(a request with ``output_lens`` [B] tokens reaches depth
        ``depths`` [B, N] before an early end). 0 (certain) while no request ended early;
        lengths past any seen take the pooled rate."""
        if not self.ended.any():
            return torch.zeros(depths.shape, dtype=torch.float32)
        g = output_lens.numpy().astype(np.int64)[:, None]
        d = depths.cpu().numpy().astype(np.int64)
        last = int((g + d).max())
        h = np.full(last + 1, self.pooled())
        known = min(len(self.ended), last + 1)
        h[:known] = self.rates()[:known]
        # running sum of log(1 - h): the tokens g + 1 .. g + d - 1, a difference of two entries
        survive = np.concatenate([[0.0], np.cumsum(np.log1p(-np.minimum(h, 1.0 - 1e-9)))])
        reach = survive[g + d] - survive[g + 1]
        return torch.from_numpy(reach).float()
