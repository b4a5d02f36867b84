"""The drop-in for vLLM's adaptive verification (tetris_ext.vllm.dropin) against vLLM itself.

Run in the vLLM environment (vllm-cpu 0.32.0, torch 2.13, tetris_ext built against it):
  - on random inputs, the replacement admits exactly what vLLM's own eager
    `_assign_draft_token_budget` admits when no survival probabilities tie, and with ties the
    same number of drafts with the same total survival (only which equal slots win differs);
  - register() with TETRIS_VLLM_DROPIN=1 replaces `_assign_draft_token_budget_compiled`, without
    the flag it changes nothing, and on an unknown vLLM (version, signature, caller) it changes
    nothing and logs one line;
  - the `tetris_ext` entry point of `vllm.general_plugins` is installed and a real CPU
    `vllm.LLM` (a tiny random Llama built here, offline) runs it (needs tetris_ext
    pip-installed in the environment; skipped otherwise).
"""

from __future__ import annotations

import gc
import importlib.metadata
import inspect
import logging
import os
import subprocess
import sys

# Before vLLM is imported: offline, small KV cache, the engine core in this process (so that the
# plugin's effect is visible here), few threads on a shared machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

vllm = pytest.importorskip("vllm")

from vllm.v1.worker.gpu.spec_decode import adaptive_verification as av  # noqa: E402

from tetris_ext.vllm import dropin  # noqa: E402

LINE_START = "tetris_ext: TETRIS_VLLM_DROPIN=1 ignored, vLLM's adaptive verification left unchanged: "


def random_case(g, B, S, ties):
    """vLLM's inputs: confidences [max_num_reqs, S], idx_mapping, scheduled draft counts, and a
    budget below their sum (the only case in which vLLM calls the step)."""
    max_num_reqs = B + 5
    if ties:
        values = torch.tensor([1.0, 0.5, 0.25, 0.75])
        confidences = values[torch.randint(len(values), (max_num_reqs, S), generator=g)]
    else:
        confidences = torch.rand(max_num_reqs, S, generator=g)
    idx_mapping = torch.randperm(max_num_reqs, generator=g)[:B].int()
    scheduled = torch.randint(0, S + 1, (B,), generator=g, dtype=torch.int32)
    scheduled[0] = max(int(scheduled[0]), 1)  # at least one draft, so that budget < sum exists
    budget = int(torch.randint(0, int(scheduled.sum()), (1,), generator=g))
    return confidences, idx_mapping, scheduled, budget


def admitted_survival(confidences, idx_mapping, counts, S):
    """The survival probabilities of the admitted slots, sorted (cumprod as vLLM computes it)."""
    survival = confidences[idx_mapping.long()].cumprod(dim=1)
    admitted = torch.arange(S)[None, :] < counts[:, None].long()
    return sorted(survival[admitted].tolist())


def both(case, S):
    confidences, idx_mapping, scheduled, budget = case
    theirs, ours = scheduled.clone(), scheduled.clone()
    av._assign_draft_token_budget(confidences, idx_mapping, theirs, budget, S)
    dropin.assign_draft_token_budget(confidences, idx_mapping, ours, budget, S)
    return theirs, ours


@pytest.mark.parametrize("B, S", [(1, 1), (4, 3), (8, 8), (64, 8), (256, 8), (100, 16)])
def test_identical_counts_without_ties(B, S):
    g = torch.Generator().manual_seed(B * 31 + S)
    for _ in range(100):
        theirs, ours = both(random_case(g, B, S, ties=False), S)
        assert ours.dtype == theirs.dtype == torch.int32
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("B, S", [(4, 3), (8, 8), (64, 8), (256, 8)])
def test_with_ties_same_number_and_total_survival(B, S):
    g = torch.Generator().manual_seed(B + S)
    differed = 0
    for _ in range(100):
        case = random_case(g, B, S, ties=True)
        theirs, ours = both(case, S)
        confidences, idx_mapping, scheduled, budget = case
        assert int(ours.sum()) == int(theirs.sum()) == budget
        assert bool((ours <= scheduled).all())
        assert admitted_survival(confidences, idx_mapping, ours, S) == admitted_survival(
            confidences, idx_mapping, theirs, S
        )
        differed += not torch.equal(ours, theirs)
    print(f"B={B}, S={S}: the counts differed (equal slots chosen otherwise) in {differed} of 100 cases")


@pytest.fixture
def restore_vllm(monkeypatch):
    """Undo whatever register() does to vLLM's module at the end of the test."""
    monkeypatch.setattr(av, dropin.REPLACED_NAME, getattr(av, dropin.REPLACED_NAME))
    return monkeypatch


