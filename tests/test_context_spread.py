"""The G rollouts of a problem spread over the n exported contexts (issue 12, point 1)."""

from __future__ import annotations

import numpy as np
import pytest

from fst_jax.sampling.prompt_bank import spread_contexts


@pytest.mark.parametrize("g", range(1, 17))
def test_spread_is_even_ranked_and_contiguous_for_every_n(g):
    for n in range(1, g + 1):
        slots = spread_contexts(g, n)
        assert slots.shape == (g,) and slots.dtype == np.int32
        counts = np.bincount(slots, minlength=n)
        # Independent oracle: the balanced split of g into n parts, larger parts first.
        expected = [g // n + (1 if j < g % n else 0) for j in range(n)]
        assert counts.tolist() == expected
        assert counts.max() - counts.min() <= 1 and counts.min() >= 1
        assert np.all(np.diff(slots) >= 0)  # contiguous, highest-ranked context first


def test_the_old_n3_g8_case_is_now_3_3_2():
    assert spread_contexts(8, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize(("g", "n"), [(4, 5), (8, 0), (0, 0)])
def test_impossible_spread_names_the_fix(g, n):
    with pytest.raises(ValueError, match=r"gepa\.k"):
        spread_contexts(g, n)
