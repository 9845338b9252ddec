"""Threshold calibration holds out of sample: on scores from a known bounded distribution, the rate
the calibrated threshold achieves on new data stays near the target where the empirical quantile of a
few thousand rows wanders; small data is said, never silent."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from models.training.threshold import calibrate, held_out, wilson_interval

DIST = beta(2, 8)  # bounded above, like an isolation forest's score
TARGET = 0.001


def achieved(n: int, seeds: int, fn: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(seeds):
        s = DIST.rvs(n, random_state=rng)
        thr = calibrate(s, TARGET).threshold if fn == "calibrate" else float(np.quantile(s, 1 - TARGET))
        out.append(DIST.sf(thr) / TARGET)
    return np.asarray(out)


def test_a_tail_fit_keeps_the_achieved_rate_near_the_target_on_small_data() -> None:
    pot, emp = achieved(3000, 80, "calibrate"), achieved(3000, 80, "quantile")
    within = (pot >= 0.5) & (pot <= 2.0)
    print(f"\nachieved / target over 80 draws of 3000: calibrated median {np.median(pot):.2f}, within 2x "
          f"{within.mean():.2f}; empirical quantile median {np.median(emp):.2f}, within 2x "
          f"{((emp >= 0.5) & (emp <= 2.0)).mean():.2f}")
    assert 0.75 <= np.median(pot) <= 1.35
    assert within.mean() >= 0.8
    assert np.median(np.abs(np.log(pot))) < np.median(np.abs(np.log(emp)))


def test_enough_rows_use_the_plain_quantile_and_small_data_warns() -> None:
    rng = np.random.default_rng(1)
    big = calibrate(DIST.rvs(60_000, random_state=rng), TARGET)
    assert big.method == "quantile" and big.warning is None and big.expected_above == pytest.approx(60)
    small = calibrate(DIST.rvs(150, random_state=rng), TARGET)
    assert small.method == "pot" and small.warning and "150 calibration rows" in small.warning
    tiny = calibrate(DIST.rvs(8, random_state=rng), TARGET)
    assert tiny.warning and "unknown" in tiny.warning
    flat = calibrate(np.zeros(1000), TARGET)
    assert flat.threshold == 0.0 and flat.warning and "largest score" in flat.warning


def test_held_out_rate_and_its_bounds() -> None:
    h = held_out(np.array([0.1] * 997 + [0.9] * 3), 0.5)
    assert (h.rows, h.flagged, h.false_alarm_rate) == (1000, 3, 0.003)
    low, high = wilson_interval(0.003, 1000, 0.95)
    assert low < 0.003 < high == pytest.approx(h.upper_95) and high < 0.01
