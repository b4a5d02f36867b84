"""Argument checks on the Python side: the fakes' twin of csrc/ops/*/checks.h and csrc/common/checks.h.

The fake (meta) implementations run these, so that FakeTensorMode, torch.compile and calls
that mix a meta tensor with real ones reject exactly what the real ops reject, with the same
exception type and message (tests/adversarial/ compares the two for generated inputs). The
wrappers in ops.py run only the cheap part: Python scalars (which the dispatcher would
otherwise reject with messages that do not name the argument) and layouts (sparse and nested
tensors never reach the C++ checks).
"""

from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

# csrc/common/checks.h: kMaxItems and kMaxOutputBytes.
MAX_ITEMS = 2**31 - 1
MAX_OUTPUT_BYTES = 2**47
# The smallest double that rounds to +inf in float32 (2^128 - 2^103).
FLOAT32_OVERFLOW = 3.4028235677973366e38
INT64_MAX = 2**63 - 1

# c10::toString of each dtype (the C++ messages' spelling); others: "float8_e5m2" -> "Float8_e5m2".
_DTYPE_NAMES = {
    torch.float32: "Float",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.float64: "Double",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.bool: "Bool",
    torch.uint16: "UInt16",
    torch.uint32: "UInt32",
    torch.uint64: "UInt64",
    torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}
_INDEX = (torch.int32, torch.int64)


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def _fail(op: str, name: str, expected: str, error=ValueError):
    raise error(f"{op}: argument '{name}': expected {expected}")


def check_layout(op: str, name: str, t: Tensor | None) -> None:
    """A dense tensor (sparse, CSR and nested tensors have no implementation)."""
    if t is not None and (t.layout != torch.strided or t.is_nested):
        layout = "nested" if t.is_nested else str(t.layout)
        _fail(op, name, f"a dense (strided) tensor, got layout {layout}", TypeError)


def check_dtype(op: str, name: str, t: Tensor, allowed) -> None:
    if t.dtype not in allowed:
        names = " or ".join(_DTYPE_NAMES[dt] for dt in allowed)
        plain = str(t.dtype).removeprefix("torch.")
        got = _DTYPE_NAMES.get(t.dtype) or plain[:1].upper() + plain[1:]
        _fail(op, name, f"dtype {names}, got {got}", TypeError)


def check_dim(op: str, name: str, t: Tensor, dim: int, layout: str) -> None:
    if t.dim() != dim:
        _fail(op, name, f"a {dim}-D tensor {layout}, got shape {_shape(t)}")


def check_size(op: str, name: str, t: Tensor, dim: int, expected: int, what: str) -> None:
    if t.shape[dim] != expected:
        _fail(op, name, f"size {expected} ({what}) at dim {dim}, got shape {_shape(t)}")


def check_same_device(op: str, name: str, t: Tensor, reference: Tensor, reference_name: str) -> None:
    if t.device != reference.device:
        _fail(op, name, f"a tensor on {reference.device} (the device of '{reference_name}'), got {t.device}")


def check_item_count(op: str, name: str, t: Tensor, count: int, what: str) -> None:
    if count > MAX_ITEMS:
        _fail(op, name, f"{what} <= 2^31 - 1, got shape {_shape(t)}")


def check_output_bytes(op: str, name: str, t: Tensor, nbytes: int, output: str) -> None:
    if nbytes > MAX_OUTPUT_BYTES:
        raise ValueError(
            f"{op}: argument '{name}': the output '{output}' would take {nbytes} bytes, "
            f"more than 2^47; got shape {_shape(t)}"
        )


def check_index_matrix(
    op: str, name: str, t: Tensor, B: int, N: int, reference: Tensor, reference_name: str
) -> None:
    check_dtype(op, name, t, _INDEX)
    check_dim(op, name, t, 2, "[B, N]")
    check_size(op, name, t, 0, B, "B")
    check_size(op, name, t, 1, N, "N")
    check_same_device(op, name, t, reference, reference_name)


# --- Python scalars (also run by the wrappers, before dispatch) ----------------------------


