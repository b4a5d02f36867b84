"""End to end on the CPU with a real vllm.LLM (Gemma 3 270M, greedy): the TETRIS proposer's
outputs equal vLLM's without speculation, and no step returns more drafts than its budget.

Engine starts are the cost here (about a minute each with enforce_eager): one engine without
speculation, one in-process TETRIS engine that serves every policy in turn (switched with
`TetrisProposer.configure`), and one default multi-process engine (the options travel to the
engine-core process in the class name).
"""

import gc
import os
import subprocess
import sys

import pytest

vllm = pytest.importorskip("vllm")

from conftest import bundled_prompts  # noqa: E402
from tetris_ext.vllm import gemma3_270m_path, speculative_config  # noqa: E402
from tetris_ext.vllm.config import ProposerOptions  # noqa: E402
from tetris_ext.vllm.proposer import find_proposer  # noqa: E402

ENGINE = dict(dtype="float32", max_model_len=1024, max_num_seqs=4, enforce_eager=True, seed=0,
              enable_prefix_caching=False)
MAX_TOKENS = 24
# 10 prompts through 4 slots: requests finish and join while others decode.
PROMPTS = [p["prompt"] for p in bundled_prompts()[::3]]


def _generate(llm) -> list[list[int]]:
    outputs = llm.generate(PROMPTS, vllm.SamplingParams(temperature=0, max_tokens=MAX_TOKENS), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="module")
def reference():
    llm = vllm.LLM(gemma3_270m_path(), **ENGINE)
    tokens = _generate(llm)
    del llm
    gc.collect()
    return tokens


@pytest.fixture(scope="module")
def tetris_engine(reference):  # after the reference engine is gone: one engine at a time
    llm = vllm.LLM(gemma3_270m_path(), speculative_config=speculative_config("tetris", k=3, extra=2), **ENGINE)
    yield llm
    del llm
    gc.collect()


@pytest.mark.parametrize("options", [ProposerOptions("tetris", 3, 2), ProposerOptions("tetris", 2, 1, min_prob=0.2),
                                     ProposerOptions("goodput", 3, 2), ProposerOptions("sd", 2, 0)],
                         ids=["tetris-3-2", "tetris-2-1-min0.2", "goodput", "sd-2"])
def test_greedy_outputs_identical_and_budget_kept(reference, tetris_engine, options):
    proposer = find_proposer(tetris_engine)
    proposer.configure(options)
    proposer.selection.record = True
    assert _generate(tetris_engine) == reference
    records, totals = proposer.selection.records, proposer.selection.totals
    assert records and totals["verified"] > 0 and totals["accepted"] > 0
    for record in records:
        assert sum(record.returned) <= record.budget
        assert max(record.returned) <= options.max_drafts
        if options.policy == "sd":
            assert max(record.returned) <= options.k
    # State is released the first step a request is absent: after the run only requests of
    # the last step may remain, never the 10 the run served.
    assert set(proposer.selection.requests) <= set(proposer.selection.last_req_ids)
    assert len(proposer.selection.requests) <= ENGINE["max_num_seqs"]


def test_too_many_drafts_for_the_engine_raise(tetris_engine):
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        find_proposer(tetris_engine).configure(ProposerOptions("tetris", 4, 2))


MULTIPROCESS = """
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
    """The default engine runs the proposer in another process: options reach it in the class name."""
    import json

    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1")
    done = subprocess.run([sys.executable, "-c", MULTIPROCESS, json.dumps(ENGINE), json.dumps(PROMPTS), str(MAX_TOKENS)],
                          env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["tokens"] == reference
    assert result["drafts"] > 0  # the engine verified drafts: the proposer ran there
