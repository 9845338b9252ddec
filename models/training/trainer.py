"""Train an outlier model on readings and package it as a bundle.

Default estimator: Pipeline(StandardScaler, IsolationForest). Features come from
models.features, the same code the agent runs.

Which rows are used (when the data carries labels):
* the forest is fitted on the rows labelled normal;
* the threshold is the (1 - target_fpr) quantile of the scores of *clean* normal
  rows — normal rows with no labelled fault among the device's previous
  `FeatureSpec.clean_horizon` readings (twice the blocks' window: 240 by default). Right after
  a fault the windows still hold it, so those
  rows look unusual; calibrating on them would push the threshold up to where the
  forest's score saturates and real faults fall below it.
Without labels every row is used for both. On data like the training data about
`target_fpr` of clean normal readings are flagged.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from contracts.block import ReadingBlock, device_spans
from contracts.manifest import ModelManifest
from models.bundle import sha256_bytes
from models.errors import TrainingError
from models.features import FeatureSpec, columns_for, compute_features
from models.training import autofeatures
from models.training.autofeatures import AUTO
from models.training.guard import RangeGuard, append_to_onnx


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (all have defaults that work for the simulator's fleet).

    Attributes:
        name: model family name, usually the device type.
        n_estimators / max_samples / max_features: IsolationForest settings.
        seed: random_state of the forest.
        target_fpr: target false-alarm rate: fraction of normal readings allowed above the threshold
            (calibrated by `models.training.threshold.calibrate`).
        holdout_fraction: the last fraction of each device's readings is held out of fitting and
            calibration; the false-alarm rate the threshold achieves there is reported
            (``training.held_out``). 0 turns it off.
        exclude_labelled: drop rows labelled anomalous before fitting (when labels exist).
        form: "fused" (default; falls back to skl2onnx for estimators it cannot fuse)
            or "skl2onnx".
        short_window / blocks: feature windows (see models.features).
        features: the feature algorithm (`models.features.ALGORITHMS`), or "auto" (the default): the
            time-series features (`models.features.TRAIN_ALGO`) unless the readings have no serial
            structure, then ``values-v1`` (`models.training.autofeatures`; `resolve_features`).
        range_guard: add the range guard to the score (`models.training.guard`): a row outside the
            range of the calibration rows scores higher by how far out it lies, which the forest
            alone cannot say. On by default since December 2026.
    """

    name: str = "edgeflag"
    n_estimators: int = 100
    max_samples: int = 256
    max_features: float = 1.0
    seed: int = 0
    target_fpr: float = 0.001
    holdout_fraction: float = 0.2
    exclude_labelled: bool = True
    form: str = "fused"
    short_window: int = 10
    blocks: int = 12
    features: str = AUTO
    range_guard: bool = True
    channels: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.target_fpr < 0.5:
            raise TrainingError("target_fpr must be in (0, 0.5)")
        if not 0 <= self.holdout_fraction < 0.9:
            raise TrainingError("holdout_fraction must be in [0, 0.9)")
        if self.form not in ("fused", "skl2onnx"):
            raise TrainingError(f"form must be 'fused' or 'skl2onnx', got {self.form!r}")
        from models.features import ALGORITHMS

        if self.features != AUTO and self.features not in ALGORITHMS:
            raise TrainingError(f"features must be {AUTO} or one of {', '.join(sorted(ALGORITHMS))}, "
                                f"got {self.features!r}")
        if self.n_estimators < 1:
            raise TrainingError("n_estimators must be >= 1")


@dataclass(frozen=True)
class FeatureTable:
    """Features of many devices stacked, with ground truth when the data had it."""

    x: np.ndarray
    labels: np.ndarray | None
    faults: list[str] | None
    devices: list[str]


def feature_table(blocks: Mapping[str, ReadingBlock], spec: FeatureSpec) -> FeatureTable:
    """Compute features per device (each device's stream on its own) and stack them."""
    xs, labels, faults, devices = [], [], [], []
    have_labels = all(b.labels is not None for b in blocks.values())
    for dev, block in blocks.items():
        cols = columns_for(spec, block.channels)
        xs.append(compute_features(spec, block.values[:, cols]))
        devices += [dev] * len(block)
        if have_labels:
            assert block.labels is not None and block.faults is not None
            labels.append(block.labels)
            faults += list(block.faults)
    if not xs:
        raise TrainingError("no readings to build features from")
    return FeatureTable(x=np.vstack(xs), labels=np.concatenate(labels) if have_labels else None,
                        faults=faults if have_labels else None, devices=devices)


def clean_rows(blocks: Mapping[str, ReadingBlock], horizon: int) -> np.ndarray:
    """Per row (in feature_table order): no labelled fault in this or the previous `horizon` readings."""
    out = []
    for block in blocks.values():
        if block.labels is None:
            out.append(np.ones(len(block), dtype=bool))
            continue
        hits = np.convolve(block.labels.astype(np.int64), np.ones(horizon + 1, dtype=np.int64))[: len(block)]
        out.append(hits == 0)
    return np.concatenate(out)