def as_float(op: str, name: str, value, expected: str) -> float:
    """`value` as a double, or the op's message for it (strings, ints beyond a double)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__float__"):
        _fail(op, name, f"{expected}, got {type(value).__name__}", TypeError)
    try:
        return float(value)
    except OverflowError:
        _fail(op, name, f"{expected}, got an integer too large for a double")


def check_temperature(op: str, value) -> float:
    expected = "a finite number > 0 whose reciprocal is a finite float32 (about 2.94e-39 <= temperature)"
    temperature = as_float(op, "temperature", value, expected)
    if not (math.isfinite(temperature) and temperature > 0 and 1.0 / temperature < FLOAT32_OVERFLOW):
        _fail(op, "temperature", f"{expected}, got {temperature:g}")
    return temperature


def check_budget(op: str, value) -> int:
    try:
        budget = operator.index(value)
    except TypeError:
        _fail(op, "budget", f"an integer >= 0, got {type(value).__name__}", TypeError)
    if budget < 0:
        _fail(op, "budget", f"an integer >= 0, got {budget}")
    if budget > INT64_MAX:
        _fail(op, "budget", f"an integer >= 0 that fits int64 (<= 2^63 - 1), got {budget}")
    return budget


def check_min_score(op: str, value) -> float | None:
    if value is None:
        return None
    min_score = as_float(op, "min_score", value, "a number (not NaN) or None")
    if math.isnan(min_score):
        _fail(op, "min_score", "a number (not NaN) or None, got nan")
    return min_score


def check_layouts(op: str, **tensors) -> None:
    for name, t in tensors.items():
        check_layout(op, name, t)


# --- Every op (the order of csrc/ops/*/checks.h, so that the first failure is the same) ----------


def check_draft_cumprod(logits, tokens, parents, temperature) -> None:
    op = "draft_cumprod"
    check_layouts(op, logits=logits, tokens=tokens, parents=parents)
    check_dtype(op, "logits", logits, (torch.float32, torch.float16, torch.bfloat16))
    check_dim(op, "logits", logits, 3, "[B, N, V]")
    B, N = logits.shape[0], logits.shape[1]
    check_item_count(op, "logits", logits, B * N, "B * N rows")
    check_index_matrix(op, "tokens", tokens, B, N, logits, "logits")
    if parents is not None:
        check_index_matrix(op, "parents", parents, B, N, logits, "logits")
    check_temperature(op, temperature)


def check_select(scores, budget, parents, max_per_request, min_score) -> None:
    op = "select"
    check_layouts(op, scores=scores, parents=parents, max_per_request=max_per_request)
    check_dtype(op, "scores", scores, (torch.float32,))
    check_dim(op, "scores", scores, 2, "[B, N]")
    B, N = scores.shape
    check_item_count(op, "scores", scores, B * N, "B * N candidates")
    check_budget(op, budget)
    if parents is not None:
        check_index_matrix(op, "parents", parents, B, N, scores, "scores")
    if max_per_request is not None:
        check_dtype(op, "max_per_request", max_per_request, _INDEX)
        check_dim(op, "max_per_request", max_per_request, 1, "[B]")
        check_size(op, "max_per_request", max_per_request, 0, B, "B")
        check_same_device(op, "max_per_request", max_per_request, scores, "scores")
    check_min_score(op, min_score)


def check_select_prefixes(probs, rows, lengths, budget) -> None:
    """csrc/ops/select_prefixes/checks.h, but for memory overlap of `lengths` (fakes have no memory)."""
    op = "select_prefixes"
    check_layouts(op, probs=probs, rows=rows, lengths=lengths)
    check_dtype(op, "probs", probs, (torch.float32,))
    check_dim(op, "probs", probs, 2, "[R, S]")
    check_dtype(op, "rows", rows, _INDEX)
    check_dim(op, "rows", rows, 1, "[B]")
    check_same_device(op, "rows", rows, probs, "probs")
    check_dtype(op, "lengths", lengths, _INDEX)
    check_dim(op, "lengths", lengths, 1, "[B]")
    check_size(op, "lengths", lengths, 0, rows.shape[0], "B, the size of 'rows'")
    check_same_device(op, "lengths", lengths, probs, "probs")
    check_budget(op, budget)
    if rows.shape[0] * probs.shape[1] > MAX_ITEMS:
        _fail(op, "probs", f"B * S < 2^31 positions, got B = {rows.shape[0]} and shape {_shape(probs)}")


def check_tree_mask(op: str, selected, parents, prefix_lens) -> None:
    """tree_mask and tree_mask_packed (op names which)."""
    check_layouts(op, selected=selected, parents=parents, prefix_lens=prefix_lens)
    check_dtype(op, "selected", selected, (torch.bool,))
    check_dim(op, "selected", selected, 2, "[B, N]")
    B, N = selected.shape
    M = N + 1
    check_item_count(op, "selected", selected, B * M, "B * (N + 1) slots")
    packed = op == "tree_mask_packed"
    check_output_bytes(
        op, "selected", selected, B * M * ((M + 7) // 8 if packed else M), "packed_mask" if packed else "mask"
    )
    if parents is not None:
        check_index_matrix(op, "parents", parents, B, N, selected, "selected")
    check_dtype(op, "prefix_lens", prefix_lens, _INDEX)
    check_dim(op, "prefix_lens", prefix_lens, 1, "[B]")
    check_size(op, "prefix_lens", prefix_lens, 0, B, "B")
    check_same_device(op, "prefix_lens", prefix_lens, selected, "selected")


def _check_slot_shape(op, name, t, B, M, reference, reference_name) -> None:
    check_dim(op, name, t, 2, "[B, M]")
    check_size(op, name, t, 0, B, "B")
    check_size(op, name, t, 1, M, "M")
    check_same_device(op, name, t, reference, reference_name)


def _check_verify_slots(op: str, slot_tokens, slot_parent) -> None:
    check_dtype(op, "slot_tokens", slot_tokens, _INDEX)
    check_dim(op, "slot_tokens", slot_tokens, 2, "[B, M]")
    if slot_tokens.shape[1] < 1:
        _fail(op, "slot_tokens", f"M >= 1 slots (slot 0 is the root), got shape {_shape(slot_tokens)}")
    B, M = slot_tokens.shape
    check_item_count(op, "slot_tokens", slot_tokens, B * M, "B * M slots")
    check_dtype(op, "slot_parent", slot_parent, _INDEX)
    _check_slot_shape(op, "slot_parent", slot_parent, B, M, slot_tokens, "slot_tokens")


def check_verify_greedy(slot_tokens, slot_parent, target_tokens) -> None:
    op = "verify_greedy"
    check_layouts(op, slot_tokens=slot_tokens, slot_parent=slot_parent, target_tokens=target_tokens)
    _check_verify_slots(op, slot_tokens, slot_parent)
    check_dtype(op, "target_tokens", target_tokens, _INDEX)
    B, M = slot_tokens.shape
    _check_slot_shape(op, "target_tokens", target_tokens, B, M, slot_tokens, "slot_tokens")


def _check_probs(op: str, name: str, t: Tensor, B: int, M: int) -> None:
    check_dtype(op, name, t, (torch.float32,))
    check_dim(op, name, t, 3, "[B, M, V]")
    check_size(op, name, t, 0, B, "B")
    check_size(op, name, t, 1, M, "M")


def check_verify_sampling(slot_tokens, slot_parent, target_probs, draft_probs, uniforms) -> None:
    op = "verify_sampling"
    check_layouts(
        op,
        slot_tokens=slot_tokens,
        slot_parent=slot_parent,
        target_probs=target_probs,
        draft_probs=draft_probs,
        uniforms=uniforms,
    )
    _check_verify_slots(op, slot_tokens, slot_parent)
    B, M = slot_tokens.shape
    _check_probs(op, "target_probs", target_probs, B, M)
    if target_probs.shape[2] < 1:
        _fail(op, "target_probs", f"a vocabulary of V >= 1 tokens, got shape {_shape(target_probs)}")
    check_same_device(op, "target_probs", target_probs, slot_tokens, "slot_tokens")
    if draft_probs is not None:
        _check_probs(op, "draft_probs", draft_probs, B, M)
        check_size(op, "draft_probs", draft_probs, 2, target_probs.shape[2], "V, as target_probs")
        check_same_device(op, "draft_probs", draft_probs, slot_tokens, "slot_tokens")
    check_dtype(op, "uniforms", uniforms, (torch.float32,))
    _check_slot_shape(op, "uniforms", uniforms, B, M, slot_tokens, "slot_tokens")
