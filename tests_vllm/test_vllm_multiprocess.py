"""The default, multi-process vLLM engine: the proposer runs in the engine-core process, built
there from the class name alone, so the options must travel in it (config.py). Its own module,
so that the in-process engine of test_vllm_e2e.py is gone before this one starts."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from conftest import ENGINE, MAX_TOKENS, PROMPTS  # noqa: E402

SCRIPT = """
import json, sys, vllm
from tetris_ext.vllm import gemma3_270m_path, speculative_config
engine = json.loads(sys.argv[1])
llm = vllm.LLM(gemma3_270m_path(), speculative_config=speculative_config("goodput", k=2, extra=2, min_prob=0.05),
               disable_log_stats=False, **engine)
outputs = llm.generate(json.loads(sys.argv[2]), vllm.SamplingParams(temperature=0, max_tokens=int(sys.argv[3])),
                       use_tqdm=False)
drafts = sum(m.value for m in llm.get_metrics() if m.name == "vllm:spec_decode_num_draft_tokens")
print("RESULT", json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in outputs], "drafts": drafts}))
"""


def test_multiprocess_engine_gets_the_options(reference):
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(ENGINE), json.dumps(PROMPTS), str(MAX_TOKENS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["tokens"] == reference
    assert result["drafts"] > 0  # the engine verified drafts: the proposer ran there
