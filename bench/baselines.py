"""What a user would write in plain PyTorch instead of each tetris op (the benchmark baselines).

Each baseline is vectorised the way an engine developer would write it, assumes well-formed
input (no invalid ids, which our ops check and tolerate), and is checked against our op on the
benchmark inputs before it is timed (bench/ops.py), so a ratio never compares different work.
"""

from __future__ import annotations

import torch
from torch import Tensor


def select_composite(token_logprobs: Tensor, budget: int) -> Tensor:
    """The public TETRIS selection: cumsum of log-probs, top-`budget` over the flattened batch,
    and a scatter-max of (index + 1) per request that turns the flat picks into lengths.

    The public code uses torch_scatter.scatter_max; scatter_reduce(amax) is its plain-torch twin.
    Returns per-request lengths [B] int64 (our op returns that as `counts` plus the mask).
    """
    B, N = token_logprobs.shape
    cum = token_logprobs.cumsum(-1)
    k = min(budget, B * N)
    flat = torch.topk(cum.flatten(), k).indices
    lengths = torch.zeros(B, dtype=torch.long, device=cum.device)
    return lengths.scatter_reduce_(0, flat // N, flat % N + 1, reduce="amax")


def select_capped_roots(scores: Tensor, budget: int, cap: int) -> Tensor:
    """select for candidates that all hang at the root (no path minimum) with one cap for every
    request: top-`cap` per request, then top-`budget` of those over the batch. Returns the
    selected mask [B, N] bool."""
    B, N = scores.shape
    per_request = torch.topk(scores, min(cap, N), dim=1)
    kept = torch.full_like(scores, float("-inf")).scatter_(1, per_request.indices, per_request.values)
    picks = torch.topk(kept.flatten(), min(budget, B * min(cap, N))).indices
    return torch.zeros(B * N, dtype=torch.bool, device=scores.device).index_fill_(0, picks, True).view(B, N)


def topk_budget(token_logprobs: Tensor, budget: int) -> Tensor:
    """A batch budget the way vLLM's adaptive verification assigns it (chains only): every
    (request, position) slot scored by its survival (here the cumulative log-prob, the log of
    vLLM's running product of confidences, same order), one topk(budget) over the flattened
    batch, the winners marked in a flat mask and counted per request. Returns lengths [B] int64.
    """
    cum = token_logprobs.cumsum(-1)
    flat = cum.flatten()
    winners = flat.topk(min(budget, flat.numel())).indices
    admitted = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, winners, True)
    return admitted.view_as(cum).sum(1)


def draft_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """log_softmax + gather + cumsum over a chain: (token_logprobs, cum_logprobs), float32."""
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    token_logprobs = logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return token_logprobs, token_logprobs.cumsum(-1)


def chain_parents(B: int, N: int, device) -> Tensor:
    return torch.arange(-1, N - 1, device=device).expand(B, N)


def tree_mask(selected: Tensor, parents: Tensor | None, prefix_lens: Tensor):
    """Vectorised construction of the verification block (same outputs as tetris.tree_mask).

    Nodes are numbered 0 (root) and n + 1 (candidate n). A pointer chase over the N levels
    collects every node's ancestors into a [B, M, M] matrix and checks that each one is
    selected; the valid nodes are then moved to the front (stable, so increasing n).
    """
    B, N = selected.shape
    M = N + 1
    dev = selected.device
    if parents is None:
        parents = chain_parents(B, N, dev)
    parent_node = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=dev), parents.long() + 1], 1)
    node_selected = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=dev), selected], 1)
    nodes = torch.arange(M, device=dev).expand(B, M)
    ancestors = torch.zeros(B, M, M, dtype=torch.bool, device=dev)
    ancestors.scatter_(2, nodes.unsqueeze(-1), True)
    valid = node_selected.clone()
    cur = nodes
    for _ in range(N):
        cur = parent_node.gather(1, cur)
        ancestors.scatter_(2, cur.unsqueeze(-1), True)
        valid &= node_selected.gather(1, cur)
    depth = ancestors.sum(-1) - 1

    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)  # node at each slot
    slot_valid = valid.gather(1, order)
    slot_of_node = torch.empty_like(order).scatter_(1, order, nodes.contiguous())
    is_candidate = slot_valid & (order > 0)
    minus_one = torch.full_like(order, -1)
    slot_index = torch.where(is_candidate, order - 1, minus_one)
    slot_parent = torch.where(is_candidate, slot_of_node.gather(1, parent_node.gather(1, order)), minus_one)
    positions = prefix_lens.long().unsqueeze(1) + torch.where(slot_valid, depth.gather(1, order), 0)
    rows = ancestors.gather(1, order.unsqueeze(-1).expand(B, M, M))
    mask = rows.gather(2, order.unsqueeze(1).expand(B, M, M))
    eye = torch.eye(M, dtype=torch.bool, device=dev).expand(B, M, M)
    mask = torch.where(slot_valid.unsqueeze(-1), mask, eye)
    return slot_index, slot_parent, positions, mask


def packbits(mask: Tensor) -> Tensor:
    """[B, M, M] bool -> [B, M, ceil(M/8)] uint8, bit j % 8 of byte j // 8 (little bit order)."""
    B, M, _ = mask.shape
    nbytes = (M + 7) // 8
    padded = torch.zeros(B, M, nbytes * 8, dtype=torch.uint8, device=mask.device)
    padded[..., :M] = mask
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (padded.view(B, M, nbytes, 8) * weights).sum(-1, dtype=torch.uint8)


