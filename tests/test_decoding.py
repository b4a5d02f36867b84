"""The decoding loop at temperature 0: every policy and drafter reproduces the target's own
greedy output exactly (chains and trees, ragged prompts, EOS, continuous batching), and the
capacity rules hold. Tiny random Llama and Gemma 3 models built from configs."""

import pytest
import torch
from transformers import LlamaForCausalLM

import tetris_ext  # noqa: F401  (registers the ops)
from tetris_ext.decoding import generate
from tetris_ext.drafters import ModelDrafter, NgramDrafter
from tetris_ext.kv_cache import CustomMaskUnsupported, accepts_custom_mask
from tetris_ext.models import noisy_copy, tiny_gemma3, tiny_llama
from tetris_ext.policies import (
    Autoregressive,
    CostAwareTetris,
    GoodputSD,
    GoodputTetris,
    StandardSD,
    Tetris,
    ThresholdSD,
)

VOCAB = 64
NEW = 16


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _prompts(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _greedy_reference(model, prompts, max_new_tokens, eos_token_id=None):
    """The target's own greedy output, one prompt at a time (no padding anywhere)."""
    outputs = []
    for prompt, budget in zip(prompts, max_new_tokens):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=eos_token_id,
                pad_token_id=0,
                min_new_tokens=0 if eos_token_id is not None else budget,
            )
        outputs.append(out[0, len(prompt) :].tolist())
    return outputs


@pytest.fixture(scope="module")
def llama():
    target = tiny_llama(vocab_size=VOCAB)
    prompts = _prompts(1, (5, 9, 3, 12, 1, 7))
    budgets = [NEW] * len(prompts)
    return target, prompts, _greedy_reference(target, prompts, budgets)


@pytest.fixture(scope="module")
def llama_drafts(llama):
    target = llama[0]
    return {"same": target, "noisy": noisy_copy(target, 0.05, seed=1)}


CASES = [
    ("autoregressive", lambda: Autoregressive(), None),
    ("standard-ngram", lambda: StandardSD(3), ("ngram", 1)),
    ("tetris-ngram", lambda: Tetris(2, 2), ("ngram", 1)),
    ("tetris-minprob-ngram", lambda: Tetris(2, 1, min_prob=0.3), ("ngram", 1)),
    ("threshold-ngram", lambda: ThresholdSD(0.8, 4), ("ngram", 1)),
    ("goodput-tetris-ngram", lambda: GoodputTetris(4), ("ngram", 1)),
    ("standard-same-chain", lambda: StandardSD(3), ("same", 1)),
    ("standard-noisy-chain", lambda: StandardSD(3), ("noisy", 1)),
    ("tetris-noisy-chain", lambda: Tetris(2, 2), ("noisy", 1)),
    ("tetris-capacity-noisy-chain", lambda: Tetris(capacity=5, extra=1), ("noisy", 1)),
    ("goodput-sd-noisy-chain", lambda: GoodputSD(4), ("noisy", 1)),
    ("goodput-tetris-noisy-chain", lambda: GoodputTetris(4), ("noisy", 1)),
    ("threshold-noisy-chain", lambda: ThresholdSD(0.7, 4), ("noisy", 1)),
    ("standard-noisy-tree", lambda: StandardSD(3), ("noisy", 2)),
    ("tetris-noisy-tree", lambda: Tetris(2, 2), ("noisy", 2)),
    ("tetris-same-tree", lambda: Tetris(3, 3), ("same", 3)),
    ("goodput-tetris-noisy-tree", lambda: GoodputTetris(6), ("noisy", 2)),
    ("cost-aware-ngram", lambda: CostAwareTetris(6), ("ngram", 1)),
    ("cost-aware-noisy-tree", lambda: CostAwareTetris(6), ("noisy", 2)),
]


def _drafter(spec, drafts):
    if spec is None:
        return None
    kind, width = spec
    if kind == "ngram":
        return NgramDrafter(6)
    return ModelDrafter(drafts[kind], max_draft=6, tree_width=width)


