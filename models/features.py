"""Rolling-window features: the one definition shared by edge scoring and cloud training.

For every channel and reading x, the previous `long_window` = blocks × short_window
readings (the current one excluded) are cut into `blocks` consecutive blocks of
`short_window` readings; the last block is the short window W_S. With
``centre = median of the block means`` and ``scale = median of the block sds + f``
(robust: up to half the blocks may hold a fault without moving them; ``f`` is the
channel's noise floor, fitted once from training data and part of the spec), and
``dscale = 1.4826 · median|diff(W_S ∪ {x})| / √2 + f`` (short-term noise that a single
step or spike does not move)::

    z_long = |x - centre| / scale           (spikes, dips, dropouts, drift)
    shift  = |median(W_S) - centre| / scale (level shifts that have lasted a few readings)
    ratio  = log(dscale / scale)            (high: noise burst; low: stuck sensor)

Each is summarised across channels so one faulty channel stands out in a dedicated
dimension; the z-scores are squared, which spreads the tail an isolation forest has
to cut (its splits are uniform between a node's min and max). The features, in order
(`FEATURE_NAMES`): ``max z_long²``, ``max shift²``, ``max ratio``, ``min ratio``, each
clipped to [-clip, clip]. Warm-up: while a device has fewer than `long_window` previous
readings only its complete blocks are used, and before it has `short_window` previous
readings all its features are 0 ("no evidence").

Guarantee: features depend only on the reading and the `long_window` readings before
it, and are bitwise identical whether computed one reading at a time
(`StreamingFeatures.update` with one row), in micro-batches of any size, or over a
whole array at once (`compute_features`) — every path runs `_features_many` on the
same contiguous window rows, and numpy reduces each row independently.
Pure numpy: imported by the edge agent, the trainer and the Spark jobs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.errors import FeatureError

FEATURE_ALGO = "robust-blocks-v1"
FEATURE_NAMES = ("max_z_long_sq", "max_shift_sq", "max_ratio", "min_ratio")


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What the model expects as input. Its hash pins training to serving.

    Attributes:
        channels: input channels, in feature order.
        floors: per-channel noise floor (same unit as the channel), > 0.
        short_window: readings per block.
        blocks: blocks in the long window (long_window = blocks * short_window).
        clip: every feature is clipped to [-clip, clip].
    """

    channels: tuple[str, ...]
    floors: tuple[float, ...]
    short_window: int = 10
    blocks: int = 12
    clip: float = 2500.0
    algo: str = FEATURE_ALGO

    def __post_init__(self) -> None:
        if not self.channels:
            raise FeatureError("feature spec needs at least one channel")
        if len(set(self.channels)) != len(self.channels):
            raise FeatureError("feature spec has duplicate channels")
        if len(self.floors) != len(self.channels) or not all(f > 0 for f in self.floors):
            raise FeatureError("feature spec needs one positive noise floor per channel")
        if self.short_window < 2 or self.blocks < 3:
            raise FeatureError("need short_window >= 2 and blocks >= 3")
        if self.algo != FEATURE_ALGO:
            raise FeatureError(f"unknown feature algorithm {self.algo!r}; this build computes {FEATURE_ALGO!r}")

    @property
    def long_window(self) -> int:
        return self.short_window * self.blocks

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    @property
    def n_features(self) -> int:
        return len(FEATURE_NAMES)

    def to_dict(self) -> dict[str, Any]:
        return {"algo": self.algo, "channels": list(self.channels), "floors": list(self.floors),
                "short_window": self.short_window, "blocks": self.blocks, "clip": self.clip}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> FeatureSpec:
        try:
            return cls(channels=tuple(obj["channels"]), floors=tuple(float(f) for f in obj["floors"]),
                       short_window=int(obj["short_window"]), blocks=int(obj["blocks"]),
                       clip=float(obj["clip"]), algo=str(obj["algo"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatureError(f"bad feature spec: {exc!r}") from None

    @classmethod
    def fit(cls, channels: Sequence[str], streams: Iterable[np.ndarray], *, floor_fraction: float = 0.1,
            **kwargs: Any) -> FeatureSpec:
        """Spec whose floors are `floor_fraction` x each channel's noise sd, estimated robustly
        (median over streams of 1.4826·MAD(first differences)/√2) from training streams (n, C)."""
        est = []
        for values in streams:
            if len(values) < 3:
                continue
            d = np.diff(np.asarray(values, dtype=np.float64), axis=0)
            mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0)
            est.append(1.4826 * mad / np.sqrt(2.0))
        if not est:
            raise FeatureError("need at least one stream of 3+ readings to fit noise floors")
        noise = np.median(np.vstack(est), axis=0)
        floors = tuple(float(max(floor_fraction * n, 1e-9)) for n in noise)
        return cls(channels=tuple(channels), floors=floors, **kwargs)

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the spec."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _median_last(x: np.ndarray) -> np.ndarray:
    """Median along the last axis (sort + middle: much cheaper than np.median on short rows)."""
    k = x.shape[-1]
    srt = np.sort(x, axis=-1)
    mid: np.ndarray = srt[..., k // 2] if k % 2 else 0.5 * (srt[..., k // 2 - 1] + srt[..., k // 2])
    return mid


def _window_features(spec: FeatureSpec, padded: np.ndarray) -> np.ndarray:
    """Features of rows padded[L:], given padded = [previous L rows; new rows] (float64)."""
    return _features_many(spec, [padded])[0]


def _features_many(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Features for several streams at once; each item is [previous L rows; new rows] of one device.

    The streams are laid end to end and every statistic is taken only from windows inside
    one stream, so the result for a stream is bit-for-bit what it would be alone (one fixed
    run of readings, reduced by the same numpy call) — whatever else is in the call.
    Rows before a device's first reading are NaN (warm-up, see module docstring).
    """
    L, S, B = spec.long_window, spec.short_window, spec.blocks
    counts = [len(p) - L for p in padded]
    total_new = sum(counts)
    if total_new <= 0:
        return [np.zeros((max(c, 0), len(FEATURE_NAMES))) for c in counts]
    floor = np.asarray(spec.floors)[:, None]
    p = np.ascontiguousarray(np.concatenate(padded, axis=0).T)  # (C, total): channel-major
    offsets = np.cumsum([0] + [len(x) for x in padded[:-1]])
    pos = np.concatenate([off + L + np.arange(c) for off, c in zip(offsets, counts, strict=True)])  # new rows
    runs = sliding_window_view(p, S, axis=1)  # run k = readings k .. k+S-1
    run_mean = runs.mean(axis=-1)
    dev = runs - run_mean[..., None]
    run_sd = np.sqrt((dev * dev).mean(axis=-1))
    starts = pos[:, None] - L + np.arange(B)[None, :] * S  # block b of the reading at pos
    b_mean = run_mean[:, starts]  # (C, n, B)
    b_sd = run_sd[:, starts]
    diffs = np.abs(np.diff(p, axis=1))  # diffs[k] = |p[k+1] - p[k]|
    recent = sliding_window_view(diffs, S, axis=1)[:, pos - S]  # |diffs| over readings pos-S .. pos
    dscale = _median_last(recent) * (1.4826 / np.sqrt(2.0)) + floor
    s_median = _median_last(runs[:, pos - S])  # the S readings before pos
    cur = p[:, pos]
    out = np.zeros((total_new, len(FEATURE_NAMES)), dtype=np.float64)
    warming = np.isnan(b_mean[0, :, 0])
    if not warming.any():
        _summary(out, cur, b_mean, b_sd, dscale, s_median, floor)
    else:
        hot = np.flatnonzero(~warming)
        if len(hot):
            sub = np.empty((len(hot), len(FEATURE_NAMES)))
            _summary(sub, cur[:, hot], b_mean[:, hot], b_sd[:, hot], dscale[:, hot], s_median[:, hot], floor)
            out[hot] = sub
        # Warm-up rows: only the complete (most recent) blocks count; rows are grouped by how
        # many blocks are complete so each group is one vectorised call.
        complete = (~np.isnan(b_mean[0])).sum(axis=1)  # blocks fill from the most recent backwards
        for k in np.unique(complete[warming]).tolist():
            if k == 0:
                continue  # fewer than S previous readings: no evidence, features stay 0
            rows = np.flatnonzero(warming & (complete == k))
            sub = np.empty((len(rows), len(FEATURE_NAMES)))
            _summary(sub, cur[:, rows], b_mean[:, rows, B - k :], b_sd[:, rows, B - k :], dscale[:, rows],
                     s_median[:, rows], floor)
            out[rows] = sub
    np.clip(out, -spec.clip, spec.clip, out=out)
    return np.split(out, np.cumsum(counts)[:-1])


def _summary(out: np.ndarray, cur: np.ndarray, b_mean: np.ndarray, b_sd: np.ndarray,
             dscale: np.ndarray, s_median: np.ndarray, floor: np.ndarray) -> None:
    """Write the features into out (n, 4) from channel-major stats: (C, n) rows, blocks (C, n, B)."""
    scale = _median_last(b_sd) + floor
    centre = _median_last(b_mean)
    z_long = np.abs(cur - centre) / scale
    shift = np.abs(s_median - centre) / scale
    ratio = np.log(dscale / scale)
    out[:, 0] = np.square(z_long.max(axis=0))
    out[:, 1] = np.square(shift.max(axis=0))
    out[:, 2] = ratio.max(axis=0)
    out[:, 3] = ratio.min(axis=0)


def _check(spec: FeatureSpec, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(spec.channels):
        raise FeatureError(f"values must be (n, {len(spec.channels)}), got {values.shape}")
    if not np.isfinite(values).all():
        raise FeatureError("values contain NaN or inf; quarantine such readings before featurising")
    return values


def compute_features(spec: FeatureSpec, values: np.ndarray) -> np.ndarray:
    """Features of a device's whole stream (n, C) -> (n, F); row 0 is the device's first reading."""
    values = _check(spec, values)
    if len(values) == 0:
        return np.empty((0, spec.n_features))
    padded = np.concatenate([np.full((spec.long_window, values.shape[1]), np.nan), values])
    return _window_features(spec, padded)


def columns_for(spec: FeatureSpec, channels: Sequence[str]) -> list[int]:
    """Column indices of spec.channels within `channels`; raises FeatureError if any is missing."""
    missing = [c for c in spec.channels if c not in channels]
    if missing:
        raise FeatureError(f"readings lack channel(s) the model needs: {', '.join(missing)}")
    return [list(channels).index(c) for c in spec.channels]


def update_many(states: Sequence[StreamingFeatures], values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`update` for several devices in one vectorised call (same results as one call each)."""
    if not states:
        return []
    spec = states[0].spec
    padded = []
    for st, v in zip(states, values, strict=True):
        v = _check(spec, v)
        tail = st._tail if st._tail is not None else np.full((spec.long_window, v.shape[1]), np.nan)
        padded.append(np.concatenate([tail, v]))
    out = _features_many(spec, padded)
    for st, pad in zip(states, padded, strict=True):
        if len(pad) > spec.long_window:
            st._tail = pad[-spec.long_window:].copy()
    return out


class StreamingFeatures:
    """Per-device rolling state for computing features as readings arrive.

    `update(rows)` returns exactly what `compute_features` would return for those
    rows had it seen the device's whole stream so far.
    """

    __slots__ = ("_tail", "spec")

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._tail: np.ndarray | None = None

    def update(self, values: np.ndarray) -> np.ndarray:
        return update_many([self], [values])[0]