def tree_mask_packed(selected: Tensor, parents: Tensor | None, prefix_lens: Tensor):
    """cu_seqlens and the bit-packed mask, from the vectorised construction above."""
    slot_index, _, _, mask = tree_mask(selected, parents, prefix_lens)
    counts = (slot_index >= 0).sum(1) + 1
    cu = torch.zeros(selected.shape[0] + 1, dtype=torch.int32, device=selected.device)
    cu[1:] = counts.cumsum(0)
    return cu, packbits(mask)


def _outputs_from_path(accepted: Tensor, num_accepted: Tensor, slot_tokens: Tensor, bonus: Tensor):
    """out_tokens: the tokens of the accepted slots, then the bonus token, padded -1."""
    B, M = accepted.shape
    j = torch.arange(M, device=accepted.device).expand(B, M)
    n = num_accepted.long().unsqueeze(1)
    drafted = slot_tokens.long().gather(1, accepted.clamp_min(0))
    out = torch.where(j < n, drafted, torch.full_like(drafted, -1))
    return torch.where(j == n, bonus.long().unsqueeze(1), out)


def verify_greedy_chain(slot_tokens: Tensor, target_tokens: Tensor):
    """Chains: accepted length = number of leading matches (the usual cumprod trick)."""
    B, M = slot_tokens.shape
    matches = slot_tokens[:, 1:] == target_tokens[:, :-1]
    num_accepted = matches.to(torch.int32).cumprod(1).sum(1, dtype=torch.int32)
    j = torch.arange(M, device=slot_tokens.device).expand(B, M)
    accepted = torch.where(j < num_accepted.unsqueeze(1), j + 1, torch.full_like(j, -1))
    bonus = target_tokens.gather(1, num_accepted.long().unsqueeze(1)).squeeze(1)
    return accepted, num_accepted, _outputs_from_path(accepted, num_accepted, slot_tokens, bonus)


def verify_greedy_tree(slot_tokens: Tensor, slot_parent: Tensor, target_tokens: Tensor, max_depth: int):
    """Trees: one vectorised step per level, following the first child that matches the target."""
    B, M = slot_tokens.shape
    dev = slot_tokens.device
    slots = torch.arange(M, device=dev).expand(B, M)
    cur = torch.zeros(B, dtype=torch.long, device=dev)
    active = torch.ones(B, dtype=torch.bool, device=dev)
    accepted = torch.full((B, M), -1, dtype=torch.long, device=dev)
    for depth in range(max_depth):
        want = target_tokens.gather(1, cur.unsqueeze(1))
        match = (slot_parent == cur.unsqueeze(1)) & (slot_tokens == want) & (slots > cur.unsqueeze(1))
        found = match.any(1) & active
        first = match.to(torch.uint8).argmax(1)
        accepted[:, depth] = torch.where(found, first, accepted[:, depth])
        cur = torch.where(found, first, cur)
        active = found
    num_accepted = (accepted >= 0).sum(1, dtype=torch.int32)
    bonus = target_tokens.gather(1, cur.unsqueeze(1)).squeeze(1)
    return accepted, num_accepted, _outputs_from_path(accepted, num_accepted, slot_tokens, bonus)


def verify_sampling(slot_tokens, slot_parent, target_probs, draft_probs, uniforms):
    """One vectorised pass over the slots (children come after their parent, siblings in
    slot order): the per-request walk keeps its current node and working distribution p.

    The rules of docs/ops.md (`verify_sampling`): p unnormalised with mass m = sum(p); a child x drawn
    from q is accepted when u * q(x) * m < p(x), and a rejection leaves max(p - m * q, 0); a
    deterministic child is accepted when u * m < p(x), and a rejection zeroes p(x).
    """
    B, M, V = target_probs.shape
    dev = target_probs.device
    rows = torch.arange(B, device=dev)
    cur = torch.zeros(B, dtype=torch.long, device=dev)
    num_accepted = torch.zeros(B, dtype=torch.long, device=dev)
    accepted = torch.full((B, M), -1, dtype=torch.long, device=dev)
    p = target_probs[:, 0].clone()
    for s in range(1, M):
        x = slot_tokens[:, s].long()
        is_child = (slot_parent[:, s] == cur) & (x >= 0) & (x < V)
        x = x.clamp(0, V - 1).unsqueeze(1)
        px = p.gather(1, x).squeeze(1)
        mass = p.sum(1)
        if draft_probs is not None:
            q = draft_probs[rows, cur]
            accept = is_child & (uniforms[:, s] * q.gather(1, x).squeeze(1) * mass < px)
            reject = is_child & ~accept
            p = torch.where(reject.unsqueeze(1), (p - mass.unsqueeze(1) * q).clamp_min(0), p)
        else:
            accept = is_child & (uniforms[:, s] * mass < px)
            reject = is_child & ~accept
            p = p.scatter(1, x, torch.where(reject, 0.0, px).unsqueeze(1))
        accepted[rows, num_accepted] = torch.where(accept, s, accepted[rows, num_accepted])
        num_accepted += accept
        cur = torch.where(accept, s, cur)
        p = torch.where(accept.unsqueeze(1), target_probs[rows, cur], p)
    total = p.sum(1, keepdim=True)
    p = torch.where(total > 0, p, target_probs[rows, cur])
    total = p.sum(1, keepdim=True)
    final = (p.cumsum(1) <= uniforms[:, :1] * total).sum(1).clamp_max(V - 1)
    num_accepted = num_accepted.to(torch.int32)
    return accepted, num_accepted, _outputs_from_path(accepted, num_accepted, slot_tokens, final)
