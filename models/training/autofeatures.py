"""`--features auto` (what `model train` and `TrainConfig` use by default): the feature algorithm that
suits the readings.

The rolling-window algorithms (``robust-blocks-v7``, `models.features.TRAIN_ALGO`) judge a reading
against the readings before it: they assume a time series, whose neighbouring readings are related (a
physical signal sampled faster than it changes). Readings that are independent records, rows of a
table in no meaningful order such as River's Shuttle, have no such relation. A window then learns
nothing from the order, and the noise of its statistics hides what the values themselves show: on
Shuttle, ROC-AUC 0.946 with v4 and 0.996 with ``values-v1``, which scores each reading's own values
(measured in docs/detection.md).

The tests, on each channel within each device's stream, the median over the streams:

1. **Serial structure**: the lag-1 autocorrelation of the readings. Below `SERIAL_MIN` on every
   channel: independent records, ``values-v1``. Measured in December 2026: the simulator's channels
   0.15-0.72 (the most related channel of each type 0.60 or more), Daphnet's 0.55-0.85, KDD-TSAD_135's
   0.999; Shuttle's 0.011 at most. A channel that is white noise around a constant has none either,
   but a sensor whose every channel is is rare.
2. **Smoothness**: the lag-1 autocorrelation of the first differences. Noise makes consecutive
   differences anti-correlated (-0.5 for white noise); a signal sampled faster than it changes makes
   them follow its slope (towards +1). At `SMOOTH_MIN` or above on any channel: ``robust-blocks-v5``,
   whose roughness feature reads second differences. Measured: the simulator's channels -0.5 to -0.26,
   Daphnet's -0.35 to 0.37, KDD-TSAD_135's 0.95 (a blood-pressure wave).
3. Otherwise the time-series default, ``robust-blocks-v7`` (`models.features.TRAIN_ALGO`; v4 until
   3 December 2026, then v6 for a day).

When a test cannot be made (streams shorter than `MIN_ROWS`, constant channels) it does not pick its
algorithm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.features import FEATURE_ALGO_V5, FEATURE_ALGO_VALUES, TRAIN_ALGO

AUTO = "auto"
SERIAL_MIN = 0.1
SMOOTH_MIN = 0.5
MIN_ROWS = 20


@dataclass(frozen=True)
class Choice:
    """The algorithm chosen, the evidence per channel (median lag-1 autocorrelation of the readings and
    of their first differences; None where it could not be measured) and the reason in words."""

    algo: str
    lag1: dict[str, float | None]
    reason: str
    diff_lag1: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"requested": AUTO, "algo": self.algo, "serial_min": SERIAL_MIN, "smooth_min": SMOOTH_MIN,
                "lag1_autocorrelation": self.lag1, "diff_lag1_autocorrelation": self.diff_lag1, "reason": self.reason}


def lag1_autocorrelation(values: np.ndarray) -> np.ndarray:
    """Per column of one stream (n, C): the correlation of each reading with the one before it; NaN
    for a constant column or fewer than `MIN_ROWS` readings."""
    x = np.asarray(values, dtype=np.float64)
    out = np.full(x.shape[1], np.nan)
    if len(x) < MIN_ROWS:
        return out
    a, b = x[:-1] - x[:-1].mean(axis=0), x[1:] - x[1:].mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    ok = den > 0
    out[ok] = (a * b).sum(axis=0)[ok] / den[ok]
    return out


def _medians(channels: Sequence[str], per_stream: list[np.ndarray]) -> np.ndarray | None:
    """Median over streams per channel (NaN where no stream measured it); None if none measured any."""
    import warnings

    measured = [r for r in per_stream if np.isfinite(r).any()]
    if not measured:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: a constant channel
        return np.asarray(np.nanmedian(np.vstack(measured), axis=0))


def _rounded(channels: Sequence[str], med: np.ndarray | None) -> dict[str, float | None]:
    if med is None:
        return dict.fromkeys(channels)
    return {c: None if not np.isfinite(v) else round(float(v), 4) for c, v in zip(channels, med, strict=True)}


def _top(med: np.ndarray | None) -> float | None:
    finite = med[np.isfinite(med)] if med is not None else np.empty(0)
    return float(finite.max()) if len(finite) else None


def choose(channels: Sequence[str], streams: Iterable[np.ndarray]) -> Choice:
    """The algorithm for these streams (one (n, C) array per device, columns in `channels` order)."""
    streams = [np.asarray(v, dtype=np.float64) for v in streams]
    med = _medians(channels, [lag1_autocorrelation(v) for v in streams])
    dmed = _medians(channels, [lag1_autocorrelation(np.diff(v, axis=0)) for v in streams if len(v) > 1])
    lag1, diff_lag1 = _rounded(channels, med), _rounded(channels, dmed)
    top, dtop = _top(med), _top(dmed)
    if top is None:
        return Choice(TRAIN_ALGO, lag1, f"no stream of {MIN_ROWS}+ varying readings to test for serial structure: "
                      "the time-series features", diff_lag1)
    if top < SERIAL_MIN:
        return Choice(FEATURE_ALGO_VALUES, lag1, f"independent records, no serial structure (largest lag-1 "
                      f"autocorrelation {top:.3f} < {SERIAL_MIN}): each reading's own values", diff_lag1)
    if dtop is not None and dtop >= SMOOTH_MIN:
        return Choice(FEATURE_ALGO_V5, lag1, f"a smooth time series (largest lag-1 autocorrelation of the first "
                      f"differences {dtop:.2f} >= {SMOOTH_MIN}): noise measured on second differences", diff_lag1)
    return Choice(TRAIN_ALGO, lag1, f"a time series (largest lag-1 autocorrelation {top:.2f} >= {SERIAL_MIN})",
                  diff_lag1)
