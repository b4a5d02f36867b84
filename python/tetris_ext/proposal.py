"""What drafters, policies and the decoding loop hand each other every step.

These two records are independent of any model, so the trace-replay simulator builds them
from recorded data and drives the same policies and drafter calibration with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["Proposal", "Outcome"]


@dataclass
class Proposal:
    """The candidate draft tokens of every active request for one step.

    Row b is the b-th active request; candidate n of a row is a token proposed to follow its
    parent (chains: candidate n-1; the root, i.e. the request's last accepted token, for n = 0).

    tokens: [B, N] int64; -1 marks padding (the row has fewer candidates).
    parents: [B, N] int64 with -1 = the root and otherwise an index < n, or None for chains.
    token_logprobs: [B, N] float32, log of the estimated probability that the target accepts
        the token given that its parent was accepted (draft model: the draft probability;
        n-gram: the calibrated estimate); -inf for padding.
    cum_logprobs: [B, N] float32, the sum of token_logprobs along the path from the root:
        the estimated probability that the token is accepted. What TETRIS ranks by.
    draft_probs: [B, N, V] float32 or None: for tokens *sampled* from a draft distribution,
        that distribution (lossless sampling verification needs it); None for tokens chosen
        deterministically (greedy drafts, top-k trees, n-gram matches).
    features: [B, N, F] float32 or None: raw drafter statistics behind token_logprobs (the
        n-gram drafter's match statistics), kept so that a replay can recompute them.

    Progress, what an engine knows of each request beyond its drafts (``tetris_ext.drain``,
    ``tetris_ext.end_hazard``): the shared step (``engine.Engine``, hence ``decoding.generate``
    and ``sim.replay``) fills all five (``prefill_tokens`` where its cost model knows it); the
    vLLM proposer fills ``tokens_left`` and ``output_lens`` from its runner's request states,
    not ``waiting`` or ``prefill_tokens`` (its scheduler's queue and next step are not passed
    to it) nor ``context_tokens`` (only a known cost model reads it; the proposer fits its
    cost online); a drafter leaves them None. None = unknown, and a policy then ignores it.
    tokens_left: [B] int64 >= 1 on the CPU, or None: tokens each request may still generate
        (its max_new_tokens less its output so far): an upper bound, as an EOS may end it
        earlier. Host bookkeeping, so checking it never waits for a device.
    output_lens: [B] int64 >= 0 on the CPU, or None: tokens each request has generated so far
        (its position in its own output: how likely it is to end before a draft's depth,
        ``tetris_ext.end_hazard``).
    waiting: bool or None: a request is waiting to join the batch (arrived, not yet admitted).
        False: the batch drains, and the run's remaining time is that of its slowest request.
    prefill_tokens: int >= 0 or None: the prompt tokens of joining requests that this step's
        forward computes beside the decoding tokens (a chunked-prefill engine that knows its
        step before the choice: ``sim.replay`` priced by ``RooflineCostModel(chunked_prefill=
        True)``); None when prompts are prefilled apart or the step is not known yet (the
        decoding loop; vLLM, whose scheduler plans the step after the proposer drafts).
    context_tokens: int >= 0 or None: the tokens the target's cache holds for these requests
        before the step (prompts and outputs so far): the KV cache the step's attention reads,
        which a known cost model prices (a GPU roofline reads it beside the weights every step).
    """

    tokens: Tensor
    parents: Tensor | None
    token_logprobs: Tensor
    cum_logprobs: Tensor
    draft_probs: Tensor | None = None
    features: Tensor | None = None
    tokens_left: Tensor | None = None
    output_lens: Tensor | None = None
    waiting: bool | None = None
    prefill_tokens: int | None = None
    context_tokens: int | None = None

    def __post_init__(self):
        B = self.tokens.shape[0]
        for name, least in (("tokens_left", 1), ("output_lens", 0)):
            counts = getattr(self, name)
            if counts is None:
                continue
            if (
                not isinstance(counts, Tensor)
                or counts.dtype != torch.int64
                or tuple(counts.shape) != (B,)
                or counts.device.type != "cpu"
            ):
                got = (
                    f"{counts.dtype} {tuple(counts.shape)} on {counts.device}"
                    if isinstance(counts, Tensor)
                    else type(counts).__name__
                )
                raise ValueError(
                    f"Proposal: {name} must be a CPU int64 tensor of shape ({B},) or None, got {got}"
                )
            if B and int(counts.min()) < least:
                why = " (a request with none left has finished)" if least else ""
                raise ValueError(f"Proposal: {name} must be >= {least}{why}")
        if self.waiting is not None and not isinstance(self.waiting, bool):
            raise ValueError(f"Proposal: waiting must be a bool or None, got {type(self.waiting).__name__}")
        for name in ("prefill_tokens", "context_tokens"):
            count = getattr(self, name)
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
                raise ValueError(f"Proposal: {name} must be an int >= 0 or None, got {count!r}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.tokens.shape[1]

    def counts(self) -> Tensor:
        """[B] int64: candidates per request."""
        return (self.tokens >= 0).sum(1)

    def parent_index(self) -> Tensor:
        """[B, N] int64 parents, with the chain convention made explicit."""
        if self.parents is not None:
            return self.parents
        B, N = self.tokens.shape
        return (torch.arange(N, device=self.tokens.device) - 1).expand(B, N)

    def depths(self) -> Tensor:
        """[B, N] int64 depth of each candidate below the root (1 for the root's children)."""
        B, N = self.tokens.shape
        if self.parents is None:
            return (torch.arange(N, device=self.tokens.device) + 1).expand(B, N)
        depth = torch.zeros(B, N, dtype=torch.long, device=self.parents.device)
        for n in range(N):  # parents precede their children
            parent = self.parents[:, n]
            parent_depth = depth.gather(1, parent.clamp(min=0)[:, None])[:, 0]
            depth[:, n] = torch.where(parent >= 0, parent_depth, 0) + 1
        return depth

    def within_budget(self) -> Tensor:
        """[B, N] bool: the candidates a request can use. A request with L tokens left
        (``tokens_left``) ends on its first L - 1 accepted drafts and the bonus token, so a
        candidate at depth >= L adds nothing. All True without ``tokens_left``."""
        if self.tokens_left is None:
            return torch.ones_like(self.tokens, dtype=torch.bool)
        return self.depths() < self.tokens_left.to(self.tokens.device)[:, None]

    def usable(self) -> Proposal:
        """The proposal with the candidates outside ``within_budget`` made padding (token -1,
        log-probabilities -inf; their descendants are deeper, so what stays is ancestor-closed).
        Every engine applies it before the policy chooses (the shared step, the vLLM proposer),
        so no policy spends a verified slot past a request's budget. Without ``tokens_left``,
        the proposal itself."""
        if self.tokens_left is None or self.num_candidates == 0:
            return self
        # Masked whether or not any is beyond: testing would wait for a device holding the drafts.
        beyond = ~self.within_budget()
        return replace(
            self,
            tokens=self.tokens.masked_fill(beyond, -1),
            token_logprobs=self.token_logprobs.masked_fill(beyond, -math.inf),
            cum_logprobs=self.cum_logprobs.masked_fill(beyond, -math.inf),
        )

    @staticmethod
    def empty(batch_size: int, device: torch.device | str = "cpu") -> Proposal:
        """No candidates (autoregressive steps)."""
        tokens = torch.full((batch_size, 0), -1, dtype=torch.long, device=device)
        logprobs = torch.zeros((batch_size, 0), dtype=torch.float32, device=device)
        return Proposal(tokens, None, logprobs, logprobs.clone())


@dataclass
class Outcome:
    """What verification decided for one step's proposal.

    selected: [B, N] bool, the candidates the policy sent to the target.
    accepted: [B, N] bool, the candidates the target accepted (a path from the root).
    accepted_path: [B, K] int64, the accepted candidates' indices in path order, -1 padded.
    """

    selected: Tensor
    accepted: Tensor
    accepted_path: Tensor

    def num_verified(self) -> Tensor:
        return self.selected.sum(1)

    def num_accepted(self) -> Tensor:
        return self.accepted.sum(1)

    def tested(self, proposal: Proposal) -> Tensor:
        """[B, N] bool: verified candidates whose parent was accepted (or is the root): the
        ones whose own acceptance was actually decided, hence the calibration data."""
        parents = proposal.parent_index()
        parent_accepted = self.accepted.gather(1, parents.clamp(min=0)) | (parents < 0)
        return self.selected & parent_accepted
