"""Same values, other strides: every op accepts any layout (transposed, strided, offset views)
and gives the result of the contiguous tensors."""

from __future__ import annotations

import torch

LAYOUTS = ("contiguous", "transposed", "strided")


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor equal to ``t`` whose memory layout is ``layout``.

    transposed: the first two dimensions swapped in memory (column-major for matrices);
    strided: every other element of a twice-as-long last dimension (the others poison).
    """
    if layout == "contiguous" or t.dim() == 0:
        return t.contiguous()
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    # The elements skipped over are poison, so that reading them shows in the result.
    poison = float("nan") if t.is_floating_point() else 1_000_003
    big = torch.full((*t.shape[:-1], 2 * t.shape[-1]), poison, dtype=t.dtype)
    big[..., ::2] = t
    return big[..., ::2]