@pytest.mark.parametrize("name,make_policy,drafter_spec", CASES, ids=[c[0] for c in CASES])
def test_greedy_output_is_exactly_the_targets(llama, llama_drafts, name, make_policy, drafter_spec):
    target, prompts, reference = llama
    result = generate(
        target,
        prompts,
        make_policy(),
        _drafter(drafter_spec, llama_drafts),
        max_new_tokens=NEW,
        max_batch_size=4,
    )
    assert result.tokens == reference
    stats = result.stats
    assert stats["generated_tokens"] == NEW * len(prompts)
    assert stats["accepted_tokens"] <= stats["verified_tokens"] <= stats["drafted_tokens"]
    assert stats["steps"] == len(stats["per_step"])
    assert stats["target_forwards"] > stats["steps"]  # + prefills
    if drafter_spec == ("same", 1):  # a draft equal to the target: every verified token accepted
        assert stats["accepted_tokens"] == stats["verified_tokens"] > 0
    if drafter_spec is not None and drafter_spec[0] == "noisy":  # a noisy copy: partial acceptance
        assert 0 < stats["accepted_tokens"] < stats["verified_tokens"]


def test_per_step_records_add_up(llama, llama_drafts):
    target, prompts, reference = llama
    result = generate(
        target,
        prompts,
        Tetris(2, 1),
        ModelDrafter(llama_drafts["noisy"], 3),
        max_new_tokens=NEW,
        max_batch_size=4,
    )
    stats = result.stats
    assert sum(sum(s["accepted"]) for s in stats["per_step"]) == stats["accepted_tokens"]
    assert sum(sum(s["verified"]) for s in stats["per_step"]) == stats["verified_tokens"]
    assert sum(sum(s["generated"]) for s in stats["per_step"]) == stats["generated_tokens"]
    cand = stats["candidates"]
    assert len(cand["accepted"]) == stats["verified_tokens"]
    assert sum(cand["accepted"]) == stats["accepted_tokens"]
    assert all(0.0 <= p <= 1.0 for p in cand["predicted"])
    # An accepted candidate was tested (its parent was accepted).
    assert all(t for t, a in zip(cand["tested"], cand["accepted"]) if a)
    # Prefill is timed apart (wall and CPU), within the run's totals.
    assert 0 < stats["prefill_cpu_seconds"] <= stats["cpu_seconds"]
    assert 0 < stats["prefill_seconds"] <= stats["wall_seconds"]


def test_eos_stops_each_request_where_the_target_does(llama, llama_drafts):
    target, prompts, _ = llama
    # Pick as EOS a token that the greedy outputs produce early in some requests, not in others.
    full = _greedy_reference(target, prompts, [NEW] * len(prompts))
    eos = full[0][3]
    reference = _greedy_reference(target, prompts, [NEW] * len(prompts), eos_token_id=eos)
    assert any(len(r) < NEW for r in reference)
    for policy, drafter in (
        (Autoregressive(), None),
        (Tetris(2, 2), ModelDrafter(llama_drafts["noisy"], 4)),
        (StandardSD(3), ModelDrafter(llama_drafts["same"], 3, tree_width=2)),
    ):
        result = generate(
            target, prompts, policy, drafter, max_new_tokens=NEW, max_batch_size=3, eos_token_id=eos
        )
        assert result.tokens == reference


def test_continuous_batching_with_a_queue_and_per_prompt_budgets(llama, llama_drafts):
    target = llama[0]
    prompts = _prompts(7, (4, 11, 2, 8, 6, 1, 13, 5, 9))
    budgets = [3, 20, 7, 1, 12, 16, 5, 9, 2]
    reference = _greedy_reference(target, prompts, budgets)
    for policy, drafter in (
        (Autoregressive(), None),
        (Tetris(2, 2), ModelDrafter(llama_drafts["noisy"], 4)),
        (GoodputTetris(4), NgramDrafter(4)),
        (StandardSD(2), ModelDrafter(llama_drafts["noisy"], 4, tree_width=2)),
    ):
        result = generate(target, prompts, policy, drafter, max_new_tokens=budgets, max_batch_size=3)
        assert result.tokens == reference
        sizes = [len(s["requests"]) for s in result.stats["per_step"]]
        assert max(sizes) == 3 and all(size <= 3 for size in sizes)
        # Requests join as others finish: every prompt is in some step, in prompt order of joining.
        first_step = {}
        for i, s in enumerate(result.stats["per_step"]):
            for r in s["requests"]:
                first_step.setdefault(r, i)
        assert sorted(first_step) == list(range(len(prompts)))
        assert [first_step[r] for r in range(len(prompts))] == sorted(
            first_step[r] for r in range(len(prompts))
        )


