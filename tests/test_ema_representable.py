"""The refusal of an unrepresentable post-hoc EMA std names the representable stds as separate
intervals: snapshots of stds 0.010 and 0.050 reproduce stds near each, not 0.03 between them."""

from __future__ import annotations

import numpy as np

from autoguide.ema.posthoc import DEFAULT_MAX_ERROR, representable_ranges
from autoguide.ema.power import profile_error, solve_coefficients


def test_representable_stds_are_separate_intervals():
    nimg = np.tile(np.arange(1, 11) * 1000, 2)
    stds = np.repeat([0.010, 0.050], 10)
    ranges = representable_ranges(nimg, stds, 10_000, DEFAULT_MAX_ERROR)
    assert len(ranges) == 2 and ranges[0][0] <= 0.010 <= ranges[0][1] and ranges[1][0] <= 0.050 <= ranges[1][1]
    assert ranges[0][1] < 0.03 < ranges[1][0]

    def error(std: float) -> float:
        target = np.array([std])
        coefs = solve_coefficients(nimg, stds, np.array([10_000]), target)
        return float(profile_error(nimg, stds, np.array([10_000]), target, coefs)[0])

    assert error(0.03) > DEFAULT_MAX_ERROR and error(0.05) <= DEFAULT_MAX_ERROR  # independently of the grid
