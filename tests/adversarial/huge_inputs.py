"""Calls whose logical shapes (stride-0 expansions: no memory behind them) exceed the ops' size
rules (docs/ops.md), and the argument each must be rejected on. Imported by child processes
(tests/adversarial/subprocess_limits.py), so it depends on torch only."""

import torch


def _expanded(value, dtype, *shape):
    return torch.tensor(value, dtype=dtype).reshape([1] * len(shape)).expand(*shape)


HUGE_CALLS = {
    # B * N = 2^31 + 2^16 candidates (the CPU op used to allocate them all).
    "select": ("scores", lambda: dict(scores=_expanded(0.0, torch.float32, 2**16, 2**15 + 1), budget=3)),
    "draft_cumprod": (
        "logits",
        lambda: dict(
            logits=_expanded(0.0, torch.float32, 2**16, 2**15 + 1, 1),
            tokens=_expanded(0, torch.long, 2**16, 2**15 + 1),
        ),
    ),
    # B * (N + 1) = 2^31 - 1 slots pass, but the packed mask would take 576 PB.
    "tree_mask_packed": (
        "selected",
        lambda: dict(
            selected=_expanded(True, torch.bool, 1, 2**31 - 2),
            parents=None,
            prefix_lens=torch.zeros(1, dtype=torch.long),
        ),
    ),
    "tree_mask": (
        "selected",
        lambda: dict(
            selected=_expanded(True, torch.bool, 1, 2**24),
            parents=None,
            prefix_lens=torch.zeros(1, dtype=torch.long),
        ),
    ),
    "verify_greedy": (
        "slot_tokens",
        lambda: {
            k: _expanded(0, torch.long, 2**16, 2**15 + 1)
            for k in ("slot_tokens", "slot_parent", "target_tokens")
        },
    ),
    "verify_sampling": (
        "slot_tokens",
        lambda: dict(
            slot_tokens=_expanded(0, torch.long, 2**16, 2**15 + 1),
            slot_parent=_expanded(0, torch.long, 2**16, 2**15 + 1),
            target_probs=_expanded(1.0, torch.float32, 2**16, 2**15 + 1, 1),
            draft_probs=None,
            uniforms=_expanded(0.5, torch.float32, 2**16, 2**15 + 1),
        ),
    ),
}

# Checks, for every op of HUGE_CALLS, that every namespace built rejects the call with one and
# the same ValueError naming the argument; prints the messages. Format with folder= (this
# file's folder).
CHILD_SCRIPT = """
import sys, torch, tetris_ext
sys.path.insert(0, {folder!r})
from huge_inputs import HUGE_CALLS
namespaces = ["tetris"] + (["tetris_emu"] if tetris_ext.HAS_EMULATION else [])
problems = []
for name, (arg, make) in HUGE_CALLS.items():
    messages = set()
    for ns in namespaces:
        try:
            getattr(getattr(torch.ops, ns), name)(**make())
        except ValueError as error:
            messages.add(str(error).splitlines()[0])
        else:
            problems.append(f"{{ns}}.{{name}} accepted the call")
    print(name, messages)
    if len(messages) != 1 or f"argument '{{arg}}'" not in next(iter(messages)):
        problems.append(f"{{name}}: {{messages}}")
assert not problems, problems
"""
