"""TETRIS draft-token selection for batch speculative decoding, as torch custom ops.

Importing the package loads the compiled library, which registers ``torch.ops.tetris.*``
(CPU, and CUDA when built with it). ``tetris_ext.ops`` has a typed wrapper per op.
"""

from pathlib import Path

import torch


def _load_library() -> Path:
    candidates = sorted(Path(__file__).parent.glob("_C*.so"))
    if not candidates:
        raise ImportError(
            "tetris_ext: the compiled library _C.abi3.so is missing next to "
            f"{__file__}; build it with `make build` or `pip install --no-build-isolation .`"
        )
    try:
        torch.ops.load_library(str(candidates[0]))
    except OSError as error:  # most often: built against another torch than this one
        raise ImportError(
            f"tetris_ext: cannot load {candidates[0].name} into torch {torch.__version__} ({error}); "
            "rebuild it against this torch: `pip install --no-build-isolation --no-deps .`"
        ) from error
    return candidates[0]


def _built_with_cuda(library: Path) -> bool:
    """Whether the library has the CUDA kernels (it exports the answer, csrc/common/device_launch.cpp)."""
    import ctypes

    probe = getattr(ctypes.CDLL(str(library)), "tetris_ext_built_with_cuda", None)
    return bool(probe is not None and probe())


_LIBRARY = _load_library()

from . import ops  # noqa: E402  (registers the fake implementations)
from .ops import (  # noqa: E402
    draft_cumprod,
    select,
    tree_mask,
    tree_mask_packed,
    verify_greedy,
    verify_sampling,
)

HAS_EMULATION = bool(torch._C._jit_get_schemas_for_operator("tetris_emu::select"))
BUILT_WITH_CUDA = _built_with_cuda(_LIBRARY)

__all__ = [
    "draft_cumprod",
    "select",
    "tree_mask",
    "tree_mask_packed",
    "verify_greedy",
    "verify_sampling",
    "HAS_EMULATION",
    "BUILT_WITH_CUDA",
]
