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


def _bench(module: str):
    import importlib
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    return importlib.import_module(module)


def test_e2e_measures_speculation_machinery_in_engines_of_their_own():
    """bench/vllm_e2e.py's "none sync" is a plain engine without async scheduling (what vLLM does to
    an engine with n-gram or custom drafts), "no drafts" rides in our speculative engine."""
    e2e = _bench("vllm_e2e")
    configs = dict(e2e.configurations(quick=False))
    chosen = [
        (n, configs.get(n) or e2e.VARIANTS.get(n))
        for n in ("none", "ngram 3", "none sync", "no drafts", "cost-aware")
    ]
    engines = e2e.engines_for(32, chosen)
    assert ({"spec": None}, ["none"]) in engines
    assert ({"spec": None, "async_scheduling": False}, ["none sync"]) in engines
    ours = [(engine, names) for engine, names in engines if "no drafts" in names]
    assert len(ours) == 1 and ours[0][1] == ["no drafts", "cost-aware"]
    assert ours[0][0]["spec"]["num_speculative_tokens"] == 5 and len(engines) == 4


def test_paired_benchmarks_builtin_ngram_drafts_in_our_engine(reference, tetris_engine):
    """bench/vllm_paired.py's stand-in for vLLM's built-in n-gram (its NgramProposer behind the
    custom-class call) drafts in our engine, and the outputs stay vLLM's without speculation."""
    vllm_paired = _bench("vllm_paired")

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
