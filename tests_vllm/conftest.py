"""Shared set-up of the vLLM tests: an offline CPU engine environment, the bundled prompts."""

import gc
import json
import os
from importlib import resources

import pytest

# Before vLLM is imported: small KV cache, no hub, the engine core in this process (so that
# tests reach the proposer object), few threads on a shared machine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def bundled_prompts() -> list[dict]:
    text = resources.files("tetris_ext").joinpath("data/prompts.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# The engine settings and prompts every end-to-end test shares: 10 prompts through 4 slots, so
# requests finish and join while others decode.
ENGINE = dict(
    dtype="float32",
    max_model_len=1024,
    max_num_seqs=4,
    enforce_eager=True,
    seed=0,
    enable_prefix_caching=False,
)
MAX_TOKENS = 24
PROMPTS = [p["prompt"] for p in bundled_prompts()[::3]]


def generate(llm) -> list[list[int]]:
    import vllm

    outputs = llm.generate(PROMPTS, vllm.SamplingParams(temperature=0, max_tokens=MAX_TOKENS), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="session")
def reference():
    """Greedy outputs of vLLM without speculation (the engine is gone once they are known)."""
    import vllm

    from tetris_ext.vllm import gemma3_270m_path

    llm = vllm.LLM(gemma3_270m_path(), **ENGINE)
    tokens = generate(llm)
    del llm
    gc.collect()
    return tokens