def test_register_with_the_flag_replaces_the_budget_step(restore_vllm, caplog):
    restore_vllm.setenv(dropin.ENV_FLAG, "1")
    assert dropin.why_not_replaceable() is None
    with caplog.at_level(logging.WARNING):
        dropin.register()
        dropin.register()  # vLLM may load plugins more than once
    assert getattr(av, dropin.REPLACED_NAME) is dropin.assign_draft_token_budget
    assert caplog.records == []


@pytest.mark.parametrize("value", [None, "0", "true"])
def test_register_without_the_flag_changes_nothing(restore_vllm, caplog, value):
    if value is None:
        restore_vllm.delenv(dropin.ENV_FLAG, raising=False)
    else:
        restore_vllm.setenv(dropin.ENV_FLAG, value)
    original = getattr(av, dropin.REPLACED_NAME)
    with caplog.at_level(logging.INFO):
        dropin.register()
    assert getattr(av, dropin.REPLACED_NAME) is original
    assert caplog.records == []


def different_signature(confidence_probs, idx_mapping, capacities, draft_budget):
    raise AssertionError("never called")


@pytest.mark.parametrize(
    "spoil, reason",
    [
        (
            lambda mp: mp.setattr(av, dropin.EAGER_NAME, different_signature),
            f"{dropin.MODULE}._assign_draft_token_budget has parameters "
            "('confidence_probs', 'idx_mapping', 'capacities', 'draft_budget'), expected "
            "('confidence_probs', 'idx_mapping', 'capacities', 'draft_budget', 'num_steps')",
        ),
        (
            lambda mp: mp.setattr(av, dropin.REPLACED_NAME, different_signature),
            f"{dropin.MODULE}._assign_draft_token_budget_compiled has parameters",
        ),
        (
            lambda mp: mp.delattr(av, dropin.EAGER_NAME),
            f"{dropin.MODULE}._assign_draft_token_budget is missing",
        ),
        (
            lambda mp: mp.setattr(dropin, "vllm_version", lambda: "0.33.0"),
            "vLLM 0.33.0 is not a version it was checked with (0.32.0)",
        ),
        (
            lambda mp: mp.setattr(av.AdaptiveVerificationManager, "reallocate_drafts", lambda self, *a: None),
            "AdaptiveVerificationManager.reallocate_drafts no longer looks up _assign_draft_token_budget_compiled",
        ),
    ],
    ids=["eager-signature", "compiled-signature", "missing", "version", "caller"],
)
def test_unknown_vllm_is_left_alone_with_one_line(restore_vllm, caplog, spoil, reason):
    restore_vllm.setenv(dropin.ENV_FLAG, "1")
    spoil(restore_vllm)
    original = getattr(av, dropin.REPLACED_NAME, None)
    with caplog.at_level(logging.INFO):
        dropin.register()
    assert getattr(av, dropin.REPLACED_NAME, None) is original
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING
    assert caplog.records[0].getMessage().startswith(LINE_START + reason)


def test_importing_the_dropin_does_not_import_vllm():
    code = "import sys, tetris_ext.vllm.dropin; sys.exit('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_checked_signature_is_vllms():
    # What the drop-in knows is what this vLLM has (so the tests above test the real thing).
    assert tuple(inspect.signature(av._assign_draft_token_budget).parameters) == dropin.PARAMETERS
    assert dropin.vllm_version() in dropin.KNOWN_VERSIONS


# -- the entry point in a real engine ---------------------------------------------------------


def installed_entry_point():
    points = importlib.metadata.entry_points(group="vllm.general_plugins")
    return next((p for p in points if p.name == "tetris_ext"), None)


needs_installed = pytest.mark.skipif(
    installed_entry_point() is None,
    reason="tetris_ext is not pip-installed in this environment (no vllm.general_plugins entry point)",
)


@needs_installed
def test_entry_point_is_register():
    assert installed_entry_point().value == "tetris_ext.vllm:register"
    assert installed_entry_point().load() is dropin.register


def tiny_llama(folder) -> str:
    """A random 2-layer Llama with a word-level tokenizer, saved for vLLM to load offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(253)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)
    # head_dim 64: vLLM's CPU attention supports a fixed set of head sizes.
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@needs_installed
def test_a_real_cpu_engine_runs_the_plugin(restore_vllm, tmp_path):
    """vLLM loads its general plugins while building the engine; with the flag, ours replaces
    the budget step in that process (the engine core runs in-process here)."""
    import vllm.plugins

    restore_vllm.setenv(dropin.ENV_FLAG, "1")
    restore_vllm.setattr(vllm.plugins, "plugins_loaded", False)  # as in a fresh process
    llm = vllm.LLM(
        tiny_llama(tmp_path / "tiny-llama"),
        dtype="float32",
        max_model_len=128,
        max_num_seqs=2,
        enforce_eager=True,
        seed=0,
    )
    try:
        assert getattr(av, dropin.REPLACED_NAME) is dropin.assign_draft_token_budget
        out = llm.generate(["w1 w2 w3"], vllm.SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 4
    finally:
        del llm
        gc.collect()
