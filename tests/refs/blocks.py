"""Fixed-seed inputs at the kernels' block-boundary shapes, for the tests that compare a kernel
backend with the CPU ops: the emulated and the CUDA kernels (the `kernel_backend` tests of
tests/test_<op>.py). Every builder returns the op's keyword arguments (CPU tensors)
and is deterministic in its arguments, so two seeds give two inputs of the same shapes,
dtypes and layouts (what a CUDA-graph replay test needs).

The shape lists say which kernel boundary they cross; both test suites use them.
"""

from __future__ import annotations

import torch

from .draft_cumprod import random_logits, random_parents, random_tokens
from .select import random_scores
from .tree_mask import ancestor_closed, random_tree_parents
from .verify import INVALID_INDEX_VALUES, random_probs

# -- draft_cumprod -------------------------------------------------------------------------------

# V around the vector widths (4 float32 / 8 half per 16 bytes) and the per-thread unrolled
# stripes of the 32..256-thread blocks, so that the head, vector body and tail all occur.
DRAFT_CUMPROD_VOCABS = [1, 3, 4, 5, 7, 8, 9, 31, 33, 127, 128, 129, 511, 513, 1023, 1025, 4097]
# Batch and candidate counts around warp (32), block (128 requests per path-sum block, 256)
# and 1024 boundaries.
DRAFT_CUMPROD_BATCH_SHAPES = [
    (1, 1),
    (31, 33),
    (32, 32),
    (33, 31),
    (127, 2),
    (128, 2),
    (129, 2),
    (255, 1),
    (257, 1),
    (1, 1023),
    (1, 1025),
    (1025, 1),
]


def draft_cumprod_block_inputs(
    B, N, V, dtype=torch.float32, tree=True, seed=0, specials=True, invalid_rate=0.1
):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        logits=random_logits(gen, B, N, V, 4.0, specials).to(dtype),
        tokens=random_tokens(gen, B, N, V, invalid_rate),
        parents=random_parents(gen, B, N, invalid_rate) if tree else None,
        temperature=0.7,
    )


# -- select --------------------------------------------------------------------------------------

# B, N and B * N around warp (32), 256 and block (1024 threads) boundaries.
SELECT_BLOCK_SHAPES = [
    (1, 1),
    (31, 33),
    (32, 32),
    (33, 31),
    (256, 4),
    (257, 4),
    (1, 1023),
    (1, 1024),
    (1, 1025),
    (1023, 1),
    (1024, 1),
    (1025, 1),
    (3, 700),
]
# The bench's largest shapes: B = 1024 requests of N = 16..64 candidates (the keys no longer
# fit in shared memory from B * N = 32768 on: the kernel's global-memory path).
SELECT_BENCH_SHAPES = [(16, 8192), (32, 8192), (64, 8192), (64, 30000)]  # (N, budget)


def select_block_inputs(B, N, budget, *, style="paths", tree=True, caps=False, min_score=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        scores=random_scores(gen, B, N, style, 0.05),
        budget=budget,
        parents=random_parents(gen, B, N, 0.02) if tree else None,
        max_per_request=torch.randint(-1, N + 2, (B,), generator=gen) if caps else None,
        min_score=min_score,
    )


# -- tree_mask / tree_mask_packed ----------------------------------------------------------------

# N around the 32-thread warp and the 256-thread block (the slot scan runs over several tiles).
TREE_MASK_CANDIDATES = [31, 32, 33, 255, 256, 257, 600]
# B around the warp and 1024 (the cu_seqlens scan runs over two tiles).
TREE_MASK_BATCHES = [31, 32, 33, 1023, 1024, 1025]


def tree_mask_block_inputs(B, N, seed, kind="tree", orphans=True, invalid=True):
    """Random trees (or chains, or stars) with a random selection: ancestor-closed or not, and
    with `invalid` some out-of-range parent values."""
    g = torch.Generator().manual_seed(seed)
    if kind == "chain":
        parents = None
    elif kind == "star":
        parents = torch.full((B, N), -1, dtype=torch.int64)
    else:
        parents = random_tree_parents(B, N, g)
    if parents is not None and invalid:
        bad = torch.rand(B, N, generator=g) < 0.03
        values = torch.tensor([N, N + 7, -2, -(2**31), 2**31 - 1])
        parents[bad] = values[torch.randint(0, len(values), (int(bad.sum()),), generator=g)]
    selected = torch.rand(B, N, generator=g) < 0.8
    if not orphans:
        plist = parents.tolist() if parents is not None else [[n - 1 for n in range(N)]] * B
        selected = torch.tensor(
            [ancestor_closed(p, k) for p, k in zip(plist, selected.tolist())], dtype=torch.bool
        ).reshape(B, N)
    prefix_lens = torch.randint(0, 2**20, (B,), generator=g, dtype=torch.int64)
    return dict(selected=selected, parents=parents, prefix_lens=prefix_lens)