def holdout_rows(devices: Sequence[str], fraction: float) -> np.ndarray:
    """Per row (rows of a device in time order): is it in the last `fraction` of its device's rows."""
    out = np.zeros(len(devices), dtype=bool)
    if fraction <= 0:
        return out
    for a, b in device_spans(devices):
        k = int((b - a) * fraction)
        out[b - k:b] = k > 0
    return out


@dataclass(frozen=True)
class TrainedModel:
    pipeline: Any
    spec: FeatureSpec
    threshold: float
    summary: dict[str, Any]
    guard: RangeGuard | None = None

    def scores(self, x: np.ndarray) -> np.ndarray:
        """The reference scores of feature rows (scikit-learn, plus the range guard): what the exported
        ONNX graph computes."""
        from models.training.stock import sklearn_scores

        out = sklearn_scores(self.pipeline, x)
        return out + self.guard.excess(x) if self.guard is not None else out


def _channels(blocks: Mapping[str, ReadingBlock], config: TrainConfig) -> tuple[str, ...]:
    if not blocks:
        raise TrainingError("no readings")
    channels = config.channels or next(iter(blocks.values())).channels
    for dev, b in blocks.items():
        if not set(channels) <= set(b.channels):
            raise TrainingError(f"device {dev} lacks channels {sorted(set(channels) - set(b.channels))}")
    return tuple(channels)


def _streams(blocks: Mapping[str, ReadingBlock], channels: Sequence[str]) -> Iterator[np.ndarray]:
    return (b.values[:, [list(b.channels).index(c) for c in channels]] for b in blocks.values())


def resolve_features(blocks: Mapping[str, ReadingBlock], config: TrainConfig) -> TrainConfig:
    """`config` with ``features="auto"`` replaced by the algorithm chosen for these readings
    (`models.training.autofeatures.choose`), the choice and its evidence recorded in the manifest
    (``training.features_choice``); any other config unchanged."""
    if config.features != AUTO:
        return config
    choice = autofeatures.choose(_channels(blocks, config), _streams(blocks, _channels(blocks, config)))
    return replace(config, features=choice.algo, extra={**config.extra, "features_choice": choice.to_dict()})


def fit_spec(blocks: Mapping[str, ReadingBlock], config: TrainConfig) -> FeatureSpec:
    """The feature spec (channels, noise floors, windows) for these readings (``features="auto"``
    resolved here when the caller has not: `resolve_features`)."""
    config = resolve_features(blocks, config)
    channels = _channels(blocks, config)
    return FeatureSpec.fit(channels, _streams(blocks, channels), short_window=config.short_window,
                           blocks=config.blocks, algo=config.features)


def train(blocks: Mapping[str, ReadingBlock], config: TrainConfig,
          progress: Callable[[str], None] | None = None) -> TrainedModel:
    """Features where the data is, then `fit`: the whole training path for readings held in memory."""
    config = resolve_features(blocks, config)
    spec = fit_spec(blocks, config)
    say = progress or (lambda _m: None)
    choice = config.extra.get("features_choice")
    if choice:
        say(f"features {choice['algo']}: {choice['reason']}")
    say(f"computing {spec.n_features} features for {sum(len(b) for b in blocks.values())} readings")
    table = feature_table(blocks, spec)
    clean = clean_rows(blocks, spec.clean_horizon) if table.labels is not None else None
    t0 = min(float(b.ts[0]) for b in blocks.values())
    t1 = max(float(b.ts[-1]) for b in blocks.values())
    return fit(table, spec, config, clean=clean, time_range=(t0, t1), progress=progress)


