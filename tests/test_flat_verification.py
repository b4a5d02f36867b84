"""The flattened (packed) step: the model runs on the real tokens of every row packed together
(``generate(..., flat=True)``, ``RaggedKVCache(packed=True)``), and nothing else changes: the
same logits as the padded block, the target's exact greedy output, the same per-step decisions
as the padded loop, rows that verify nothing, continuous batching, sliding windows."""

import pytest
import torch
from test_decoding import NEW, VOCAB, _greedy_reference, _prompts

import tetris_ext  # noqa: F401  (registers the ops)
from tetris_ext.decoding import generate
from tetris_ext.drafters import ModelDrafter, NgramDrafter
from tetris_ext.kv_cache import RaggedKVCache
from tetris_ext.models import noisy_copy, tiny_gemma3, tiny_llama
from tetris_ext.packed_attention import PACKED
from tetris_ext.policies import (
    CostAwareTetris,
    GoodputSD,
    GoodputTetris,
    KneeLatencyModel,
    LatencyModel,
    StandardSD,
    Tetris,
    ThresholdSD,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

MODELS = {
    "llama": lambda: tiny_llama(vocab_size=40, seed=11),
    "gemma3": lambda: tiny_gemma3(vocab_size=40, seed=11, sliding_window=3),
}


def _chain_block(texts, sizes, g):
    """Root + sizes[b] - 1 random drafts per row, padded to the widest; padding slots see only
    themselves (as tetris_ext.ops.tree_mask lays them out)."""
    B, width = len(texts), max(sizes)
    tokens = torch.randint(0, 40, (B, width), generator=g)
    tokens[:, 0] = torch.tensor([t[-1] for t in texts])
    positions = torch.tensor([len(t) - 1 for t in texts]).unsqueeze(1) + torch.arange(width)
    real = torch.arange(width).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = torch.where(real.unsqueeze(2), causal, torch.eye(width, dtype=torch.bool))
    return tokens, positions, mask, real


@pytest.mark.parametrize("name", list(MODELS))
@torch.inference_mode()
def test_packed_forward_gives_the_padded_logits_and_an_exact_cache(name):
    padded_model, packed_model = MODELS[name](), MODELS[name]()
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (7, 2, 10, 4)]
    padded, packed = RaggedKVCache(padded_model), RaggedKVCache(packed_model, packed=True)
    for cache in (padded, packed):
        cache.append([t[:-1] for t in texts])
    assert packed_model.config._attn_implementation == PACKED
    for step in range(4):
        # Uneven rows: 1 + [3, 0, 2, 0] drafts, then [0, 4, 1, 2], ...: some verify nothing.
        sizes = [1 + (3 * b + step) % 5 if (b + step) % 2 == 0 else 1 for b in range(len(texts))]
        tokens, positions, mask, real = _chain_block(texts, sizes, g)
        first = padded.width
        logits = [c.forward(tokens, positions, mask, logits_at=real, real=real) for c in (padded, packed)]
        assert logits[0].shape == (sum(sizes), 40)
        torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)
        # Keep the root and a row-dependent part of the drafts, then the target's next token.
        keep = torch.full(real.shape, -1)
        for b, size in enumerate(sizes):
            kept = (b + step) % size + 1
            keep[b, :kept] = first + torch.arange(kept)
            texts[b] = texts[b] + tokens[b, 1:kept].tolist() + [int(torch.randint(0, 40, (1,), generator=g))]
        for cache in (padded, packed):
            cache.commit(keep)
            cache.maybe_compact()
    assert packed.lengths().tolist() == [len(t) - 1 for t in texts]
    # The next logits after the whole history equal a fresh forward over exactly the text.
    sizes = [1] * len(texts)
    tokens, positions, mask, real = _chain_block(texts, sizes, g)
    logits = packed.forward(tokens, positions, mask, logits_at=real, real=real)
    for b, text in enumerate(texts):
        with torch.no_grad():
            fresh = packed_model(torch.tensor([text])).logits[0, -1]
        torch.testing.assert_close(logits[b], fresh, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_packed_forward_refuses_real_slots_that_are_not_a_prefix():
    cache = RaggedKVCache(MODELS["llama"](), packed=True)
    cache.append([[1, 2, 3], [4, 5]])
    tokens, positions, mask, _ = _chain_block([[1, 2, 3, 7], [4, 5, 8]], [3, 3], torch.Generator())
    real = torch.tensor([[True, True, True], [True, False, True]])
    with pytest.raises(ValueError, match="prefix"):
        cache.forward(tokens, positions, mask, logits_at=real, real=real)


@pytest.fixture(scope="module")
def llama():
    target = tiny_llama(vocab_size=VOCAB)
    prompts = _prompts(1, (5, 9, 3, 12, 1, 7))
    return target, prompts, _greedy_reference(target, prompts, [NEW] * len(prompts))


def _per_step_counts(stats):
    return [(s["requests"], s["verified"], s["accepted"], s["generated"]) for s in stats["per_step"]]


# Policies that decide from drafts and estimates only (not from measured time), so the padded
# and the flat loop must take the very same decisions at every step.
SAME_DECISIONS = [
    ("standard-ngram", lambda: StandardSD(3), ("ngram", 1)),
    ("tetris-ngram", lambda: Tetris(3, 2), ("ngram", 1)),
    ("threshold-ngram", lambda: ThresholdSD(0.7, 4), ("ngram", 1)),
    ("tetris-noisy-chain", lambda: Tetris(2, 2), ("noisy", 1)),
    ("tetris-noisy-tree", lambda: Tetris(2, 2), ("noisy", 2)),
    # the target drafts for itself: its padded drafting forwards run on the switched model
    ("standard-same-chain", lambda: StandardSD(3), ("same", 1)),
]


def _drafter(spec, target):
    kind, width = spec
    if kind == "ngram":
        return NgramDrafter(6)
    draft = target if kind == "same" else noisy_copy(target, 0.05, seed=1)
    return ModelDrafter(draft, max_draft=6, tree_width=width)


@pytest.mark.parametrize("name,make_policy,spec", SAME_DECISIONS, ids=[c[0] for c in SAME_DECISIONS])
def test_flat_loop_decodes_exactly_and_takes_the_padded_loops_steps(llama, name, make_policy, spec):
    target, prompts, reference = llama
    runs = {
        flat: generate(target, prompts, make_policy(), _drafter(spec, target), NEW, 4, flat=flat)
        for flat in (False, True)
    }
    assert runs[True].tokens == reference == runs[False].tokens
    assert _per_step_counts(runs[True].stats) == _per_step_counts(runs[False].stats)
    assert target.config._attn_implementation == "sdpa"  # restored after the flat run
    if name == "tetris-ngram":  # uneven allocation: some rows verify nothing while others verify
        assert any(0 in s["verified"] and max(s["verified"]) > 0 for s in runs[True].stats["per_step"])


@pytest.mark.parametrize("spec", [("ngram", 1), ("noisy", 1)], ids=["ngram", "noisy-chain"])
def test_cost_aware_tetris_decodes_exactly_flat(llama, spec):
    target, prompts, reference = llama
    policy = CostAwareTetris(6)
    result = generate(target, prompts, policy, _drafter(spec, target), NEW, 4, flat=True)
    assert result.tokens == reference
    assert policy.padded is False and policy.name == "CostAwareTetris(6, flat)"


PRICING = [(GoodputSD, 4), (GoodputTetris, 4), (CostAwareTetris, 6)]


@pytest.mark.parametrize("flat", [False, True], ids=["padded-loop", "flat-loop"])
@pytest.mark.parametrize("cls,n", PRICING, ids=[c[0].__name__ for c in PRICING])
def test_policies_that_price_steps_price_the_loop_they_run_in(llama, monkeypatch, cls, n, flat):
    """No flag: the loop tells the policy its shape, and every step's feedback and the latency
    fit then count what the loop computed: the real tokens on the flat loop, the [B, width]
    block on the padded one (where GoodputSD / GoodputTetris fit the real tokens beside it)."""
    target, prompts, _ = llama
    fitted = []  # (real, padded) features of every observation of either latency fit
    for model in (LatencyModel, KneeLatencyModel):
        original = model.observe
        monkeypatch.setattr(
            model,
            "observe",
            lambda self, r, p, *a, _o=original, **k: (fitted.append((r, p)), _o(self, r, p, *a, **k)),
        )
    policy = cls(n)
    feedback = []
    observe = policy.observe
    policy.observe = lambda f: (feedback.append(f), observe(f))
    steps = generate(target, prompts, policy, NgramDrafter(6), NEW, 4, flat=flat).stats["per_step"]
    assert policy.padded is (not flat)
    real = [len(s["requests"]) + sum(s["verified"]) for s in steps]
    block = [len(s["requests"]) * s["block_width"] for s in steps]
    assert any(r != b for r, b in zip(real, block))  # uneven steps: the two counts differ
    assert [f.padded for f in feedback] == [not flat] * len(steps)
    assert [f.computed_tokens for f in feedback] == (real if flat else block)
    assert [f.real_tokens for f in feedback] == real
    if flat:
        expected = list(zip(real, real))
    else:
        expected = list(zip(block, block)) if cls is CostAwareTetris else list(zip(real, block))
    assert fitted == expected


@pytest.mark.parametrize("flat", [False, True], ids=["padded-loop", "flat-loop"])
@pytest.mark.parametrize("cls,n", PRICING, ids=[c[0].__name__ for c in PRICING])
def test_a_flag_that_contradicts_the_loop_raises_before_any_step(llama, cls, n, flat):
    target, prompts, _ = llama
    policy = cls(n, padded=flat)  # flat loop, padded=True; padded loop, padded=False
    drafter = NgramDrafter(6)
    drafter.propose = drafter.add = None  # any step (or admission) would call them
    pattern = rf"{cls.__name__}\(.*: padded={flat} contradicts generate\(flat={flat}\)"
    with pytest.raises(ValueError, match=pattern):
        generate(target, prompts, policy, drafter, NEW, 4, flat=flat)
    assert policy.steps == 0
    assert target.config._attn_implementation == "sdpa"  # the flat loop's switch undone


def test_flat_continuous_batching_with_a_queue_and_per_prompt_budgets(llama):
    target = llama[0]
    prompts = _prompts(7, (4, 11, 2, 8, 6, 1, 13, 5, 9))
    budgets = [3, 20, 7, 1, 12, 16, 5, 9, 2]
    reference = _greedy_reference(target, prompts, budgets)
    for policy, drafter in ((Tetris(2, 2), _drafter(("noisy", 1), target)), (StandardSD(2), NgramDrafter(4))):
        result = generate(
            target, prompts, policy, drafter, max_new_tokens=budgets, max_batch_size=3, flat=True
        )
        assert result.tokens == reference


def test_flat_gemma3_with_sliding_window():
    # Sliding window 4, contexts up to 24 tokens: the sliding layers' window is exercised.
    target = tiny_gemma3(vocab_size=VOCAB, sliding_window=4)
    draft = noisy_copy(target, 0.1, seed=2)
    prompts = _prompts(3, (6, 2, 9, 4))
    reference = _greedy_reference(target, prompts, [NEW] * len(prompts))
    for policy, drafter in (
        (StandardSD(3), ModelDrafter(draft, 4)),
        (Tetris(2, 2), NgramDrafter(4)),
        (Tetris(2, 2), ModelDrafter(draft, 5, tree_width=2)),
    ):
        result = generate(target, prompts, policy, drafter, max_new_tokens=NEW, max_batch_size=3, flat=True)
        assert result.tokens == reference, policy.name


def test_flat_needs_sdpa_attention():
    model = tiny_llama(vocab_size=16, seed=1)
    model.set_attn_implementation("eager")
    with pytest.raises(ValueError, match="'eager'.*attn_implementation='sdpa'"):
        generate(model, [[1, 2, 3]], StandardSD(2), NgramDrafter(3), max_new_tokens=2, flat=True)


def test_flat_sampling_draws_the_padded_loops_samples(llama):
    # The same logits (up to float rounding) and the same generator: the same samples.
    target, prompts, _ = llama
    runs = [
        generate(target, prompts, Tetris(2, 2), NgramDrafter(4), NEW, 4, temperature=0.8, seed=3, flat=flat)
        for flat in (False, True)
    ]
    assert runs[0].tokens == runs[1].tokens
    assert _per_step_counts(runs[0].stats) == _per_step_counts(runs[1].stats)