# -- verify_greedy / verify_sampling -------------------------------------------------------------

# M around the 32-thread warp and the 256-thread block of verify_greedy, and several slots per
# thread (1025).
GREEDY_SLOTS = [31, 32, 33, 255, 256, 257, 1025]
# V around one tile of verify_sampling (4 tokens per thread, up to 1024 threads: 4096 tokens),
# and not a multiple of 4.
SAMPLING_VOCABS = [1, 3, 5, 127, 128, 129, 4095, 4096, 4097, 4099]


def random_slot_parents(B, M, g, max_children=None, invalid=True):
    """[B, M] slot_parent of random trees in topological order over a random number of slots
    (the rest padding, -1); with `invalid`, some out-of-range values."""
    parents = torch.full((B, M), -1, dtype=torch.int64)
    for b in range(B):
        count = int(torch.randint(M // 2, M, (1,), generator=g)) if M > 1 else 0
        children = [0] * M
        for s in range(1, count + 1):
            p = int(torch.randint(0, s, (1,), generator=g))
            if max_children is not None and children[p] >= max_children:
                p = s - 1 if children[s - 1] < max_children else -1  # a chain link, or padding
            if p >= 0:
                children[p] += 1
            parents[b, s] = p
    if invalid:
        bad = torch.rand(B, M, generator=g) < 0.03
        values = torch.tensor([M, M + 3] + INVALID_INDEX_VALUES)
        parents[bad] = values[torch.randint(0, len(values), (int(bad.sum()),), generator=g)]
    return parents


def greedy_block_inputs(B, M, seed):
    """Tokens over a vocabulary of 4 and targets that usually name some child's token, so
    that long paths are accepted."""
    g = torch.Generator().manual_seed(seed)
    parents = random_slot_parents(B, M, g)
    tokens = torch.randint(0, 4, (B, M), generator=g)
    targets = torch.randint(0, 4, (B, M), generator=g)
    for b in range(B):
        for s in torch.randperm(M, generator=g).tolist():  # a random child names its parent's target
            p = int(parents[b, s])
            if 0 <= p < s and torch.rand(1, generator=g) < 0.9:
                targets[b, p] = tokens[b, s]
    bad = torch.rand(B, M, generator=g) < 0.02
    tokens[bad] = -1
    return dict(slot_tokens=tokens, slot_parent=parents.to(torch.int32), target_tokens=targets)


def peaked_probs(shape, support, g, normalised):
    """Dyadic rows whose mass sits on `support` tokens (the same tokens for every call with
    the same generator state): over a large vocabulary children still get accepted."""
    *rows, V = shape
    values = random_probs((*rows, support), g, dyadic=True, normalised=normalised)
    where = torch.randint(0, V, (*rows, support), generator=g)
    return torch.zeros(shape).scatter_add_(-1, where, values)


def sampling_block_inputs(B, M, V, seed, draft, normalised=True, support=None):
    """Dyadic target (and draft) rows, spread over the vocabulary or (`support`) peaked on a
    few tokens; children's tokens mostly drawn from the row they are verified against, some
    random, some invalid; dyadic uniforms. (Dyadic: every sum is exact, so any summation order
    gives the CPU op's bits.)"""
    g = torch.Generator().manual_seed(seed)
    parents = random_slot_parents(B, M, g, max_children=3 if draft else None)

    def probs(normalised):
        if support is None:
            return random_probs((B, M, V), g, dyadic=True, normalised=normalised)
        return peaked_probs((B, M, V), support, torch.Generator().manual_seed(seed), normalised)

    target = probs(normalised)
    draft_probs = probs(True) if draft else None
    source = draft_probs if draft else target  # token of slot s drawn from its parent's row
    parent_rows = source[torch.arange(B)[:, None], parents.clamp(0, M - 1)]
    tokens = torch.multinomial(parent_rows.reshape(B * M, V) + 1e-9, 1, generator=g).reshape(B, M)
    random_tokens = torch.randint(0, V, (B, M), generator=g)
    tokens = torch.where(torch.rand(B, M, generator=g) < 0.2, random_tokens, tokens)
    bad = torch.rand(B, M, generator=g) < 0.05
    tokens[bad] = V
    uniforms = torch.randint(0, 1024, (B, M), generator=g).float() / 1024
    return dict(
        slot_tokens=tokens,
        slot_parent=parents,
        target_probs=target,
        draft_probs=draft_probs,
        uniforms=uniforms,
    )
