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
readings all its features are 0 ("no evidence"; v6's burst odds take their prior value there).

Algorithms are a registry keyed by ``spec.algo`` (`ALGORITHMS`), so older bundles keep loading:

* ``robust-blocks-v1``: the four features above.
* ``robust-blocks-v2``: those four, then ``max_step_sq`` (the largest ``(|x - x_prev| / dscale)²``
  over channels: a rate of change against short-term noise), ``max_stuck_frac`` (the longest run,
  over channels, of readings equal to the one before, capped at `long_window`, as a fraction of it:
  a stuck sensor), and one ``base_z_<channel>`` per channel: ``(x - level) / spread`` against a
  baseline learned in training (the spec's `level` and `spread`), signed. A level that lasts fills
  the rolling windows and stops looking abnormal to them; against the baseline it stays visible.
* ``robust-blocks-v3``: v1's four features, two sharpened per channel (`_features_v3`): the shift at
  most ``2 · z_long`` (``max_gated_shift_sq``: it no longer outlives the fault by S readings), and a
  channel whose reading equals the two before it takes the stuck ratio ``log(f / scale)`` at once
  instead of ~6 readings in.
* ``robust-blocks-v4`` (what `model train` fitted by default from 2 to 3 December 2026): v3's
  features, the two noise ratios bounded by the reading's own last steps (`_features_v4`), so a stuck
  span, a dropout or a noise burst no longer flags the S readings after it, and a reading equal to the
  two before it at ``-clip`` in ``min_ratio``. Measured in docs/detection.md.
* ``robust-blocks-v5``: v4's features, then ``max_rough_ratio``, short-term noise on second
  differences (`_features_v5`), for smooth signals, where a first difference is mostly the slope; what
  `model train` picks for them (`models.training.autofeatures`).
* ``robust-blocks-v6`` (what `model train` fitted on a time series by default on 3 December 2026,
  until v7): v4's features, then ``max_burst_odds``: the log-odds that a channel is in a burst of
  noise, from a two-state filter over the reading and the `BURST_WINDOW` - 1 before it (`_features_v6`).
* ``robust-blocks-v7`` (the default from 3 December 2026, sixth session, `TRAIN_ALGO`): v6's features,
  computed from the same 120-reading blocks, with a memory `V7_SPAN` times as long behind them: the
  median of coarse block means over ``V7_SPAN · blocks · short_window`` readings (`_features_v7`). The
  level and shift features and the burst filter take the reading's deviation from whichever centre it
  is nearer, so when a fault as long as half the window ends, the return to the old level no longer
  looks like a new fault (the "echo" of long level shifts and drifts, docs/detection.md).
* ``values-v1``: no window at all: one ``value_z_<channel>`` per channel, ``(x - level) / spread``
  against the baseline learned in training, signed (`_features_values`). For readings that are
  independent records rather than a time series, whose order carries nothing a window could learn
  (River's Shuttle); `model train` picks it for such data (`models.training.autofeatures`).

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from models.errors import FeatureError

FEATURE_ALGO = "robust-blocks-v1"
FEATURE_ALGO_V2 = "robust-blocks-v2"
FEATURE_ALGO_V3 = "robust-blocks-v3"
FEATURE_ALGO_V4 = "robust-blocks-v4"
FEATURE_ALGO_V5 = "robust-blocks-v5"
FEATURE_ALGO_V6 = "robust-blocks-v6"
FEATURE_ALGO_V7 = "robust-blocks-v7"
FEATURE_ALGO_VALUES = "values-v1"
#: Algorithms that learn a per-channel baseline (`FeatureSpec.level` / `spread`) in training.
BASELINE_ALGOS = (FEATURE_ALGO_V2, FEATURE_ALGO_VALUES)
FEATURE_NAMES = ("max_z_long_sq", "max_shift_sq", "max_ratio", "min_ratio")
V2_EXTRA_NAMES = ("max_step_sq", "max_stuck_frac")
#: What training fits on a time series (`model train --features auto`, the default, fits it unless the
#: readings have no serial structure: `models.training.autofeatures`); the retraining job's default.
TRAIN_ALGO = FEATURE_ALGO_V7
V3_NAMES = ("max_z_long_sq", "max_gated_shift_sq", "max_ratio", "min_ratio")
V5_NAMES = (*V3_NAMES, "max_rough_ratio")
V6_NAMES = (*V3_NAMES, "max_burst_odds")
V7_NAMES = ("max_z_nearer_sq", "max_gated_shift_nearer_sq", "max_ratio", "min_ratio", "max_burst_odds_nearer")
#: v7's memory (`_features_v7`): its window is this many times v6's, read as coarse blocks of this many blocks.
V7_SPAN = 4
#: v6's burst filter (`_features_v6`): readings it reads (x and the 7 before it), the burst's noise sd in
#: units of the channel's scale, the largest |z| one reading counts with, and the chances per reading
#: that a burst begins (one in 300 readings) and that one ends (a burst lasts ~10 readings).
BURST_WINDOW = 8
BURST_SD = 8.0
BURST_MAX_Z = 3.0
BURST_ENTER = 1.0 / 300.0
BURST_EXIT = 1.0 / 10.0
#: v5's roughness: the median of this many second differences (reading x and the 8 before it).
ROUGH_N = 7
#: |second difference| -> noise sd: 1.4826 (MAD -> sd of a normal) / √6 (x - 2·x₋₁ + x₋₂ of white noise).
ROUGH_SD = 1.4826 / np.sqrt(6.0)
#: mean |second difference| -> noise sd: 1 / (√6 · √(2/π)), the mean of a half-normal.
ROUGH_MEAN_SD = float(np.sqrt(np.pi / 12.0))
#: |difference of two readings| -> noise sd: 1.4826 (MAD -> sd of a normal) / √2 (a difference of two).
DIFF_SD = 1.4826 / np.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What the model expects as input. Its hash pins training to serving.

    Attributes:
        channels: input channels, in feature order.
        floors: per-channel noise floor (same unit as the channel), > 0.
        short_window: readings per block.
        blocks: blocks in the long window (long_window = blocks * short_window; v7 remembers
            `V7_SPAN` times as far back, see `long_window`).
        clip: every feature is clipped to [-clip, clip].
        algo: the feature algorithm (a key of `ALGORITHMS`).
        level / spread: per-channel baseline learned in training (``robust-blocks-v2`` and ``values-v1``).
    """

    channels: tuple[str, ...]
    floors: tuple[float, ...]
    short_window: int = 10
    blocks: int = 12
    clip: float = 2500.0
    algo: str = FEATURE_ALGO
    level: tuple[float, ...] | None = None
    spread: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not self.channels:
            raise FeatureError("feature spec needs at least one channel")
        if len(set(self.channels)) != len(self.channels):
            raise FeatureError("feature spec has duplicate channels")
        if len(self.floors) != len(self.channels) or not all(f > 0 for f in self.floors):
            raise FeatureError("feature spec needs one positive noise floor per channel")
        if self.short_window < 2 or self.blocks < 3:
            raise FeatureError("need short_window >= 2 and blocks >= 3")
        if self.algo == FEATURE_ALGO_V5 and self.short_window < ROUGH_N + 1:
            raise FeatureError(f"{FEATURE_ALGO_V5} needs short_window >= {ROUGH_N + 1} (its roughness reads the "
                               f"{ROUGH_N + 1} readings before x)")
        if self.algo in (FEATURE_ALGO_V6, FEATURE_ALGO_V7) and self.long_window < BURST_WINDOW:
            raise FeatureError(f"{self.algo} needs a long window of at least {BURST_WINDOW} readings (its burst "
                               f"filter reads the {BURST_WINDOW - 1} readings before x)")
        if self.algo not in ALGORITHMS:
            raise FeatureError(f"unknown feature algorithm {self.algo!r}; this build computes "
                               f"{', '.join(sorted(ALGORITHMS))}")
        if self.algo in BASELINE_ALGOS:
            c = len(self.channels)
            if (self.level is None or self.spread is None or len(self.level) != c or len(self.spread) != c
                    or not all(v > 0 for v in self.spread) or not all(np.isfinite(self.level))):
                raise FeatureError(f"{self.algo} needs a finite level and a positive spread per channel")

    @property
    def long_window(self) -> int:
        """Readings before x that its features read (the window a device keeps): blocks × short_window,
        and for v7 `V7_SPAN` times that (its long memory)."""
        return self.short_window * self.blocks * (V7_SPAN if self.algo == FEATURE_ALGO_V7 else 1)

    @property
    def clean_horizon(self) -> int:
        """Readings after a labelled fault whose windows may still hold it: twice the blocks' window.
        Training calibrates only on rows past it. v7's longer memory is a median of coarse blocks,
        which a fault shorter than half of it does not move, so its horizon is v6's."""
        return 2 * self.short_window * self.blocks

    @property
    def names(self) -> tuple[str, ...]:
        if self.algo == FEATURE_ALGO_V2:
            return FEATURE_NAMES + V2_EXTRA_NAMES + tuple(f"base_z_{c}" for c in self.channels)
        if self.algo in (FEATURE_ALGO_V3, FEATURE_ALGO_V4):
            return V3_NAMES
        if self.algo == FEATURE_ALGO_V5:
            return V5_NAMES
        if self.algo == FEATURE_ALGO_V6:
            return V6_NAMES
        if self.algo == FEATURE_ALGO_V7:
            return V7_NAMES
        if self.algo == FEATURE_ALGO_VALUES:
            return tuple(f"value_z_{c}" for c in self.channels)
        return FEATURE_NAMES

    @property
    def n_features(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"algo": self.algo, "channels": list(self.channels), "floors": list(self.floors),
                               "short_window": self.short_window, "blocks": self.blocks, "clip": self.clip}
        if self.level is not None and self.spread is not None:  # v1 specs keep their old dict (and hash)
            out["level"], out["spread"] = list(self.level), list(self.spread)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> FeatureSpec:
        try:
            return cls(channels=tuple(obj["channels"]), floors=tuple(float(f) for f in obj["floors"]),
                       short_window=int(obj["short_window"]), blocks=int(obj["blocks"]),
                       clip=float(obj["clip"]), algo=str(obj["algo"]),
                       level=tuple(float(v) for v in obj["level"]) if "level" in obj else None,
                       spread=tuple(float(v) for v in obj["spread"]) if "spread" in obj else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatureError(f"bad feature spec: {exc!r}") from None

    @classmethod
    def fit(cls, channels: Sequence[str], streams: Iterable[np.ndarray], *, floor_fraction: float = 0.1,
            algo: str = FEATURE_ALGO, **kwargs: Any) -> FeatureSpec:
        """Spec whose floors are `floor_fraction` x each channel's noise sd, estimated robustly
        (median over streams of 1.4826·MAD(first differences)/√2) from training streams (n, C).

        The floor never falls below half the channel's resolution (its smallest non-zero step in any
        stream) nor 1e-6 of its typical magnitude (`stream_resolution`), so a quantised or constant
        channel does not drive the features to their clip. ``robust-blocks-v2`` also learns each
        channel's baseline: level = median of the streams' medians, spread = 1.4826·MAD of all
        readings (between-device differences included), at least 10 floors; so does ``values-v1``."""
        streams = [np.asarray(v, dtype=np.float64) for v in streams]
        est = [e for e in (stream_noise(v) for v in streams) if e is not None]
        res = [r for r in (stream_resolution(v) for v in streams) if r is not None]
        spec = cls.from_noise(channels, est, resolutions=res, floor_fraction=floor_fraction, **kwargs)
        if algo not in BASELINE_ALGOS:  # no baseline to learn: the spec records the algorithm alone
            return replace(spec, algo=algo)
        usable = [v for v in streams if len(v)]
        if not usable:
            return spec
        allv = np.vstack(usable)
        level = np.median(np.vstack([np.median(v, axis=0) for v in usable]), axis=0)
        spread = 1.4826 * np.median(np.abs(allv - level), axis=0)
        spread = np.maximum(spread, 10 * np.asarray(spec.floors))
        return replace(spec, algo=algo, level=tuple(float(v) for v in level), spread=tuple(float(v) for v in spread))

    @classmethod
    def from_noise(cls, channels: Sequence[str], estimates: Sequence[np.ndarray], *, floor_fraction: float = 0.1,
                   resolutions: Sequence[tuple[np.ndarray, np.ndarray]] = (), **kwargs: Any) -> FeatureSpec:
        """`fit` from per-stream `stream_noise` (and `stream_resolution`) estimates computed elsewhere
        (e.g. one per device on Spark): the same floors as `fit` over the same streams. Any algorithm
        but ``robust-blocks-v2`` and ``values-v1`` (`algo=`; their baseline needs the readings, `fit`)."""
        if not len(estimates):
            raise FeatureError("need at least one stream of 3+ readings to fit noise floors")
        noise = np.median(np.vstack(estimates), axis=0)
        floors = np.maximum(floor_fraction * noise, 1e-9)
        if len(resolutions):
            step = np.min(np.vstack([r[0] for r in resolutions]), axis=0)
            magnitude = np.median(np.vstack([r[1] for r in resolutions]), axis=0)
            floors = np.maximum(floors, np.where(np.isfinite(step), 0.5 * step, 0.0))
            floors = np.maximum(floors, 1e-6 * np.maximum(magnitude, 1.0))
        return cls(channels=tuple(channels), floors=tuple(float(f) for f in floors), **kwargs)

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of the spec."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def stream_noise(values: np.ndarray) -> np.ndarray | None:
    """Robust noise sd per channel of one stream (n, C): 1.4826·MAD(first differences)/√2; None below 3 rows."""
    if len(values) < 3:
        return None
    d = np.diff(np.asarray(values, dtype=np.float64), axis=0)
    mad = np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    out: np.ndarray = 1.4826 * mad / np.sqrt(2.0)
    return out


def stream_resolution(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per channel of one stream (n, C): its smallest non-zero step (inf when it never changes) and its
    median |value|; None for an empty stream. `FeatureSpec.from_noise` floors the noise with them."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return None
    steps = np.abs(np.diff(v, axis=0))
    steps = np.where(steps > 0, steps, np.inf)
    smallest = steps.min(axis=0) if len(steps) else np.full(v.shape[1], np.inf)
    return smallest, np.median(np.abs(v), axis=0)


def _median_last(x: np.ndarray) -> np.ndarray:
    """Median along the last axis (sort + middle: much cheaper than np.median on short rows)."""
    k = x.shape[-1]
    srt = np.sort(x, axis=-1)
    mid: np.ndarray = srt[..., k // 2] if k % 2 else 0.5 * (srt[..., k // 2 - 1] + srt[..., k // 2])
    return mid


@lru_cache(maxsize=16)
def median_network(k: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """A comparator network that leaves the middle order statistic(s) of k inputs on wires
    (k - 1) // 2 and k // 2: Batcher's odd-even merge sort, pruned to what those wires need.

    Each step is (a, b, keep_min, keep_max): wire a takes min(a, b) if keep_min and wire b takes
    max(a, b) if keep_max. Min and max are exact, so the median equals the sorted one bit for bit.
    """
    n = 1
    while n < k:
        n *= 2
    comps: list[tuple[int, int]] = []
    p = 1
    while p < n:
        step = p
        while step >= 1:
            for j in range(step % p, n - step, 2 * step):
                for i in range(min(step, n - j - step)):
                    if (i + j) // (2 * p) == (i + j + step) // (2 * p):
                        comps.append((i + j, i + j + step))
            step //= 2
        p *= 2
    need = {(k - 1) // 2, k // 2}
    ops: list[tuple[int, int, bool, bool]] = []
    for a, b in reversed(comps):
        if b >= k:  # wires k.. hold +inf in the padded sort: the comparator changes nothing
            continue
        keep_min, keep_max = a in need, b in need
        if keep_min or keep_max:
            ops.append((a, b, keep_min, keep_max))
            need |= {a, b}
    return tuple(reversed(ops))


def _median_of(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Elementwise median of k same-shaped arrays (k >= 2) through `median_network(k)`.

    Vectorised across elements (contiguous min/max passes), about 2.5x faster than sorting
    short rows; identical to `_median_last(np.stack(columns, -1))`.
    """
    k = len(columns)
    w = list(columns)
    for a, b, keep_min, keep_max in median_network(k):
        x, y = w[a], w[b]
        if keep_min:
            w[a] = np.minimum(x, y)
        if keep_max:
            w[b] = np.maximum(x, y)
    mid: np.ndarray = w[k // 2] if k % 2 else 0.5 * (w[k // 2 - 1] + w[k // 2])
    return mid


def _run_mean(p: np.ndarray, s: int) -> np.ndarray:
    """Mean of every run of s consecutive columns (run k covers p[:, k : k+s]), summed in a fixed order."""
    k = p.shape[1] - s + 1
    acc = p[:, 0:k].copy()
    for j in range(1, s):
        acc += p[:, j : j + k]
    out: np.ndarray = acc / s
    return out


def _run_stats(p: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) sd of every run of s consecutive readings: run k covers p[:, k : k+s].

    Summed reading by reading in a fixed order, so a run's statistics depend only on its own
    readings, never on where it sits in the array (this keeps features chunking-invariant).
    """
    k = p.shape[1] - s + 1
    mean = _run_mean(p, s)
    var = np.zeros_like(mean)
    dev = np.empty_like(mean)
    for j in range(s):
        np.subtract(p[:, j : j + k], mean, out=dev)
        np.multiply(dev, dev, out=dev)
        var += dev
    var /= s
    return mean, np.sqrt(var, out=var)


def _window_features(spec: FeatureSpec, padded: np.ndarray) -> np.ndarray:
    """Features of rows padded[L:], given padded = [previous L rows; new rows] (float64)."""
    return _features_many(spec, [padded])[0]


def _features_many(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Features for several streams at once, by the spec's algorithm (each item: [previous L rows;
    new rows] of one device)."""
    return ALGORITHMS[spec.algo](spec, padded)


def _features_v2(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``robust-blocks-v2``: v1's features, then step, stuck and baseline features (module docstring).

    Each extra feature of a reading reads only that reading, the one before it and, for the stuck
    run, at most the `long_window` before: the run is counted within the padded window and capped at
    `long_window`, so it does not depend on how much history a call holds."""
    assert spec.level is not None and spec.spread is not None
    base = _features_v1(spec, padded)
    L = spec.long_window
    level, spread = np.asarray(spec.level)[:, None], np.asarray(spec.spread)[:, None]
    out = []
    for pad, feats in zip(padded, base, strict=True):
        n = len(pad) - L
        if n <= 0:
            out.append(np.zeros((0, spec.n_features)))
            continue
        p = pad.T  # (C, L + n)
        cur, prev = p[:, L:], p[:, L - 1 : -1]
        changed = ~(p[:, 1:] == p[:, :-1])  # NaN (no history) counts as a change
        idx = np.arange(1, p.shape[1])
        last_change = np.maximum.accumulate(np.where(changed, idx, 0), axis=1)
        run = np.minimum(idx - last_change, L)[:, L - 1 :]  # readings equal to the one before, up to x
        with np.errstate(invalid="ignore"):
            dscale = _dscale(p, spec)  # NaN until S + 1 readings: no evidence, step 0
            step = np.abs(cur - prev) / np.where(np.isfinite(dscale), dscale, 1.0)
        step = np.where(np.isfinite(step) & np.isfinite(dscale), step, 0.0)
        extra = np.empty((n, 2 + p.shape[0]))
        extra[:, 0] = np.square(step.max(axis=0))
        extra[:, 1] = run.max(axis=0) / L
        extra[:, 2:] = ((cur - level) / spread).T
        np.clip(extra, -spec.clip, spec.clip, out=extra)
        out.append(np.hstack([feats, extra]))
    return out


def _features_v3(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``robust-blocks-v3``: v1's four features, two of them sharpened per channel.

    * Shift gated by the reading: v1's shift is the median of the S readings before x against the
      centre, so for up to S readings after a level shift, a dropout or a stuck span ends it still
      holds the fault and flags readings that are back to normal. v3 keeps it only as far as x itself
      carries it: ``min(shift, 2 · z_long)``. A shift in progress passes, its aftermath does not.
    * Stuck from the third equal reading: v1's ratio reaches a stuck channel's value (dscale at its
      floor) only once most of the S steps before x are zero, ~6 readings into the fault. When x equals
      the two readings before it, v3 takes that value at once: ``min(ratio, log(f / scale))``. A
      continuous channel never repeats a value in normal operation, so normal readings are untouched;
      on a quantised one repeats are normal and the forest learns them as such.

    Each reads x, the two readings before it and v1's statistics, by the same float operations
    wherever the reading sits, so the batch-size invariance holds as for v1."""
    return _block_features(spec, padded, _summary_v3)


def _features_v4(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``robust-blocks-v4``: v3's features, the two noise ratios bounded by the reading's own steps.

    v1's ratio compares dscale, the median of the last S steps, with the block scale. When a stuck
    span, a dropout or a noise burst ends, up to half of those S steps still belong to the fault, so
    for up to S readings after it the ratio stays at the fault's value and flags readings that are
    back to normal (in December 2026 these were most of the false alarms on those faults). v4 keeps
    the ratio only as far as the reading's own last steps carry it, on the ratio's scale:

    * high (noise): at most ``log(k · max(|Δ0|, |Δ1|, |Δ2|) / scale)``, the largest of the last three
      steps: a burst in progress passes (three quiet steps in a row are rare in it), its aftermath
      ends three readings after the burst;
    * low (stuck): at least ``log(k · max(|Δ0|, |Δ1|) / scale)``: a reading that moved is not stuck;
      and when x equals the two readings before it, ``-inf`` (so ``-clip``): where v3 took the floor's
      ratio ``log(f / scale)``, which lies within reach of a normal channel's own low ratios (f is a
      tenth of the noise), v4 states "no step at all" as the most extreme value the feature has. On a
      continuous channel no fitted row holds it, so the range guard (`models.training.guard`) flags it
      from the third equal reading whatever the training data held; on a quantised channel, where
      repeats are normal, the fitted rows hold it and the forest learns it as normal.

    Same reading window and float path as v3, so the batch-size invariance holds."""
    return _block_features(spec, padded, _summary_v4)


def _features_values(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``values-v1``: each reading's own channel values against the training baseline, ``(x - level) /
    spread`` per channel, signed, clipped to [-clip, clip]. No window and no warm-up: a reading's
    features read that reading alone, so the batch-size invariance holds trivially (the padded
    history is ignored)."""
    assert spec.level is not None and spec.spread is not None
    L = spec.long_window
    level, spread = np.asarray(spec.level), np.asarray(spec.spread)
    out = []
    for pad in padded:
        z = (pad[L:] - level) / spread
        out.append(np.clip(z, -spec.clip, spec.clip, out=z))
    return out


def _features_v5(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``robust-blocks-v5``: v4's features, then ``max_rough_ratio``: short-term noise measured on
    second differences, for signals sampled faster than they change.

    On such a signal (a pressure wave, a temperature curve) a first difference is mostly the signal's
    own slope and a block's sd mostly its swing, so v4's noise ratio follows the waveform and a burst
    of noise hides in it. A second difference ``x - 2·x₋₁ + x₋₂`` cancels any locally straight stretch
    and leaves the noise. Per channel::

        rough  = ROUGH_SD · median of the last ROUGH_N |second differences| + f   (x and the 8 before)
        rscale = ROUGH_MEAN_SD · median over the B blocks of their mean |second difference| + f
        max_rough_ratio = max over channels of min(log(rough / rscale), log(recent / rscale))

    where ``recent`` is the same as ``rough`` over the reading's own last two second differences: the
    median of 7 ignores one spike or step (each moves at most 3 second differences), and the bound ends
    the feature with the burst, as v4 bounds its ratios. A block's mean uses only the second
    differences inside it, so nothing is read before the reading's window.

    On a noise-dominated channel it adds little to v4's ratio and costs some spike precision
    (measured in docs/detection.md), so ``--features auto`` picks v5 only for smooth signals
    (`models.training.autofeatures`). Needs ``short_window >= 8`` (the 8 readings before x lie in the
    short window); same float operations wherever the reading sits, so the batch-size invariance
    holds as for v4."""
    return _block_features(spec, padded, _summary_v5, rough=True)


def _features_v6(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``robust-blocks-v6``: v4's features, then ``max_burst_odds``: how likely it is that a channel is
    in a burst of noise, from the reading and the few before it.

    v4 sees a burst through its noise ratio, the median of the last S steps, which moves only once about
    half of them are noisy: ~5 readings into a burst (recall 0.34-0.38 at the 2nd to 5th reading, in
    docs/detection.md), and a burst's readings one at a time, through z_long, pass the threshold about
    half the time. A filter that weighs each reading as evidence gets there in two or three. Per channel,
    with ``z = (x - centre) / scale`` for x and each of the `BURST_WINDOW` - 1 readings before it (the
    block statistics of x's own window), a two-state filter (normal, or a burst of noise `BURST_SD` times
    the scale) runs from the oldest to x::

        prior = p · (1 - BURST_EXIT) + (1 - p) · BURST_ENTER    (p: burst, after the reading before;
        r     = exp(½ · (1 - 1/BURST_SD²) · min(z², BURST_MAX_Z²)) / BURST_SD      BURST_ENTER before the oldest)
        p     = prior · r / (prior · r + 1 - prior)

    and ``max_burst_odds`` is the largest over channels of ``log(prior · r) - log(1 - prior)`` at x: the
    log-odds of a burst. A reading's evidence is capped at ``|z| = BURST_MAX_Z``, so one spike moves the
    odds by at most ~2.35 (from -5.7): a burst needs several deviating readings close together, and the
    feature falls back within two or three readings after one ends. The filter starts at the device's
    first reading when the window reaches back before it, and a reading with no S readings before it
    (whose v4 features are 0, "no evidence") takes the odds before any reading, ``log(BURST_ENTER /
    (1 - BURST_ENTER))``: a 0 there would read as a burst half under way, and a model would learn the
    first readings of every device as unusual.

    Measured in docs/detection.md (3 December 2026; settings chosen on simulator seeds 101 and 201,
    confirmed on 301 and 401): noise-burst F1 up 0.04-0.06, drift up 0.01, dropouts down 0.01, spikes
    and dips within the seeds' spread. Elementwise operations on each reading's own window rows, so the
    batch-size invariance holds as for v4."""
    return _block_features(spec, padded, _summary_v6, no_evidence=_V6_NO_EVIDENCE)


def _features_v7(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``robust-blocks-v7``: v6's features from the same blocks, with a longer memory behind them, so the
    end of a long fault no longer looks like a new one.

    v6's centre is the median of the 12 block means over the last 120 readings. A level shift or a drift
    that lasts ~60 readings or more becomes that centre, and when it ends, the return to the true level
    stands as far from the centre as the fault did: the level, shift and burst features flag 60-odd
    normal readings after it, a second alert event (measured in docs/detection.md: 1,190 false flags
    after 18 long faults on a 6-device fleet; 697 of the demo's 821). v7's window is `V7_SPAN` times as
    long (480 readings by default), read as coarse blocks of `V7_SPAN` blocks; ``far`` = the median of
    their means (a fault shorter than half the window does not move it). Per channel::

        z     = min(|x - centre|, |x - far|) / scale
        shift = min(min(|median(W_S) - centre|, |median(W_S) - far|) / scale, 2 · z)
        burst odds: v6's filter with each reading's z² = min((x - centre)², (x - far)²) / scale²

    and the ratios are v4's (the same blocks: the newest 120 readings). A fault is far from both
    centres; its end is near the far one. Until the device has a whole window, ``far`` is NaN and the
    features are v6's (the minima ignore it). Same float operations on each reading's own window, so the
    batch-size invariance holds as for v6."""
    return _block_features(spec, padded, _summary_v7, no_evidence=_V6_NO_EVIDENCE, memory=True)


def _dscale(p: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """v1's short-term noise scale of each new reading of one padded stream (C, L + n), same operations."""
    L, S = spec.long_window, spec.short_window
    m = p.shape[1] - L
    diffs = np.abs(np.diff(p, axis=1))
    floor = np.asarray(spec.floors)[:, None]
    med = _median_of([diffs[:, L - S + j : L - S + j + m] for j in range(S)])
    out: np.ndarray = med * DIFF_SD + floor
    return out


def _features_v1(spec: FeatureSpec, padded: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``robust-blocks-v1`` for several streams at once (`_block_features` with v1's `_summary`)."""
    return _block_features(spec, padded, _summary)


@dataclass(frozen=True, slots=True)
class Stats:
    """The per-channel statistics of the readings being featurised, channel-major (C, n): the reading,
    the three before it (NaN where the device has none), the block centre and scale, dscale, the median
    of the S readings before, the noise floors (C, 1), `back(k)`: the readings k before (k <= long_window,
    computed on demand), and for v5 the roughness scale: the median over the blocks of their mean
    |second difference|, on the sd's scale (`ROUGH_MEAN_SD`), plus the floor; for v7 `far`, the centre of
    its long memory (NaN until the device has a whole window)."""

    cur: np.ndarray
    prev: np.ndarray
    prev2: np.ndarray
    prev3: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    dscale: np.ndarray
    s_median: np.ndarray
    floor: np.ndarray
    back: Callable[[int], np.ndarray]
    rscale: np.ndarray | None = None
    far: np.ndarray | None = None


#: `Stats` -> features (n, F).
Summary = Callable[[Stats], np.ndarray]


def _block_features(spec: FeatureSpec, padded: Sequence[np.ndarray], summary: Summary,
                    rough: bool = False, no_evidence: np.ndarray | None = None,
                    memory: bool = False) -> list[np.ndarray]:
    """Block statistics for several streams at once, summarised into features by `summary`; each item
    is [previous L rows; new rows] of one device.

    The streams are laid end to end (channel-major) and every statistic of a reading is
    taken only from that reading's own window, by the same sequence of float operations
    wherever the reading sits, so the result for a stream is bit-for-bit what it would be
    alone — whatever else is in the call. Rows before a device's first reading are NaN
    (warm-up, see module docstring).

    Row r of the concatenation (r >= L) has its blocks starting at runs r-L, r-L+S, …; the
    statistics of all such rows are shifted slices of the run statistics, so when most rows
    are new ("dense") every row is computed with plain contiguous slices and the new ones
    picked at the end; otherwise the new rows are gathered first.

    `rough`: also the blocks' roughness scale (`Stats.rscale`, v5), from each block's own second
    differences only, so it never reads before the reading's window either.

    `no_evidence`: the features of a reading with fewer than S previous readings (default all 0).

    `memory` (v7): the window is `V7_SPAN` times the blocks' (`FeatureSpec.long_window`); the B blocks
    are its newest S · B readings, and `Stats.far` is the median of the B coarse block means over the
    whole window (each the mean of `V7_SPAN` consecutive block means, summed in a fixed order), NaN
    while the window reaches before the device's first reading, and for warm-up rows. When the new rows are
    gathered, everything but `far` is computed on the windows without their oldest readings (same values,
    a quarter of the work: the agent's case, many devices with a few rows each).
    """
    L, S, B = spec.long_window, spec.short_window, spec.blocks
    off = L - S * B  # where the blocks start in the window: 0 but for v7's longer memory
    counts = [len(p) - L for p in padded]
    total_new = sum(counts)
    if total_new <= 0:
        return [np.zeros((max(c, 0), spec.n_features)) for c in counts]
    floor = np.asarray(spec.floors)[:, None]
    p = np.ascontiguousarray(np.concatenate(padded, axis=0).T)  # (C, total): channel-major
    m = p.shape[1] - L  # candidate rows: row i stands for reading L + i of the concatenation
    offsets = np.cumsum([0] + [len(x) for x in padded[:-1]])
    new = np.concatenate([o + np.arange(c) for o, c in zip(offsets, counts, strict=True)])
    dense = m <= 2 * total_new

    def at(a: np.ndarray, shift: int) -> np.ndarray:
        """a[:, i + shift] for the rows computed (all candidates when dense, else the new ones)."""
        return a[:, shift : shift + m] if dense else np.take(a, new + shift, axis=1)

    # The block statistics read only the newest S · B readings of each window. When the window is
    # longer (v7) and the new rows are few, they come from `h`: each stream without its oldest `off`
    # readings, so the runs before the blocks are never computed (a run's statistics depend on its own
    # readings only, so the values are the same bit for bit). `h` is dense or gathered on its own.
    h, h_off, h_new = p, off, new
    if off and not dense:
        h = np.ascontiguousarray(np.concatenate([x[off:] for x in padded], axis=0).T)
        h_off = 0
        h_new = np.concatenate([o + np.arange(c) for o, c in
                                zip(offsets - off * np.arange(len(padded)), counts, strict=True)])
    h_L = L - off + h_off  # the reading's column in `h`, from its window's start
    m_h = h.shape[1] - h_L
    h_dense = m_h <= 2 * total_new

    def h_at(a: np.ndarray, shift: int) -> np.ndarray:
        """`at` for `h`."""
        return a[:, shift : shift + m_h] if h_dense else np.take(a, h_new + shift, axis=1)

    with np.errstate(invalid="ignore"):  # warm-up rows carry NaN; they are redone below
        run_mean, run_sd = _run_stats(h, S)
        b_mean = [h_at(run_mean, h_off + b * S) for b in range(B)]
        diffs = np.abs(np.diff(h, axis=1))  # diffs[k] = |h[k+1] - h[k]|
        dscale = _median_of([h_at(diffs, h_L - S + j) for j in range(S)]) * DIFF_SD + floor
        s_median = _median_of([h_at(h, h_L - S + j) for j in range(S)])  # the S readings before
        centre = _median_of(b_mean)
        scale = _median_of([h_at(run_sd, h_off + b * S) for b in range(B)]) + floor
        run_r = rscale = None
        if rough:
            d2 = np.abs(h[:, 2:] - 2.0 * h[:, 1:-1] + h[:, :-2])  # d2[:, c - 2]: the one ending at reading c
            run_r = _run_mean(d2, S - 2)  # run k: block k's own, ending at readings k + 2 .. k + S - 1
            rscale = _median_of([h_at(run_r, h_off + b * S) for b in range(B)]) * ROUGH_MEAN_SD + floor
        far = None
        if memory:  # coarse run k: the mean of the V7_SPAN block runs from k on, summed in a fixed order
            full_mean = run_mean if h is p else _run_mean(p, S)
            k = full_mean.shape[1] - (V7_SPAN - 1) * S
            run_coarse = full_mean[:, :k].copy()
            for i in range(1, V7_SPAN):
                run_coarse += full_mean[:, i * S : i * S + k]
            run_coarse *= 1.0 / V7_SPAN
            far = _median_of([at(run_coarse, j * V7_SPAN * S) for j in range(L // (S * V7_SPAN))])
            if h_dense and not dense:  # the new rows' `far` in the rows `h` computes
                far_new, far = far, np.full((far.shape[0], m_h), np.nan)
                far[:, h_new] = far_new
        out = summary(Stats(h_at(h, h_L), h_at(h, h_L - 1), h_at(h, h_L - 2), h_at(h, h_L - 3), centre, scale,
                            dscale, s_median, floor, lambda k: h_at(h, h_L - k), rscale, far))
    if h_dense:
        out = out[h_new]
    first_block = b_mean[0][0, h_new] if h_dense else b_mean[0][0]
    warming = np.isnan(first_block)
    if warming.any():
        # Warm-up rows: only the complete (most recent) blocks count; rows are grouped by how
        # many blocks are complete so each group is one vectorised call.
        rows = h_new[warming]
        starts = rows[:, None] + h_off + np.arange(B)[None, :] * S
        wb_mean, wb_sd = run_mean[:, starts], run_sd[:, starts]  # (C, w, B)
        complete = (~np.isnan(wb_mean[0])).sum(axis=1)  # blocks fill from the most recent backwards
        sub_idx = np.flatnonzero(warming)
        w_dscale = dscale[:, rows] if h_dense else dscale[:, sub_idx]
        w_smed = s_median[:, rows] if h_dense else s_median[:, sub_idx]
        w_cur, w_prev, w_prev2, w_prev3 = (h[:, rows + h_L - k] for k in range(4))
        wb_r = run_r[:, starts] if run_r is not None else None
        for k in np.unique(complete).tolist():
            sel = complete == k
            if k == 0:  # fewer than S previous readings: no evidence, features are 0
                out[sub_idx[sel]] = 0.0 if no_evidence is None else no_evidence
                continue
            out[sub_idx[sel]] = summary(Stats(w_cur[:, sel], w_prev[:, sel], w_prev2[:, sel], w_prev3[:, sel],
                                              _median_last(wb_mean[:, sel, B - k :]),
                                              _median_last(wb_sd[:, sel, B - k :]) + floor, w_dscale[:, sel],
                                              w_smed[:, sel], floor, _back(h, rows[sel] + h_L),
                                              None if wb_r is None else
                                              _median_last(wb_r[:, sel, B - k :]) * ROUGH_MEAN_SD + floor,
                                              np.full(w_cur[:, sel].shape, np.nan) if memory else None))
    np.clip(out, -spec.clip, spec.clip, out=out)
    return np.split(out, np.cumsum(counts)[:-1])


ALGORITHMS: dict[str, Callable[[FeatureSpec, Sequence[np.ndarray]], list[np.ndarray]]] = {
    FEATURE_ALGO: _features_v1,
    FEATURE_ALGO_V2: _features_v2,
    FEATURE_ALGO_V3: _features_v3,
    FEATURE_ALGO_V4: _features_v4,
    FEATURE_ALGO_V5: _features_v5,
    FEATURE_ALGO_V6: _features_v6,
    FEATURE_ALGO_V7: _features_v7,
    FEATURE_ALGO_VALUES: _features_values,
}


def _back(p: np.ndarray, at: np.ndarray) -> Callable[[int], np.ndarray]:
    """`Stats.back` for the readings at columns `at` of the channel-major history `p`."""
    return lambda k: p[:, at - k]


def _summary(st: Stats) -> np.ndarray:
    """v1's features (n, 4)."""
    z_long = np.abs(st.cur - st.centre) / st.scale
    ratio = np.log(st.dscale / st.scale)
    return _four(z_long, np.abs(st.s_median - st.centre) / st.scale, ratio, ratio)


def _gated(st: Stats) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """v3's and v4's per-channel z_long, shift gated by the reading, ratio, and whether the reading
    equals the two before it."""
    z_long = np.abs(st.cur - st.centre) / st.scale
    shift = np.minimum(np.abs(st.s_median - st.centre) / st.scale, 2.0 * z_long)
    ratio = np.log(st.dscale / st.scale)
    held = (st.cur == st.prev) & (st.prev == st.prev2)  # NaN (no history) is never equal
    return z_long, shift, ratio, held


def _summary_v3(st: Stats) -> np.ndarray:
    """v3's features (n, 4): v1's, the shift gated by the reading, the stuck ratio from the third equal
    reading (see `_features_v3`)."""
    z_long, shift, ratio, held = _gated(st)
    return _four(z_long, shift, ratio, np.where(held, np.minimum(ratio, np.log(st.floor / st.scale)), ratio))


def _summary_v4(st: Stats) -> np.ndarray:
    """v4's features (n, 4): v3's z_long and gated shift, the noise ratios bounded by the reading's own
    last steps and a held reading's stuck ratio at -inf (see `_features_v4`)."""
    z_long, shift, ratio, held = _gated(st)
    return _four(z_long, shift, *_bounded_ratios(st, ratio, held))


def _bounded_ratios(st: Stats, ratio: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """v4's per-channel noise ratio (high) and stuck ratio (low), bounded by the reading's own last steps."""
    d0, d1, d2 = np.abs(st.cur - st.prev), np.abs(st.prev - st.prev2), np.abs(st.prev2 - st.prev3)
    # fmax / fmin: a step the device has no history for (NaN) bounds nothing
    # on dscale's scale (DIFF_SD, plus the floor), so the bounds are on ratio's own scale
    recent_hi = np.log((np.fmax(np.fmax(d0, d1), d2) * DIFF_SD + st.floor) / st.scale)
    recent_lo = np.log((np.fmax(d0, d1) * DIFF_SD + st.floor) / st.scale)
    ratio_lo = np.where(held, -np.inf, np.fmax(ratio, recent_lo))  # clipped to -clip: see `_features_v4`
    return np.fmin(ratio, recent_hi), ratio_lo


def _summary_v5(st: Stats) -> np.ndarray:
    """v5's features (n, 5): v4's, then the roughness ratio (see `_features_v5`)."""
    assert st.rscale is not None
    x = [st.back(k) for k in range(ROUGH_N + 2)]
    d2 = [np.abs(x[k] - 2.0 * x[k + 1] + x[k + 2]) for k in range(ROUGH_N)]  # d2[0]: the one ending at x
    rough = np.log((_median_of(d2) * ROUGH_SD + st.floor) / st.rscale)
    recent = np.log((np.maximum(d2[0], d2[1]) * ROUGH_SD + st.floor) / st.rscale)
    out = np.empty((st.cur.shape[1], len(V5_NAMES)), dtype=np.float64)
    out[:, :4] = _summary_v4(st)
    out[:, 4] = np.minimum(rough, recent).max(axis=0)
    return out


#: v6's features of a reading with fewer than S previous readings: v4's 0 ("no evidence"), and the burst
#: odds before any reading, the log-odds that a burst begins (0 there would be a burst's odds half way).
_V6_NO_EVIDENCE = np.array([0.0, 0.0, 0.0, 0.0, np.log(BURST_ENTER) - np.log1p(-BURST_ENTER)])


def _summary_v6(st: Stats) -> np.ndarray:
    """v6's features (n, 5): v4's, then the burst odds (see `_features_v6`)."""
    out = np.empty((st.cur.shape[1], len(V6_NAMES)), dtype=np.float64)
    out[:, :4] = _summary_v4(st)
    out[:, 4] = _burst_odds(st).max(axis=0)
    return out


def _summary_v7(st: Stats) -> np.ndarray:
    """v7's features (n, 5) (see `_features_v7`)."""
    assert st.far is not None
    z = np.fmin(np.abs(st.cur - st.centre), np.abs(st.cur - st.far)) / st.scale  # fmin: far NaN -> the centre's
    shift = np.fmin(np.abs(st.s_median - st.centre), np.abs(st.s_median - st.far)) / st.scale
    ratio = np.log(st.dscale / st.scale)
    held = (st.cur == st.prev) & (st.prev == st.prev2)  # as `_gated`
    out = np.empty((st.cur.shape[1], len(V7_NAMES)), dtype=np.float64)
    out[:, :4] = _four(z, np.minimum(shift, 2.0 * z), *_bounded_ratios(st, ratio, held))
    out[:, 4] = _burst_odds(st, nearer=True).max(axis=0)
    return out


def _burst_odds(st: Stats, nearer: bool = False) -> np.ndarray:
    """Per channel (C, n): v6's log-odds of a burst at the reading (see `_features_v6`), in as few array
    operations as the filter allows (it runs on every micro-batch at the edge): with ``e = BURST_SD · r``
    the update is ``p = prior · e / (prior · (e - BURST_SD) + BURST_SD)``. `nearer` (v7): each reading's
    deviation from the nearer of the centre and `Stats.far`."""
    k2 = 0.5 * (1.0 - 1.0 / (BURST_SD * BURST_SD)) / (st.scale * st.scale)  # z² · q = d² · k2
    cap = 0.5 * (1.0 - 1.0 / (BURST_SD * BURST_SD)) * BURST_MAX_Z * BURST_MAX_Z
    stay = 1.0 - BURST_EXIT - BURST_ENTER
    # history is contiguous: when the oldest reading of the window exists, every newer one does
    gaps = bool(np.isnan(st.back(BURST_WINDOW - 1)).any())
    p = np.full(st.cur.shape, BURST_ENTER)  # before the oldest reading: the chance a burst begins
    for k in range(BURST_WINDOW - 1, -1, -1):
        x = st.back(k)
        d = x - st.centre
        np.multiply(d, d, out=d)
        if nearer:
            assert st.far is not None
            e_far = x - st.far
            np.fmin(d, np.multiply(e_far, e_far, out=e_far), out=d)
        np.multiply(d, k2, out=d)
        e = np.exp(np.minimum(d, cap, out=d), out=d)  # BURST_SD · r
        prior = p * stay
        prior += BURST_ENTER  # = p · (1 - EXIT) + (1 - p) · ENTER
        if gaps:  # before the device's first reading: the filter has not started (NaN: no evidence)
            missing = np.isnan(e)
            prior = np.where(missing, p, prior)
            e = np.where(missing, BURST_SD, e)
        num = prior * e
        den = e - BURST_SD
        den *= prior
        den += BURST_SD
        p = num / den  # = prior · r / (prior · r + 1 - prior)
    out: np.ndarray = np.log(num / BURST_SD) - np.log1p(-prior)
    return out


def _four(z_long: np.ndarray, shift: np.ndarray, ratio_hi: np.ndarray, ratio_lo: np.ndarray) -> np.ndarray:
    """Per-channel statistics (C, n) summarised across channels: max z_long², max shift², max ratio,
    min ratio (the noise ratio from `ratio_hi`, the stuck ratio from `ratio_lo`)."""
    out = np.empty((z_long.shape[1], len(FEATURE_NAMES)), dtype=np.float64)
    out[:, 0] = np.square(z_long.max(axis=0))
    out[:, 1] = np.square(shift.max(axis=0))
    out[:, 2] = ratio_hi.max(axis=0)
    out[:, 3] = ratio_lo.min(axis=0)
    return out


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

    @property
    def tail(self) -> np.ndarray | None:
        """The last `long_window` readings seen (None before any): replaced by `update`, never changed in
        place, so a reference taken now keeps this moment's window."""
        return self._tail

    @tail.setter
    def tail(self, value: np.ndarray | None) -> None:
        self._tail = value

    def update(self, values: np.ndarray) -> np.ndarray:
        return update_many([self], [values])[0]