def test_capacity_tetris_never_verifies_more_than_its_capacity(llama, llama_drafts):
    target, prompts, _ = llama
    for policy in (Tetris(2, 2), Tetris(capacity=5, extra=2), Tetris(1, 3)):
        drafter = ModelDrafter(llama_drafts["noisy"], 6)
        result = generate(target, prompts, policy, drafter, max_new_tokens=NEW, max_batch_size=4)
        for s in result.stats["per_step"]:
            assert sum(s["verified"]) <= policy.budget(len(s["requests"]))


def test_capacity_equal_to_standard_sd_when_every_request_has_drafts(llama, llama_drafts):
    target, prompts, _ = llama
    runs = {}
    for policy in (StandardSD(2), Tetris(2, 2)):
        # A model drafter always proposes the full length, so both verify k per request (fewer
        # only where a request's remaining budget cannot use k: "drafted" counts what it can).
        drafter = ModelDrafter(llama_drafts["noisy"], 4)
        result = generate(target, prompts, policy, drafter, max_new_tokens=NEW, max_batch_size=4)
        runs[policy.name] = result.stats["per_step"]
        for s in result.stats["per_step"]:
            assert sum(s["verified"]) == sum(min(2, d) for d in s["drafted"])
        assert (
            sum(sum(s["verified"]) == 2 * len(s["requests"]) for s in runs[policy.name])
            > len(runs[policy.name]) / 2
        )
    assert all(s["verified"] == [min(2, d) for d in s["drafted"]] for s in runs["StandardSD(2)"])
    # Tetris redistributes: some step gives a request more than k.
    assert any(max(s["verified"]) > 2 for s in runs["Tetris(2, 2)"])


def test_gemma3_with_sliding_window_masks():
    # Sliding window 4, contexts up to 24 tokens: the sliding layers' window is exercised.
    target = tiny_gemma3(vocab_size=VOCAB, sliding_window=4)
    draft = noisy_copy(target, 0.1, seed=2)
    prompts = _prompts(3, (6, 2, 9, 4))
    reference = _greedy_reference(target, prompts, [NEW] * len(prompts))
    for policy, drafter in (
        (Autoregressive(), None),
        (StandardSD(3), ModelDrafter(draft, 4)),
        (Tetris(2, 2), ModelDrafter(draft, 5, tree_width=2)),
        (GoodputTetris(4), NgramDrafter(4)),
    ):
        result = generate(target, prompts, policy, drafter, max_new_tokens=NEW, max_batch_size=3)
        assert result.tokens == reference, policy.name


class _IgnoresCustomMasks(torch.nn.Module):
    """A decoder that, like some architectures, drops 4D attention masks."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, *args, attention_mask=None, **kwargs):
        if isinstance(attention_mask, dict) or (attention_mask is not None and attention_mask.ndim == 4):
            attention_mask = None
        return self.inner(*args, attention_mask=attention_mask, **kwargs)


class NoCustomMaskLlama(LlamaForCausalLM):
    def get_decoder(self):
        return _IgnoresCustomMasks(self.model)


def test_model_without_custom_masks_decodes_chains_and_refuses_trees(llama):
    target, prompts, reference = llama
    plain = NoCustomMaskLlama(target.config)
    plain.load_state_dict(target.state_dict())
    plain.eval()
    assert accepts_custom_mask(target) and not accepts_custom_mask(plain)
    # Chains work through 2D padding masks, exactly.
    result = generate(
        plain,
        prompts,
        StandardSD(2),
        ModelDrafter(noisy_copy(target, 0.05, seed=1), 3),
        max_new_tokens=NEW,
        max_batch_size=4,
    )
    assert result.tokens == reference
    result = generate(plain, prompts, Tetris(2, 1), NgramDrafter(4), max_new_tokens=NEW, max_batch_size=4)
    assert result.tokens == reference
    # Trees need the 4D mask: a clear error naming the class.
    with pytest.raises(CustomMaskUnsupported, match="NoCustomMaskLlama"):
        generate(plain, prompts, Tetris(2, 2), ModelDrafter(target, 4, tree_width=2), max_new_tokens=NEW)


def test_argument_errors(llama):
    target, prompts, _ = llama
    with pytest.raises(ValueError, match="drafter"):
        generate(target, prompts, StandardSD(2))
    with pytest.raises(ValueError, match="prompt"):
        generate(target, [[]], Autoregressive())
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(target, prompts, Autoregressive(), max_new_tokens=[1, 2])
