"""The ragged KV cache: after prefill, speculative blocks, rollback, compaction and batch
changes, the next logits equal those of a fresh forward over exactly the accepted text."""

import pytest
import torch

import tetris_ext  # noqa: F401
from tetris_ext.kv_cache import RaggedKVCache, accepts_custom_mask
from tetris_ext.models import tiny_gemma3, tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


MODELS = {
    "llama": lambda: tiny_llama(vocab_size=40, seed=11),
    "gemma3": lambda: tiny_gemma3(vocab_size=40, seed=11, sliding_window=3),
}


def _fresh_next_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1]


def _next_logits(cache, texts):
    """Feed each row's last token (as a one-token block) and return the logits after it."""
    B = len(texts)
    tokens = torch.tensor([[t[-1]] for t in texts])
    positions = torch.tensor([[len(t) - 1] for t in texts])
    logits = cache.forward(
        tokens, positions, torch.ones(B, 1, 1, dtype=torch.bool), logits_at=torch.ones(B, 1, dtype=torch.bool)
    )
    cache.commit(torch.full((B, 1), cache.width - 1))
    return logits


@pytest.mark.parametrize("name", list(MODELS))
@torch.inference_mode()
def test_rollback_compaction_and_batch_changes_are_exact(name):
    model = MODELS[name]()
    g = torch.Generator().manual_seed(0)
    texts = [torch.randint(0, 40, (n,), generator=g).tolist() for n in (6, 2, 9)]
    cache = RaggedKVCache(model)
    cache.append([t[:-1] for t in texts])  # prefill all but the root

    for step in range(4):
        # A tree block per row: root, then 3 drafts: a chain 1 <- 2 and a sibling 3 of 1.
        B = len(texts)
        drafts = torch.randint(0, 40, (B, 3), generator=g)
        tokens = torch.cat([torch.tensor([[t[-1]] for t in texts]), drafts], 1)
        root = torch.tensor([len(t) - 1 for t in texts])
        positions = root[:, None] + torch.tensor([0, 1, 2, 1])
        tree = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
        first = cache.width
        cache.forward(tokens, positions, tree.expand(B, 4, 4))
        # Accept a different amount per row: row b keeps the root and b % 3 of the chain.
        keep = torch.full((B, 3), -1)
        for b in range(B):
            accepted = [0] + [1, 2][: (b + step) % 3]
            keep[b, : len(accepted)] = first + torch.tensor(accepted)
            texts[b] = (
                texts[b]
                + drafts[b, : len(accepted) - 1].tolist()
                + [int(torch.randint(0, 40, (1,), generator=g))]
            )
        cache.commit(keep)
        if step == 1:  # a request leaves, another joins
            cache.select_rows(torch.tensor([2, 0]))
            texts = [texts[2], texts[0]]
            joining = RaggedKVCache(model)
            newcomer = torch.randint(0, 40, (5,), generator=g).tolist()
            joining.append([newcomer[:-1]])
            cache.extend(joining)
            texts.append(newcomer)
        if step == 2:
            cache.maybe_compact(max_hole_fraction=0.0)
            assert cache.width == int(cache.lengths().max())
        assert cache.lengths().tolist() == [len(t) - 1 for t in texts]

    logits = _next_logits(cache, texts)
    for b, text in enumerate(texts):
        torch.testing.assert_close(logits[b], _fresh_next_logits(model, text), atol=1e-4, rtol=1e-4)


def test_sliding_window_masks_only_the_sliding_layers():
    model = tiny_gemma3(vocab_size=40, seed=11, sliding_window=3)
    cache = RaggedKVCache(model)
    cache.append([[1, 2, 3, 4, 5, 6]])
    mask = cache._attention_mask(torch.tensor([[6]]), torch.ones(1, 1, 1, dtype=torch.bool), None)
    full, sliding = mask["full_attention"], mask["sliding_attention"]
    blocked = torch.finfo(full.dtype).min
    assert (full == 0).all()
    # Position 6 sees positions > 6 - 3: 4, 5 and itself.
    assert ((sliding[0, 0, 0] == 0).tolist()) == [False, False, False, False, True, True, True]
    assert sliding.min() == blocked


def test_custom_mask_probe():
    assert accepts_custom_mask(tiny_llama(vocab_size=16))
    assert accepts_custom_mask(tiny_gemma3(vocab_size=16))
    eager = tiny_llama(vocab_size=16, seed=1)
    eager.config._attn_implementation = "eager"
    assert accepts_custom_mask(eager)
