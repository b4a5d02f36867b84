"""end_hazard.EndHazard: the per-length counts against a direct count of the requests' lengths,
and the chance of reaching a depth against the product of the shrunk rates."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tetris_ext.end_hazard import EndHazard


def feed(hazard, requests, rng):
    """Grow each request (final length, ended early?) to its length in random steps of 1-4
    tokens, all of them together one step at a time, as an engine reports them."""
    lengths = np.zeros(len(requests), dtype=np.int64)
    finals = np.array([final for final, _ in requests])
    while (lengths < finals).any():
        running = np.nonzero(lengths < finals)[0]
        after = np.minimum(lengths[running] + rng.integers(1, 5, len(running)), finals[running])
        ended = torch.tensor([after[i] == finals[r] and requests[r][1] for i, r in enumerate(running)])
        hazard.observe(torch.from_numpy(lengths[running]), torch.from_numpy(after), ended)
        lengths[running] = after


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=12),
    st.integers(0, 2**32 - 1),
)
def test_counts_are_the_requests_lengths_whatever_the_steps(requests, seed):
    """ended[n]: requests that ended early with n tokens; went_on[n]: requests longer than n."""
    hazard = EndHazard()
    feed(hazard, requests, np.random.default_rng(seed))
    top = max(final for final, _ in requests) + 1
    ended = [sum(1 for final, early in requests if early and final == n) for n in range(top)]
    went_on = [sum(1 for final, _ in requests if final > n) for n in range(top)]
    assert hazard.ended[:top].tolist() == ended and not hazard.ended[top:].any()
    assert hazard.went_on[:top].tolist() == went_on and not hazard.went_on[top:].any()


def test_rates_are_shrunk_towards_the_pooled_rate():
    """h(n) = (ended + prior x pooled) / (ended + went_on + prior): a length many requests
    reached keeps its own rate, one few reached stays near the pooled rate."""
    hazard = EndHazard(prior=4.0)
    # 100 requests run to length 10 at their budget, 20 end early at 5, one at 12
    feed(hazard, [(10, False)] * 100 + [(5, True)] * 20 + [(12, True)], np.random.default_rng(0))
    exposed = 100 * 9 + 20 * 5 + 12  # the lengths 1.. each could have ended at (not its budget)
    pooled = 21 / exposed
    assert hazard.pooled() == pytest.approx(pooled)
    h = hazard.rates()
    assert h[5] == pytest.approx((20 + 4 * pooled) / (121 + 4))
    assert h[3] == pytest.approx(4 * pooled / (121 + 4))
    assert h[12] == pytest.approx((1 + 4 * pooled) / (1 + 4))  # one request: mostly the prior


def test_reaching_a_depth_is_the_product_of_the_rates_it_passes():
    """log P(a request at g tokens reaches depth d) = sum_{n=g+1}^{g+d-1} log(1 - h(n)); past
    the lengths seen, the pooled rate."""
    hazard = EndHazard()
    feed(hazard, [(8, True), (9, False), (6, True), (15, True), (3, True)] * 3, np.random.default_rng(1))
    h = hazard.rates()
    pooled = hazard.pooled()
    rate = lambda n: h[n] if n < len(h) else pooled  # noqa: E731
    lens = torch.tensor([0, 5, 7, 20])
    depths = torch.arange(1, 7).expand(4, 6)
    got = hazard.log_reach(lens, depths)
    assert got.dtype == torch.float32 and got.shape == (4, 6)
    for b, g in enumerate(lens.tolist()):
        for i, d in enumerate(depths[b].tolist()):
            want = sum(math.log1p(-rate(n)) for n in range(g + 1, g + d))
            assert float(got[b, i]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert (got[:, 0] == 0).all()  # the first draft follows the root: no end lies before it


def test_certain_until_a_request_ends_early_and_bad_counts_refused():
    hazard = EndHazard()
    feed(hazard, [(10, False)] * 5, np.random.default_rng(2))  # budgets only
    assert (hazard.log_reach(torch.tensor([3]), torch.arange(1, 9)[None]) == 0).all()
    with pytest.raises(ValueError, match="before <= after"):
        hazard.observe(torch.tensor([4]), torch.tensor([3]), torch.tensor([False]))
    with pytest.raises(ValueError, match="prior"):
        EndHazard(prior=0.0)
