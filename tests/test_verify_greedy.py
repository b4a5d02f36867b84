"""verify_greedy against the reference in tests/refs/verify.py and a brute force, worked
examples and argument checks on every backend (the `backend` fixture, tests/conftest.py); the
kernel against the CPU op on random and block-boundary inputs (`kernel_backend`: every output
bit-identical; M around the 32-thread warp and the 256-thread block)."""

import pytest
import torch
from hypothesis import given, settings

import tetris_ext  # noqa: F401  (registers torch.ops.tetris)
from refs.backends import assert_matches_cpu, assert_outputs_match, to_device
from refs.blocks import GREEDY_SLOTS, greedy_block_inputs
from refs.tree_mask import noncontiguous
from refs.verify import verify_greedy_inputs, verify_greedy_ref

verify_greedy = torch.ops.tetris.verify_greedy.default
SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(verify_greedy_inputs())
def test_matches_reference(backend, inputs):
    assert_outputs_match(backend("verify_greedy", inputs), verify_greedy_ref(**inputs))


def matching_paths(slot_tokens, slot_parent, target_tokens, b):
    """Every path from the root along which each slot's token is the target's choice after
    its parent (brute force over all slots as path ends)."""
    M = slot_tokens.shape[1]
    paths = [[]]
    for end in range(1, M):
        path, node, ok = [], end, True
        while node != 0 and ok:
            parent = int(slot_parent[b, node])
            ok = 0 <= parent < node and int(slot_tokens[b, node]) == int(target_tokens[b, parent])
            path.append(node)
            node = parent
        if ok:
            paths.append(path[::-1])
    return paths


@SETTINGS
@given(verify_greedy_inputs(distinct_siblings=True))
def test_accepts_the_longest_matching_path(backend, inputs):
    accepted_slots, num_accepted, out_tokens = (t.cpu() for t in backend("verify_greedy", inputs))
    targets = inputs["target_tokens"].long()
    for b in range(targets.shape[0]):
        longest = max(matching_paths(**inputs, b=b), key=len)  # unique: siblings differ
        n = int(num_accepted[b])
        assert accepted_slots[b, :n].tolist() == longest
        # the output is the target's own greedy continuation: its choice after the root and
        # after every accepted slot
        assert out_tokens[b, : n + 1].tolist() == targets[b, [0] + longest].tolist()
        assert torch.all(accepted_slots[b, n:] == -1) and torch.all(out_tokens[b, n + 1 :] == -1)


def test_worked_example(backend):
    # root -> slot 1 (token 5) -> slot 3 (token 7); root -> slot 2 (token 6) -> slot 4 (token 8)
    slot_tokens = torch.tensor([[9, 5, 6, 7, 8]])
    slot_parent = torch.tensor([[-1, 0, 0, 1, 2]])
    target_tokens = torch.tensor([[6, 7, 8, 1, 2]])  # after the root the target says 6 ...
    accepted_slots, num_accepted, out_tokens = backend.run(
        "verify_greedy", slot_tokens, slot_parent, target_tokens
    )
    assert num_accepted.tolist() == [2]
    assert accepted_slots.tolist() == [[2, 4, -1, -1, -1]]
    assert out_tokens.tolist() == [[6, 8, 2, -1, -1]]  # accepted 6, 8 and the bonus token 2


def test_first_matching_sibling_wins(backend):
    slot_tokens = torch.tensor([[0, 3, 3, 4]])
    slot_parent = torch.tensor([[-1, 0, 0, 2]])  # slot 2 has a child, slot 1 has none
    target_tokens = torch.tensor([[3, 4, 4, 0]])
    accepted_slots, num_accepted, _ = backend.run("verify_greedy", slot_tokens, slot_parent, target_tokens)
    assert num_accepted.tolist() == [1] and accepted_slots[0, 0] == 1


def test_invalid_parents_are_never_accepted(backend):
    M = 6
    slot_tokens = torch.full((1, M), 1)
    target_tokens = torch.full((1, M), 1)
    for bad in [-1, -7, 3, 5, 6, 2**40]:  # slot 3: itself, a later slot, beyond M, ...
        slot_parent = torch.tensor([[-1, 0, 1, bad, -1, -1]])
        accepted_slots, num_accepted, out_tokens = backend.run(
            "verify_greedy", slot_tokens, slot_parent, target_tokens
        )
        assert accepted_slots[0].tolist() == [1, 2, -1, -1, -1, -1]


