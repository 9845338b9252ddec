"""`--features auto`: time series get the window features, independent records their own values."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.block import ReadingBlock
from models.features import FEATURE_ALGO_V5, FEATURE_ALGO_VALUES, TRAIN_ALGO, compute_features
from models.training.autofeatures import MIN_ROWS, SERIAL_MIN, SMOOTH_MIN, choose, lag1_autocorrelation


def test_lag1_autocorrelation_tells_a_signal_from_shuffled_rows() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    signal = np.column_stack([np.sin(t / 40) + 0.3 * rng.normal(size=len(t)), rng.normal(size=len(t)).cumsum()])
    shuffled = signal[rng.permutation(len(t))]
    assert (lag1_autocorrelation(signal) > 0.8).all()
    assert (np.abs(lag1_autocorrelation(shuffled)) < SERIAL_MIN).all()
    assert np.isnan(lag1_autocorrelation(signal[: MIN_ROWS - 1])).all()  # too short to tell
    assert np.isnan(lag1_autocorrelation(np.ones((100, 1))))[0]  # constant: nothing to tell


def test_choose_picks_values_for_records_and_the_window_features_for_a_time_series() -> None:
    rng = np.random.default_rng(1)
    t = np.arange(2000)[:, None]
    series = [np.sin(t / 30 + k) + 0.2 * rng.normal(size=(2000, 2)) for k in range(3)]
    records = [rng.normal(size=(2000, 2)) * [1.0, 50.0] for _ in range(3)]
    ts, rec = choose(("a", "b"), series), choose(("a", "b"), records)
    assert ts.algo == TRAIN_ALGO and all(v is not None and v > 0.9 for v in ts.lag1.values())
    assert rec.algo == FEATURE_ALGO_VALUES and all(v is not None and abs(v) < SERIAL_MIN for v in rec.lag1.values())
    assert "independent records" in rec.reason and rec.to_dict()["algo"] == FEATURE_ALGO_VALUES
    # one related channel makes it a time series; a constant channel is no evidence either way
    mixed = [np.column_stack([r[:, 0], s[:, 0], np.full(2000, 3.0)]) for r, s in zip(records, series, strict=True)]
    assert choose(("r", "s", "k"), mixed).algo == TRAIN_ALGO
    assert choose(("r", "s", "k"), mixed).lag1["k"] is None
    short = choose(("a", "b"), [x[:5] for x in records])
    assert short.algo == TRAIN_ALGO and "no stream" in short.reason
    # noise-dominated steps alternate (first differences anti-correlated): v4; a wave sampled faster
    # than it changes, whose steps follow its slope: v5, which reads noise on second differences
    assert all(v is not None and v < 0 for v in ts.diff_lag1.values())  # type: ignore[union-attr]
    smooth = [70 + 20 * np.sin(t / 12 + k) + 0.05 * rng.normal(size=(2000, 1)) for k in range(3)]
    wave = choose(("abp",), smooth)
    assert wave.algo == FEATURE_ALGO_V5 and wave.diff_lag1 is not None
    assert (wave.diff_lag1["abp"] or 0) >= SMOOTH_MIN and "smooth" in wave.reason


def test_training_resolves_auto_and_records_the_choice() -> None:
    pytest.importorskip("sklearn")
    from models.training.trainer import TrainConfig, resolve_features, train

    rng = np.random.default_rng(2)
    n = 3000
    normal = rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [5.0, 100.0, 0.0]
    labels = np.zeros(n, dtype=bool)
    labels[rng.choice(n, 60, replace=False)] = True  # a cluster of anomalous records, shuffled in
    normal[labels] = [9.0, 60.0, 0.5] + rng.normal(size=(60, 3)) * [0.3, 3.0, 0.05]
    block = ReadingBlock(device_id="rows", channels=("a", "b", "c"), ts=np.arange(n, dtype=np.float64),
                         seq=np.arange(n, dtype=np.int64), values=normal, labels=labels.astype(np.int8),
                         faults=["cluster" if x else "" for x in labels])
    assert TrainConfig().features == "auto"
    assert resolve_features({"rows": block}, TrainConfig(features="robust-blocks-v4")).features == "robust-blocks-v4"
    model = train({"rows": block}, TrainConfig(n_estimators=50))
    assert model.spec.algo == FEATURE_ALGO_VALUES
    assert model.summary["features_choice"]["algo"] == FEATURE_ALGO_VALUES
    scores = model.scores(compute_features(model.spec, normal))
    flagged = scores >= model.threshold
    # the anomalous records stand out by their own values, which a window over shuffled rows would blur
    assert flagged[labels].mean() > 0.9 and flagged[~labels].mean() < 0.01
