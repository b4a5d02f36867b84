"""Greedy verification with the output head only where acceptance reads it
(``verification.verify_greedy_along_path``, ``generate(..., head_on_path=True)``): the same
decision as the head over every verified slot, asking only for the roots and the accepted
candidates."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decoding import NEW, VOCAB, _drafter, _greedy_reference, _prompts

import tetris_ext  # noqa: F401  (registers the ops)
from tetris_ext import kv_cache
from tetris_ext.decoding import generate
from tetris_ext.models import noisy_copy, tiny_llama
from tetris_ext.policies import StandardSD, Tetris
from tetris_ext.proposal import Proposal
from tetris_ext.verification import build_block, verify_greedy_along_path, verify_greedy_tokens

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def llama():
    """test_decoding's target, prompts and their greedy continuations, and a noisy draft."""
    target = tiny_llama(vocab_size=VOCAB)
    prompts = _prompts(1, (5, 9, 3, 12, 1, 7))
    return (
        target,
        prompts,
        _greedy_reference(target, prompts, [NEW] * len(prompts)),
        noisy_copy(target, 0.05, seed=1),
    )


@st.composite
def blocks_and_targets(draw):
    """A random forest of candidates per row (tokens from a small vocabulary, so that siblings
    share tokens and paths are accepted deep), a random selection of it, and the target's
    token after every real slot."""
    B, N, V = draw(st.integers(1, 5)), draw(st.integers(0, 7)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (B, N), generator=g)
    parents = torch.empty(B, N, dtype=torch.long)
    for i in range(N):  # the root (-1) or an earlier candidate
        parents[:, i] = torch.randint(-1, i, (B,), generator=g)
    logprobs = torch.zeros(B, N)
    proposal = Proposal(tokens, parents, logprobs, logprobs)
    selected = torch.rand(B, N, generator=g) < draw(st.floats(0.3, 1.0))
    # an ancestor-closed selection: a candidate only with its parent
    for i in range(N):
        has_parent = parents[:, i] < 0
        if i:
            has_parent |= selected.gather(1, parents[:, i : i + 1].clamp(min=0)).squeeze(1)
        selected[:, i] &= has_parent
    block = build_block(proposal, selected, torch.randint(0, V, (B,), generator=g), torch.full((B,), 5))
    target = torch.where(block.real, torch.randint(0, V, block.tokens.shape, generator=g), -1)
    return block, target


@settings(max_examples=300, deadline=None)
@given(blocks_and_targets(), st.sampled_from(["every slot", "path only", "default"]))
def test_the_rounds_decide_as_the_head_over_every_slot_and_ask_as_documented(case, rounds):
    block, target = case
    lookahead = {"every slot": (), "path only": (0,) * block.width, "default": (1,)}[rounds]
    asked = []

    def target_token_at(index):
        asked.append(index.clone())
        return target[block.real][index]

    walked = verify_greedy_along_path(block, target_token_at, lookahead)
    full = verify_greedy_tokens(block, target)
    for mine, theirs in zip(walked.__dict__.values(), full.__dict__.values()):
        assert torch.equal(mine, theirs)
    asked = torch.cat(asked).tolist() if asked else []
    assert len(asked) == len(set(asked))  # no slot twice
    row_of_slot = torch.full(block.tokens.shape, -1, dtype=torch.long)
    row_of_slot[block.real] = torch.arange(int(block.real.sum()))
    on_path = torch.cat([torch.zeros_like(full.accepted_slots[:, :1]), full.accepted_slots], 1)
    rows = torch.arange(block.tokens.shape[0]).unsqueeze(1).expand_as(on_path)
    path = set(row_of_slot[rows[on_path >= 0], on_path[on_path >= 0]].tolist())
    if rounds == "every slot":
        assert sorted(asked) == list(range(int(block.real.sum())))
    elif rounds == "path only":
        assert set(asked) == path
    else:  # the roots and their children; then the subtree of each accepted depth-2 slot
        expected = set()
        for b in range(block.tokens.shape[0]):
            parent = block.slot_parent[b].tolist()
            real = [s for s in range(block.width) if block.real[b, s]]
            expected |= {int(row_of_slot[b, s]) for s in real if s == 0 or parent[s] == 0}
            if full.num_accepted[b] >= 2:
                subtree = {int(full.accepted_slots[b, 1])}
                for s in real:  # a child comes after its parent
                    if s and parent[s] in subtree:
                        subtree.add(s)
                expected |= {int(row_of_slot[b, s]) for s in subtree}
        assert set(asked) == expected


@pytest.mark.parametrize("flat", [False, True], ids=["padded", "flat"])
@pytest.mark.parametrize(
    "make_policy,drafter_spec",
    [
        (lambda: StandardSD(3), ("ngram", 1)),
        (lambda: Tetris(2, 2), ("noisy", 1)),
        (lambda: Tetris(2, 2), ("noisy", 2)),
    ],
    ids=["sd-ngram", "tetris-noisy-chain", "tetris-noisy-tree"],
)
def test_generate_takes_the_same_steps_and_puts_fewer_slots_through_the_head(
    llama, monkeypatch, flat, make_policy, drafter_spec
):
    target, prompts, reference, noisy = llama
    headed_rows = []  # rows of each call of the target's head
    logits = kv_cache._logits

    def counting(model, hidden):
        if model is target:  # not a draft model's head
            headed_rows.append(hidden.shape[0])
        return logits(model, hidden)

    monkeypatch.setattr(kv_cache, "_logits", counting)
    runs = {}
    for on_path in (False, True):
        headed_rows.clear()
        result = generate(
            target,
            prompts,
            make_policy(),
            _drafter(drafter_spec, {"noisy": noisy}),
            max_new_tokens=NEW,
            max_batch_size=4,
            flat=flat,
            head_on_path=on_path,
        )
        runs[on_path] = result, list(headed_rows)
    (every_slot, every_calls), (walked, walked_calls) = runs[False], runs[True]
    assert walked.tokens == every_slot.tokens == reference
    keys = ("requests", "verified", "accepted", "generated", "block_width")
    assert [{k: s[k] for k in keys} for s in walked.stats["per_step"]] == [
        {k: s[k] for k in keys} for s in every_slot.stats["per_step"]
    ]
    stats = walked.stats
    roots = sum(len(s["requests"]) for s in stats["per_step"])
    # every slot: one head call a step; by rounds: at most two (roots and their children, then
    # below the accepted children), at least the roots and the accepted candidates, fewer rows
    assert len(every_calls) == stats["steps"] and sum(every_calls) == roots + stats["verified_tokens"]
    assert stats["steps"] <= len(walked_calls) <= 2 * stats["steps"]
    assert roots + stats["accepted_tokens"] <= sum(walked_calls) < sum(every_calls)
