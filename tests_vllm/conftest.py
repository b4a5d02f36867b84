"""Shared set-up of the vLLM tests: an offline CPU engine environment, the bundled prompts."""

import json
import os
from importlib import resources

# Before vLLM is imported: small KV cache, no hub, the engine core in this process (so that
# tests reach the proposer object), few threads on a shared machine.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def bundled_prompts() -> list[dict]:
    text = resources.files("tetris_ext").joinpath("data/prompts.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]
