"""Pure-Python reference of tree_mask / tree_mask_packed, and input generators for tests.

The generators are hypothesis strategies that draw a dict of op arguments
(``torch.ops.tetris.tree_mask(**inputs)``); the emulation tests of the kernels reuse them.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

INDEX_DTYPES = (torch.int32, torch.int64)


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values in a strided view (every element two apart in memory)."""
    out = torch.empty(t.shape + (2,), dtype=t.dtype)[..., 0]
    out.copy_(t)
    return out


# ---------------------------------------------------------------------------------------------
# Reference


def tree_mask_ref(selected, parents, prefix_lens):
    """(slot_index, slot_parent, positions, mask) exactly as docs/ops.md states."""
    B, N = selected.shape
    M = N + 1
    slot_index = torch.full((B, M), -1, dtype=torch.int64)
    slot_parent = torch.full((B, M), -1, dtype=torch.int64)
    positions = prefix_lens.to(torch.int64)[:, None].repeat(1, M)
    mask = torch.eye(M, dtype=torch.bool).repeat(B, 1, 1)
    for b in range(B):
        slot_of = {}  # candidate -> slot, for the candidates in the block
        depth = [0] * M
        for n in range(N):
            p = int(parents[b, n]) if parents is not None else n - 1
            if not bool(selected[b, n]) or not -1 <= p < n or (p >= 0 and p not in slot_of):
                continue
            s = len(slot_of) + 1
            slot_of[n] = s
            ps = 0 if p == -1 else slot_of[p]
            slot_index[b, s] = n
            slot_parent[b, s] = ps
            depth[s] = depth[ps] + 1
            positions[b, s] += depth[s]
            mask[b, s] = mask[b, ps]
            mask[b, s, s] = True
    return slot_index, slot_parent, positions, mask


def packbits_ref(mask: torch.Tensor) -> torch.Tensor:
    """Packs the last dim: bit (j % 8) of byte j // 8 is mask[..., j] (little bit order)."""
    M = mask.shape[-1]
    padded = torch.nn.functional.pad(mask.to(torch.int64), (0, (-M) % 8))
    bits = padded.reshape(*mask.shape[:-1], (M + 7) // 8, 8) << torch.arange(8)
    return bits.sum(-1).to(torch.uint8)


def tree_mask_packed_ref(selected, parents, prefix_lens):
    slot_index, _, _, mask = tree_mask_ref(selected, parents, prefix_lens)
    query_lens = (slot_index >= 0).sum(1) + 1  # the root has slot_index -1 but is a query
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.int64), query_lens.cumsum(0)])
    return cu_seqlens.to(torch.int32), packbits_ref(mask)


# ---------------------------------------------------------------------------------------------
# Generators


def random_tree_parents(B: int, N: int, generator: torch.Generator) -> torch.Tensor:
    """[B, N] int64 parents of random trees: the parent of n is uniform over -1 .. n-1."""
    choices = torch.arange(N) + 1  # n + 1 possible parents for candidate n
    return (torch.rand(B, N, generator=generator) * choices).floor().long() - 1


@st.composite
def parent_lists(draw, n: int, invalid: bool = True):
    """Parents of n candidates: a random tree (each parent -1 or earlier), or a chain, and with
    `invalid` sometimes an out-of-range value (n itself, later, below -1, huge)."""
    kind = draw(st.sampled_from(["tree", "chain", "star"]))
    parents = []
    for i in range(n):
        if kind == "chain":
            p = i - 1
        elif kind == "star":
            p = -1
        else:
            p = draw(st.integers(-1, i - 1))
        if invalid and draw(st.integers(0, 9)) == 0:
            p = draw(st.sampled_from([i, i + 1, n + 5, -2, -(2**31), 2**31 - 1]))
        parents.append(p)
    return parents


def ancestor_closed(parents: list[int], keep: list[bool]) -> list[bool]:
    """Drops every candidate whose parent is invalid or dropped (keeps the selection valid)."""
    out = []
    for n, p in enumerate(parents):
        ok = keep[n] and -1 <= p < n and (p == -1 or out[p])
        out.append(ok)
    return out


@st.composite
def tree_mask_inputs(draw, max_batch: int = 4, max_n: int = 10, invalid: bool = True, orphans: bool = True):
    """{selected, parents, prefix_lens}: random trees or chains (parents None), selections that
    are ancestor-closed or (when `orphans`) contain orphans (a selected candidate with an
    unselected or invalid ancestor), invalid parent values when `invalid`, random index dtypes."""
    B = draw(st.integers(0, max_batch))
    N = draw(st.integers(0, max_n))
    chains = draw(st.booleans())
    closed = draw(st.booleans()) if orphans else True
    selected, parents = [], []
    for _ in range(B):
        ps = [n - 1 for n in range(N)] if chains else draw(parent_lists(N, invalid))
        keep = draw(st.lists(st.booleans(), min_size=N, max_size=N))
        selected.append(ancestor_closed(ps, keep) if closed else keep)
        parents.append(ps)
    parents_dtype = draw(st.sampled_from(INDEX_DTYPES))
    prefix_dtype = draw(st.sampled_from(INDEX_DTYPES))
    prefix = draw(st.lists(st.integers(0, 2**20), min_size=B, max_size=B))
    return dict(
        selected=torch.tensor(selected, dtype=torch.bool).reshape(B, N),
        parents=None if chains else torch.tensor(parents, dtype=parents_dtype).reshape(B, N),
        prefix_lens=torch.tensor(prefix, dtype=prefix_dtype).reshape(B),
    )