@pytest.mark.parametrize("B", [0, 3])
def test_single_slot_and_empty_batch(backend, B):
    slot_tokens = torch.zeros(B, 1, dtype=torch.int32)
    target_tokens = torch.arange(B).reshape(B, 1)
    accepted_slots, num_accepted, out_tokens = backend.run(
        "verify_greedy", slot_tokens, torch.full((B, 1), -1), target_tokens
    )
    assert accepted_slots.shape == (B, 1) and torch.all(accepted_slots == -1)
    assert num_accepted.dtype == torch.int32 and torch.all(num_accepted == 0)
    assert out_tokens.tolist() == target_tokens.tolist()  # only the bonus token


@settings(max_examples=50, deadline=None)
@given(verify_greedy_inputs())
def test_noncontiguous_inputs(backend, inputs):
    strided = {k: noncontiguous(v) for k, v in inputs.items()}
    assert_outputs_match(backend("verify_greedy", strided), verify_greedy_ref(**inputs))


def test_deterministic_and_batch_independent(backend):
    g = torch.Generator().manual_seed(0)
    B, M = 400, 17
    slot_parent = torch.stack([torch.randint(0, max(s, 1), (B,), generator=g) for s in range(M)], 1)
    slot_parent[:, 0] = -1
    slot_tokens = torch.randint(0, 3, (B, M), generator=g)
    target_tokens = torch.randint(0, 3, (B, M), generator=g)
    first = backend.run("verify_greedy", slot_tokens, slot_parent, target_tokens)
    assert_outputs_match(backend.run("verify_greedy", slot_tokens, slot_parent, target_tokens), first)
    assert int(first[1].max()) >= 3  # the instance does walk several levels
    for b in range(0, B, 41):
        row = backend.run(
            "verify_greedy", slot_tokens[b : b + 1], slot_parent[b : b + 1], target_tokens[b : b + 1]
        )
        assert_outputs_match(row, tuple(t[b : b + 1] for t in first))


def test_opcheck():
    g = torch.Generator().manual_seed(2)
    slot_parent = torch.tensor([[-1, 0, 0, 1, 3], [-1, 0, 1, 2, -1]], dtype=torch.int32)
    slot_tokens = torch.randint(0, 2, (2, 5), generator=g)
    target_tokens = torch.randint(0, 2, (2, 5), generator=g, dtype=torch.int32)
    torch.library.opcheck(verify_greedy, (slot_tokens, slot_parent, target_tokens))


# -- argument checks (a tensor on another device: tests/test_kernel_backends.py) ---------------

GOOD = dict(
    slot_tokens=torch.zeros(2, 3, dtype=torch.long),
    slot_parent=torch.tensor([[-1, 0, 1], [-1, 0, 0]]),
    target_tokens=torch.zeros(2, 3, dtype=torch.int32),
)
BAD = [
    ("slot_tokens", torch.zeros(2, 3), TypeError, "expected dtype Int or Long"),
    ("slot_tokens", torch.zeros(6, dtype=torch.long), ValueError, "expected a 2-D tensor"),
    ("slot_tokens", torch.zeros(2, 0, dtype=torch.long), ValueError, "expected M >= 1 slots"),
    ("slot_parent", torch.zeros(2, 3, dtype=torch.uint8), TypeError, "expected dtype Int or Long"),
    ("slot_parent", torch.zeros(2, 3, 1, dtype=torch.long), ValueError, "expected a 2-D tensor"),
    ("slot_parent", torch.zeros(1, 3, dtype=torch.long), ValueError, r"expected size 2 \(B\)"),
    ("slot_parent", torch.zeros(2, 4, dtype=torch.long), ValueError, r"expected size 3 \(M\)"),
    ("target_tokens", torch.zeros(2, 3, dtype=torch.bool), TypeError, "expected dtype Int or Long"),
    ("target_tokens", torch.zeros(2, dtype=torch.long), ValueError, "expected a 2-D tensor"),
    ("target_tokens", torch.zeros(3, 3, dtype=torch.long), ValueError, r"expected size 2 \(B\)"),
    ("target_tokens", torch.zeros(2, 2, dtype=torch.long), ValueError, r"expected size 3 \(M\)"),
]