def fit(table: FeatureTable, spec: FeatureSpec, config: TrainConfig, *, clean: np.ndarray | None = None,
        exclude: np.ndarray | None = None, time_range: tuple[float, float] = (0.0, 0.0),
        progress: Callable[[str], None] | None = None) -> TrainedModel:
    """Fit the pipeline on precomputed features and calibrate its threshold.

    Rows fitted: all but the held-out tail of each device (`config.holdout_fraction`), minus labelled
    anomalies (with `config.exclude_labelled` and labels) and minus `exclude` (e.g. readings flagged
    at the edge or inside an incident). The threshold is calibrated (`threshold.calibrate`: the
    empirical quantile when the data holds enough rows for the target, else a peaks-over-threshold
    tail fit, with a warning when the data is too small) on the scores of the fitted rows that are
    also `clean` (no fault in the recent window history), or of all fitted rows when fewer than 100
    are clean. The achieved false-alarm rate on the held-out normal, clean rows is in the summary.
    """
    import sklearn
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from models.training.threshold import calibrate, held_out

    x = table.x
    holdout = holdout_rows(table.devices, config.holdout_fraction)
    usable = np.ones(len(x), dtype=bool)  # normal rows not excluded: fitted, or measured when held out
    if config.exclude_labelled and table.labels is not None:
        usable &= table.labels == 0
    if exclude is not None:
        usable &= ~exclude
    fit_rows = usable & ~holdout
    if fit_rows.sum() < spec.clean_horizon:
        raise TrainingError(f"only {int(fit_rows.sum())} normal readings; need at least {spec.clean_horizon}")
    calib_rows = fit_rows.copy()
    if clean is not None:
        calib_rows &= clean
    if calib_rows.sum() < 100:
        calib_rows = fit_rows
    x_fit = x[fit_rows].astype(np.float32)
    say = progress or (lambda _m: None)
    say(f"fitting IsolationForest ({config.n_estimators} trees) on {len(x_fit)} rows")
    forest = IsolationForest(n_estimators=config.n_estimators, max_samples=min(config.max_samples, len(x_fit)),
                             max_features=config.max_features, random_state=config.seed)
    pipe = Pipeline([("scaler", StandardScaler()), ("forest", forest)]).fit(x_fit)
    guard = RangeGuard.fit(x[calib_rows]) if config.range_guard else None
    model = TrainedModel(pipeline=pipe, spec=spec, threshold=0.0, summary={}, guard=guard)
    scores = model.scores(x[calib_rows])
    calibration = calibrate(scores, config.target_fpr)
    threshold = calibration.threshold
    normal_held = usable & holdout if clean is None else usable & holdout & clean
    held = held_out(model.scores(x[normal_held]), threshold) if normal_held.any() else None
    warnings = [w for w in (calibration.warning,) if w]
    if held is not None and held.rows and held.false_alarm_rate > 2 * config.target_fpr and held.flagged >= 3:
        warnings.append(f"held-out false-alarm rate {held.false_alarm_rate:.4%} is over twice the target "
                        f"{config.target_fpr:.4%} ({held.flagged} of {held.rows} held-out normal readings)")
    for w in warnings:
        say(f"warning: {w}")
    t0, t1 = time_range
    summary: dict[str, Any] = {
        "rows": len(x), "fit_rows": int(fit_rows.sum()), "calibration_rows": int(calib_rows.sum()),
        "devices": len(set(table.devices)),
        "labelled_anomalies": None if table.labels is None else int(table.labels.sum()),
        "excluded_rows": None if exclude is None else int(exclude.sum()),
        "event_time_from": datetime.fromtimestamp(t0, tz=timezone.utc).isoformat(),
        "event_time_to": datetime.fromtimestamp(t1, tz=timezone.utc).isoformat(),
        "target_fpr": config.target_fpr,
        "calibration": calibration.to_dict(),
        "held_out": None if held is None else held.to_dict(),
        "warnings": warnings,
        "estimator": {"type": "IsolationForest", "n_estimators": config.n_estimators,
                      "max_samples": forest.max_samples, "max_features": config.max_features,
                      "random_state": config.seed, "scaler": "StandardScaler"},
        "range_guard": None if guard is None else guard.to_dict(),
        "feature_means": np.round(x_fit.mean(axis=0), 6).tolist(),
        "feature_sds": np.round(x_fit.std(axis=0), 6).tolist(),
        "score_quantiles": {q: float(np.quantile(scores, float(q))) for q in ("0.5", "0.99", "0.999")},
        "sklearn": sklearn.__version__, "python": platform.python_version(),
        **dict(config.extra),
    }
    return TrainedModel(pipeline=pipe, spec=spec, threshold=threshold, summary=summary, guard=guard)


def export_model(model: TrainedModel, *, name: str, version: int, form: str = "fused") -> tuple[bytes, ModelManifest]:
    """ONNX bytes and an (unsigned) manifest for a trained model."""
    from models.training import fused, stock

    n = model.spec.n_features
    if form == "fused" and fused.can_fuse(model.pipeline):
        onnx_bytes, written, opsets = fused.export_fused(model.pipeline, n), fused.FORM, fused.OPSETS
    else:
        onnx_bytes, written, opsets = stock.export_stock(model.pipeline, n), stock.FORM, stock.OPSETS
    if model.guard is not None:
        onnx_bytes = append_to_onnx(onnx_bytes, model.guard)
    manifest = ModelManifest(
        name=name, version=version, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        form=written, sha256=sha256_bytes(onnx_bytes), model_bytes=len(onnx_bytes), opsets=dict(opsets),
        input_name="features", output_name="score", feature_spec=model.spec.to_dict(),
        feature_hash=model.spec.hash, threshold=model.threshold, training=model.summary,
    )
    return onnx_bytes, manifest
