"""`--features auto` (what `model train` and `TrainConfig` use by default): the feature algorithm that
suits the readings.

The rolling-window algorithms (``robust-blocks-v4``, `models.features.TRAIN_ALGO`) judge a reading
against the readings before it: they assume a time series, whose neighbouring readings are related (a
physical signal sampled faster than it changes). Readings that are independent records, rows of a
table in no meaningful order such as River's Shuttle, have no such relation. A window then learns
nothing from the order, and the noise of its statistics hides what the values themselves show: on
Shuttle, ROC-AUC 0.946 with v4 and 0.996 with ``values-v1``, which scores each reading's own values
(measured in docs/detection.md).

The test: the lag-1 autocorrelation of each channel within each device's stream, its median over the
streams; the readings are a time series when any channel's is at least `SERIAL_MIN`. Measured in
December 2026: the simulator's channels 0.15-0.72 (the most related channel of each type 0.60 or more),
Daphnet's 0.55-0.85, KDD-TSAD_135's 0.999; Shuttle's 0.011 at most. A channel that is white noise
around a constant has none either, but a sensor whose every channel is is rare; when the test cannot be
made (streams shorter than `MIN_ROWS`, constant channels) the choice is the time-series algorithm.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.features import FEATURE_ALGO_VALUES, TRAIN_ALGO

AUTO = "auto"
SERIAL_MIN = 0.1
MIN_ROWS = 20


@dataclass(frozen=True)
class Choice:
    """The algorithm chosen, the evidence (median lag-1 autocorrelation per channel; None where it
    could not be measured) and the reason in words."""

    algo: str
    lag1: dict[str, float | None]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"requested": AUTO, "algo": self.algo, "serial_min": SERIAL_MIN, "lag1_autocorrelation": self.lag1,
                "reason": self.reason}


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


def choose(channels: Sequence[str], streams: Iterable[np.ndarray]) -> Choice:
    """The algorithm for these streams (one (n, C) array per device, columns in `channels` order)."""
    per_stream = [lag1_autocorrelation(v) for v in streams]
    measured = [r for r in per_stream if np.isfinite(r).any()]
    if not measured:
        return Choice(TRAIN_ALGO, dict.fromkeys(channels), f"no stream of {MIN_ROWS}+ varying readings to test "
                      "for serial structure: the time-series features")
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: a constant channel
            med = np.nanmedian(np.vstack(measured), axis=0)
    lag1 = {c: None if not np.isfinite(v) else round(float(v), 4) for c, v in zip(channels, med, strict=True)}
    finite = med[np.isfinite(med)]
    if not len(finite):
        return Choice(TRAIN_ALGO, lag1, "every channel is constant: the time-series features")
    top = float(finite.max())
    if top >= SERIAL_MIN:
        return Choice(TRAIN_ALGO, lag1, f"a time series (largest lag-1 autocorrelation {top:.2f} >= {SERIAL_MIN})")
    return Choice(FEATURE_ALGO_VALUES, lag1, f"independent records, no serial structure (largest lag-1 "
                  f"autocorrelation {top:.3f} < {SERIAL_MIN}): each reading's own values")
