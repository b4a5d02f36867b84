"""What a serving engine's drafting reuses: the incremental n-gram index and the batched
calibration update give exactly what `ngram_match` and `AcceptanceCalibration.update` give."""

import random

import pytest
import torch

from tetris_ext.calibration import AcceptanceCalibration
from tetris_ext.drafters import NgramDrafter, NgramIndex, ngram_match
from tetris_ext.proposal import Outcome


@pytest.mark.parametrize("vocabulary", [6, 40])
def test_ngram_index_matches_ngram_match(vocabulary):
    """A small vocabulary repeats n-grams (several positions per match), a larger one leaves
    most of them single (the one-occurrence path)."""
    rng = random.Random(vocabulary)
    for _ in range(200):
        context = [rng.randrange(vocabulary) for _ in range(rng.randrange(1, 90))]
        index, done = NgramIndex(4, 1), 0
        while done < len(context):  # grow in random pieces, as an engine step does
            step = rng.randrange(1, 5) if rng.random() < 0.8 else rng.randrange(5, 40)  # a prompt
            index.extend(context[done : done + step])
            done = min(len(context), done + step)
            expected = ngram_match(context[:done], 5, 4, 1)
            got = index.match(5)
            assert (got.tokens, got.features) == (expected.tokens, expected.features)


def test_follower_positions_are_every_earlier_occurrence_of_the_suffix():
    rng = random.Random(3)
    for _ in range(100):
        context = [rng.randrange(5) for _ in range(rng.randrange(1, 60))]
        index = NgramIndex(4, 2)
        index.extend(context)
        L = len(context)
        for n in range(0, 7):
            expected = (
                [i + n for i in range(L - n) if context[i : i + n] == context[L - n :]]
                if 2 <= n <= min(4, L - 1)
                else []
            )
            assert index.follower_positions(n) == expected


def test_update_many_equals_update():
    rng = random.Random(1)
    a, b = AcceptanceCalibration(), AcceptanceCalibration()
    rows = [
        (
            (rng.randrange(1, 5), rng.randrange(1, 9), rng.random(), rng.randrange(1, 6)),
            rng.randrange(3),
            rng.random() < 0.6,
        )
        for _ in range(100)
    ]
    for f, r, y in rows:
        a.update(torch.tensor([f]), r, torch.tensor([y]))
    b.update_many([f for f, _, _ in rows], [r for _, r, _ in rows], [y for _, _, y in rows])
    assert torch.allclose(a.weights, b.weights) and a.request_bias.keys() == b.request_bias.keys()
    assert all(abs(a.request_bias[r] - b.request_bias[r]) < 1e-6 for r in a.request_bias)


class _Request:
    def __init__(self, index, tokens):
        self.index, self.tokens = index, tokens


def _reference_proposal(drafter, requests, num_draft):
    """What NgramDrafter.propose gave before its per-request index: a rescan per step."""
    matches = [ngram_match(r.tokens, num_draft, drafter.max_ngram, drafter.min_ngram) for r in requests]
    return drafter.proposal_from_matches(
        matches, [r.index for r in requests], num_draft, [r.tokens[-1] for r in requests]
    )


def test_ngram_drafter_index_drafts_what_a_rescan_drafts_and_is_released():
    """Over a multi-step run with rejections, requests joining and leaving, rollbacks and reused
    ids, the indexed drafter's proposals (tokens, features, estimates) equal a rescan's, and a
    request's index goes when it leaves."""
    rng = random.Random(2)
    indexed, rescan = NgramDrafter(5), NgramDrafter(5)
    requests = []
    for step in range(80):
        while len(requests) < 4:  # join, with an id that a request which left may have had
            free = sorted(set(range(6)) - {r.index for r in requests})
            requests.append(
                _Request(rng.choice(free), [rng.randrange(6) for _ in range(rng.randrange(1, 30))])
            )
            indexed.add(requests[-1:])
            rescan.add(requests[-1:])
        got, want = indexed.propose(requests, 4), _reference_proposal(rescan, requests, 4)
        for name in ("tokens", "features", "token_logprobs", "cum_logprobs"):
            assert torch.equal(getattr(got, name), getattr(want, name)), (step, name)
        assert torch.equal(got.tokens, want.tokens)
        drafted = (got.tokens >= 0).sum(1).tolist()
        accepted = torch.zeros_like(got.tokens, dtype=torch.bool)
        for b, r in enumerate(requests):  # accept a random prefix of the drafts (rejections)
            a = rng.randrange(drafted[b] + 1)
            accepted[b, :a] = True
            r.tokens += got.tokens[b, :a].tolist() + [rng.randrange(6)]
        outcome = Outcome(got.tokens >= 0, accepted, torch.where(accepted, torch.arange(4), -1))
        indexed.update(requests, got, outcome)
        rescan.update(requests, want, outcome)
        if step % 7 == 3:  # a rollback: the index must not draft from the dropped tokens
            del requests[0].tokens[-3:]
            requests[0].tokens.append(rng.randrange(6))
        if step % 5 == 4:  # one leaves
            rows = [i for i in range(len(requests)) if i != 1]
            requests = [requests[i] for i in rows]
            indexed.keep(rows)
            rescan.keep(rows)
            assert indexed.indexed_requests == {r.index for r in requests}
    assert indexed.calibration.updates == rescan.calibration.updates > 100
    indexed.keep([])
    assert indexed.indexed_requests == set() and indexed.calibration.tracked_requests == 0
