"""What a serving engine's drafting reuses: the incremental n-gram index and the batched
calibration update give exactly what `ngram_match` and `AcceptanceCalibration.update` give."""

import random

import torch

from tetris_ext.calibration import AcceptanceCalibration
from tetris_ext.drafters import NgramIndex, ngram_match


def test_ngram_index_matches_ngram_match():
    rng = random.Random(0)
    for _ in range(200):
        context = [rng.randrange(6) for _ in range(rng.randrange(1, 60))]
        index, done = NgramIndex(4, 1), 0
        while done < len(context):  # grow in random pieces, as an engine step does
            step = rng.randrange(1, 5)
            index.extend(context[done : done + step])
            done = min(len(context), done + step)
            expected = ngram_match(context[:done], 5, 4, 1)
            got = index.match(5)
            assert (got.tokens, got.features) == (expected.tokens, expected.features)


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
