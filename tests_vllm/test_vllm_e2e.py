"""End to end on the CPU with a real vllm.LLM (Gemma 3 270M, greedy): the TETRIS proposer's
outputs equal vLLM's without speculation, and no step returns more drafts than its budget.

Engine starts are the cost here (about a minute each with enforce_eager): one engine without
speculation (conftest.py), and one in-process TETRIS engine that serves every policy in turn
(switched with `TetrisProposer.configure`); test_vllm_multiprocess.py starts the third.
"""

import gc

import pytest

vllm = pytest.importorskip("vllm")

from conftest import ENGINE, generate  # noqa: E402

from tetris_ext.vllm import gemma3_270m_path, speculative_config  # noqa: E402
from tetris_ext.vllm.config import ProposerOptions  # noqa: E402
from tetris_ext.vllm.proposer import find_proposer  # noqa: E402


@pytest.fixture(scope="module")
def tetris_engine(reference):  # after the reference engine is gone: one engine at a time
    llm = vllm.LLM(
        gemma3_270m_path(), speculative_config=speculative_config("tetris", k=3, extra=2), **ENGINE
    )
    yield llm
    del llm
    gc.collect()


@pytest.mark.parametrize(
    "options",
    [
        ProposerOptions("tetris", 3, 2),
        ProposerOptions("tetris", 2, 1, min_prob=0.2),
        ProposerOptions("goodput", 3, 2),
        ProposerOptions("cost-aware", 3, 2),
        ProposerOptions("sd", 2, 0),
    ],
    ids=["tetris-3-2", "tetris-2-1-min0.2", "goodput", "cost-aware", "sd-2"],
)
def test_greedy_outputs_identical_and_budget_kept(reference, tetris_engine, options):
    proposer = find_proposer(tetris_engine)
    proposer.configure(options)
    proposer.selection.record = True
    assert generate(tetris_engine) == reference
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


def test_paired_benchmarks_builtin_ngram_drafts_in_our_engine(reference, tetris_engine):
    """bench/vllm_paired.py's stand-in for vLLM's built-in n-gram (its NgramProposer behind the
    custom-class call) drafts in our engine, and the outputs stay vLLM's without speculation."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import vllm_paired

    runner = vllm_paired.vllm_e2e.runner_of(tetris_engine)
    ours = runner.drafter
    builtin = vllm_paired.BuiltinNgram(tetris_engine.llm_engine.vllm_config, 3)
    returned: list[int] = []  # drafts per request, every call
    inner = builtin.propose

    def counted(*args, **kwargs):
        drafts = inner(*args, **kwargs)
        returned.extend(len(d) for d in drafts)
        return drafts

    builtin.propose = counted
    runner.drafter = builtin
    try:
        assert generate(tetris_engine) == reference
    finally:
        runner.drafter = ours
    assert sum(returned) > 0 and max(returned) <= 3
