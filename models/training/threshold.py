"""Thresholds that hold out of sample: calibrate a score threshold at a target false-alarm rate.

With n calibration scores and a target rate p, the empirical (1 - p) quantile rests on n·p scores
above it. With thousands of rows and p = 0.001 that is a handful: the quantile is the training
maximum or next to it, and the rate achieved on new data is anywhere from 0 to ten times the target.
So:

* **n·p ≥ `min_exceedances`** (50): the empirical quantile; enough scores lie above it.
* **otherwise, peaks over threshold**: the top `tail` scores (at least `min_exceedances`, at most
  10 % of the rows) above ``u``, their (1 - tail/n) quantile, are fitted with a generalised Pareto
  distribution (scipy, location 0, maximum likelihood), and the threshold is where that tail puts a
  probability of p: ``u + σ/ξ · ((tail / (n·p))^ξ - 1)`` (``u + σ·ln(tail / (n·p))`` when ξ = 0). An
  isolation forest's score is bounded, so ξ < 0 is usual and the threshold stays below the bound.
* **fewer than `min_rows`** (200) rows, or a fit that fails: the same estimate, with a warning that
  says why it cannot be trusted. Never a silent training maximum.

`held_out` measures what a threshold achieves on normal rows it was not calibrated on, with a
Wilson upper bound; the trainer writes both into the manifest (``training.calibration`` and
``training.held_out``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

MIN_EXCEEDANCES = 50
MIN_ROWS = 200


@dataclass(frozen=True)
class Calibration:
    threshold: float
    method: str  # "quantile" or "pot"
    rows: int
    target_fpr: float
    expected_above: float  # rows · target: how many calibration scores the target leaves above it
    tail_rows: int | None = None
    tail_start: float | None = None
    shape: float | None = None
    scale: float | None = None
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def calibrate(scores: np.ndarray, target_fpr: float, *, min_exceedances: int = MIN_EXCEEDANCES,
              min_rows: int = MIN_ROWS) -> Calibration:
    """The threshold at which about `target_fpr` of scores like these lie at or above it."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    n = len(s)
    if n == 0:
        raise ValueError("no calibration scores")
    expected = n * target_fpr
    if expected >= min_exceedances:
        return Calibration(float(np.quantile(s, 1.0 - target_fpr)), "quantile", n, target_fpr, expected)
    warnings = []
    if n < min_rows:
        warnings.append(f"only {n} calibration rows (want {min_rows}+): the threshold is a rough extrapolation")
    tail = min(max(min_exceedances, int(0.1 * n)), n - 1) if n > 1 else 0
    if tail < 10:
        return Calibration(float(s[-1]), "quantile", n, target_fpr, expected,
                           warning=f"only {n} calibration rows: the threshold is the largest score seen, "
                                   f"and the false-alarm rate it gives is unknown")
    u = float(s[n - tail - 1])
    exc = s[n - tail:] - u
    shape, scale = _fit_gpd(exc)
    ratio = tail / expected
    if scale <= 0 or not math.isfinite(shape):
        thr = float(s[-1])
        warnings.append("the tail fit failed (scores above the tail start are all equal): the threshold is the "
                        "largest score seen")
    elif abs(shape) < 1e-6:
        thr = u + scale * math.log(ratio)
    else:
        thr = u + scale / shape * (ratio ** shape - 1.0)
    return Calibration(float(thr), "pot", n, target_fpr, expected, tail, u, shape, scale,
                       "; ".join(warnings) or None)


def _fit_gpd(exc: np.ndarray) -> tuple[float, float]:
    """(ξ, σ) of a generalised Pareto distribution fitted to exceedances by maximum likelihood."""
    from scipy.stats import genpareto

    if float(exc.max()) <= 0:
        return 0.0, 0.0
    shape, _loc, scale = genpareto.fit(exc, floc=0.0)
    return float(shape), float(scale)


@dataclass(frozen=True)
class HeldOut:
    rows: int
    flagged: int
    false_alarm_rate: float
    upper_95: float  # one-sided 95 % Wilson upper bound of the rate

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def held_out(scores: np.ndarray, threshold: float) -> HeldOut:
    """The false-alarm rate `threshold` achieves on normal `scores` it was not calibrated on."""
    n = len(scores)
    k = int((np.asarray(scores) >= threshold).sum())
    rate = k / n if n else 0.0
    return HeldOut(n, k, rate, wilson_interval(rate, n, 0.95)[1])


def wilson_interval(rate: float, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson bounds (lower, upper) at `confidence` of a proportion observed as `rate` over `n`."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(confidence)
    centre = rate + z * z / (2 * n)
    spread = z * math.sqrt(max(rate * (1 - rate), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n)), min(1.0, (centre + spread) / (1 + z * z / n))