@pytest.mark.parametrize("arg,value,error,message", BAD)
def test_bad_arguments(backend, arg, value, error, message):
    args = to_device({**GOOD, arg: value}, backend.device)
    # The backend's kernel itself, which checks its arguments (not the fake implementation).
    with pytest.raises(error, match=f"verify_greedy: argument '{arg}': {message}"):
        backend.kernel("verify_greedy")(**args)


# -- the kernel against the CPU op --------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(verify_greedy_inputs())
def test_kernel_matches_cpu(kernel_backend, inputs):
    assert_matches_cpu(kernel_backend, "verify_greedy", inputs)
    assert_matches_cpu(kernel_backend, "verify_greedy", {k: noncontiguous(v) for k, v in inputs.items()})


@pytest.mark.parametrize("M", GREEDY_SLOTS)
def test_kernel_block_boundaries(kernel_backend, M):
    assert_matches_cpu(kernel_backend, "verify_greedy", greedy_block_inputs(3, M, seed=M))


@pytest.mark.parametrize("B", [33, 1025])
def test_kernel_many_requests(kernel_backend, B):
    assert_matches_cpu(kernel_backend, "verify_greedy", greedy_block_inputs(B, 9, seed=B))


def test_kernel_first_matching_child_among_many(kernel_backend):
    """Stars of 1024 children, several with the target's token: the first one is taken (every
    thread scans several slots; the block-wide min must see each thread's first match)."""
    g = torch.Generator().manual_seed(9)
    B, M = 3, 1025
    tokens = torch.randint(0, 3, (B, M), generator=g)
    targets = torch.randint(0, 3, (B, M), generator=g)
    parents = torch.zeros(B, M, dtype=torch.int64)
    parents[:, 0] = -1
    assert_matches_cpu(
        kernel_backend, "verify_greedy", dict(slot_tokens=tokens, slot_parent=parents, target_tokens=targets)
    )
    parents[:, 1:] = torch.arange(M - 1)  # a chain: the walk goes through many strides
    tokens[:, 1:] = targets[:, :-1]
    tokens[:, 900] = -1
    assert_matches_cpu(
        kernel_backend, "verify_greedy", dict(slot_tokens=tokens, slot_parent=parents, target_tokens=targets)
    )


def test_kernel_huge_tokens_and_mixed_dtypes(kernel_backend):
    tokens = torch.tensor([[0, 2**40, 5, 5], [0, -(2**40), 5, 7]])
    parents = torch.tensor([[-1, 0, 0, 2], [-1, 0, 1, 0]], dtype=torch.int32)
    targets = torch.tensor([[5, 0, 5, 9], [7, 5, 0, 1]], dtype=torch.int32)
    assert_matches_cpu(
        kernel_backend, "verify_greedy", dict(slot_tokens=tokens, slot_parent=parents, target_tokens=targets)
    )


def test_kernel_outputs_are_fully_written(kernel_backend, poisoned_empty):
    assert_matches_cpu(kernel_backend, "verify_greedy", greedy_block_inputs(5, 40, seed=1))


def test_kernel_single_slot_and_empty_batch(kernel_backend):
    for B in [0, 3]:
        inputs = dict(
            slot_tokens=torch.zeros(B, 1, dtype=torch.long),
            slot_parent=torch.full((B, 1), -1),
            target_tokens=torch.ones(B, 1, dtype=torch.long),
        )
        assert_matches_cpu(kernel_backend, "verify_greedy", inputs)


# 4096 requests: too many for the emulator.
def test_cuda_many_requests(cuda):
    assert_matches_cpu(cuda, "verify_greedy", greedy_block_inputs(4096, 9, seed=4096))


def test_emulated_reverse_schedule(emulated, monkeypatch):
    """The kernel does not depend on the order threads run between barriers (no races)."""
    monkeypatch.setenv("TETRIS_EMU_SCHEDULE", "reverse")
    assert_matches_cpu(emulated, "verify_greedy", greedy_block_inputs(3, 300, seed=2))
