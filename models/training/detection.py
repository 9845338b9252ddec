"""Detection quality against simple baselines, on the simulator's fleet and on public labelled data.

Every dataset is split into a training prefix and a test rest, per device, in time order. Each
detector learns from the prefix only, sets its threshold there at the same target false-alarm rate,
and scores the rest:

* ``edgeflag``: the product's path, `trainer.train` -> fused ONNX bundle -> `OnnxScorer` over
  `models.features` (what the agent runs), with the defaults: ``--features auto``
  (`models.training.autofeatures`: ``robust-blocks-v7`` on a time series, ``values-v1`` on
  independent records, which Shuttle is) and the range guard (`models.training.guard`);
* ``edgeflag-unguarded``: the same without the range guard (the forest alone);
* ``edgeflag-v6``: the product as it was on 3 December 2026 until its sixth session: the same path with
  the range guard and ``robust-blocks-v6`` where ``auto`` now picks v7 (on Shuttle and KDD-TSAD_135,
  where ``auto`` picks values-v1 and v5, the same as ``edgeflag``);
* ``edgeflag-v3`` / ``edgeflag-v1`` / ``edgeflag-v2``: the forest alone with ``robust-blocks-v3`` (the
  default from 1 to 2 December 2026), ``robust-blocks-v1`` (before) and ``robust-blocks-v2`` (baseline,
  step and stuck features);
* ``zscore``: per channel ``|x - mean| / sd`` over the previous `ZSCORE_WINDOW` readings, the largest
  over channels; threshold = the (1 - target) quantile of its clean training scores;
* ``halfspacetrees``: River's ``MinMaxScaler() | HalfSpaceTrees(seed=42)`` as River documents it
  (score, then learn, one reading at a time); threshold as for the z-score. Needs the ``eval`` extra.

Figures per detector (`DetectorResult`): ROC-AUC and PR-AUC of the raw score; precision, recall, F1
and the achieved false-alarm rate (flagged normal test readings / normal test readings) at the
detector's threshold; event recall (an event is a maximal run of one fault on one device; caught
when one of its readings is flagged) and alarms per caught event (maximal runs of flagged readings
touching an event); `alerts`, `alerts_per_event` and `false_alerts` count the events that
`models.events.EventTracker` opens over the same scores (one alert per event with hysteresis, as the
agent announces them): a false alert touches no labelled fault. Public datasets are read from
installed package files (River, aeon), never downloaded.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from contracts.block import ReadingBlock
from models.events import alert_spans
from models.training.evaluate import fault_events

ZSCORE_WINDOW = 12
DETECTORS = ("edgeflag", "edgeflag-unguarded", "edgeflag-v6", "edgeflag-v3", "edgeflag-v1", "edgeflag-v2",
             "zscore", "halfspacetrees")


Blocks = dict[str, ReadingBlock]


@dataclass(frozen=True)
class Dataset:
    """Training readings and one or more labelled test sets, per device.

    `continues`: each test stream continues its device's training stream (a split in time), so
    detectors carry their history over; otherwise the test devices start afresh (another fleet)."""

    name: str
    train: Blocks
    tests: dict[str, Blocks]
    continues: bool = True
    top1: bool = False  # also report whether the top-scored test reading lies in an anomaly (UCR style)
    clean_horizon: int = 0  # false alarms count on normal rows with no fault this many readings before


@dataclass
class DetectorResult:
    dataset: str
    detector: str
    threshold: float
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "detector": self.detector, **self.figures}


# ---------------------------------------------------------------- datasets

def _block(device: str, values: np.ndarray, labels: np.ndarray, channels: tuple[str, ...],
           ts: np.ndarray | None = None, faults: list[str] | None = None) -> ReadingBlock:
    n = len(values)
    return ReadingBlock(
        device_id=device, channels=channels, values=np.ascontiguousarray(values, dtype=np.float64),
        ts=np.arange(n, dtype=np.float64) if ts is None else ts, seq=np.arange(n, dtype=np.int64),
        labels=labels.astype(np.int8),
        faults=faults if faults is not None else ["anomaly" if v else "" for v in labels])


def _slice(b: ReadingBlock, a: int, z: int) -> ReadingBlock:
    return ReadingBlock(b.device_id, b.channels, b.ts[a:z], b.seq[a:z], b.values[a:z],
                        None if b.labels is None else b.labels[a:z],
                        None if b.faults is None else list(b.faults[a:z]))


def split(name: str, blocks: Mapping[str, ReadingBlock], train_fraction: float, *, top1: bool = False) -> Dataset:
    """Each device's first `train_fraction` of readings for training, the rest for the test."""
    train, test = {}, {}
    for dev, b in blocks.items():
        k = int(len(b) * train_fraction)
        train[dev], test[dev] = _slice(b, 0, k), _slice(b, k, len(b))
    return Dataset(name, train, {name: test}, continues=True, top1=top1)


def simulator(device_type: str, *, devices: int = 6, readings: int = 3600, seed: int = 101,
              clean_training: bool = False) -> Dataset:
    """One device type: a training fleet with every fault type at the default rate (labelled rows are
    left out of training), and one test fleet (other seed) per fault type with only that fault, as an
    operator meets them; plus a test fleet with no fault at all for the false-alarm rate.

    `clean_training`: the training fleet has no fault at all (``simulator-clean:<type>``), as when an
    operator trains on a stretch of data known to be normal: the detectors then see no unusual row
    in training, and have to say how unusual a fault is from the normal rows alone."""
    from simulators import FaultType, Fleet, FleetConfig
    from simulators.types import pick_types

    types = pick_types(device_type)
    config = FleetConfig(devices=devices, seed=seed, device_types=types)
    train = Fleet(replace(config, anomaly_rate=0.0) if clean_training else config).generate(readings)
    prefix = "simulator-clean" if clean_training else "simulator"
    tests = {f"{prefix}:{device_type}:{kind.value}": Fleet(FleetConfig(
        devices=devices, seed=seed + 1 + i, device_types=types, faults=(kind,))).generate(readings)
        for i, kind in enumerate(FaultType)}
    tests[f"{prefix}:{device_type}:normal"] = Fleet(FleetConfig(
        devices=devices, seed=seed + 99, device_types=types, anomaly_rate=0.0)).generate(readings)
    return Dataset(f"{prefix}:{device_type}", train, tests, continues=False, clean_horizon=240)


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed (pip install 'edgeflag[eval]')")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed {package}")
    return path


def shuttle(train_fraction: float = 0.3) -> Dataset:
    """River's Shuttle (ODDS): 49,097 rows of 9 sensor attributes, 7 % anomalies, as one stream."""
    with gzip.open(_package_file("river", "datasets/shuttle.csv.gz"), "rt") as fh:
        rows = list(csv.reader(fh))
    data = np.array(rows[1:], dtype=np.float64)
    channels = tuple(rows[0][:-1])
    return split("river:shuttle", {"shuttle": _block("shuttle", data[:, :-1], data[:, -1] > 0, channels)},
                 train_fraction)


def _labelled_csv(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    data = np.array([r[1:] for r in rows[1:]], dtype=np.float64)  # column 0: timestamp
    return tuple(header[1:-1]), data[:, :-1], data[:, -1] > 0


def daphnet(train_fraction: float = 0.3) -> Dataset:
    """aeon's Daphnet_S06R02E0: 9 accelerometer channels, 7,040 readings. The excerpt aeon ships holds
    no labelled freezing-of-gait episode (aeon 1.6 deprecates it for that reason), so on it only the
    false-alarm rate on real multichannel normal data can be measured."""
    channels, values, labels = _labelled_csv(_package_file("aeon", "datasets/data/Daphnet_S06R02E0/S06R02E0.csv"))
    return split("aeon:daphnet_s06r02e0", {"S06R02E0": _block("S06R02E0", values, labels, channels)},
                 train_fraction)


def kdd_tsad_135() -> Dataset:
    """aeon's KDD-TSAD_135 (UCR anomaly archive, InternalBleeding16): the TRAIN file is normal and the
    start of TEST; one anomaly region in TEST. Scored as the archive is: is the top-scored point in it."""
    root = "datasets/data/KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16"
    ch, tr_values, tr_labels = _labelled_csv(_package_file("aeon", f"{root}_TRAIN.csv"))
    _, values, labels = _labelled_csv(_package_file("aeon", f"{root}_TEST.csv"))
    k = len(tr_values)  # TEST repeats TRAIN at its start
    assert np.array_equal(values[:k], tr_values)
    name = "aeon:kdd_tsad_135"
    return Dataset(name, {"135": _block("135", tr_values, tr_labels, ch)},
                   {name: {"135": _block("135", values[k:], labels[k:], ch)}}, top1=True)


# ---------------------------------------------------------------- detectors

Scorer = Callable[[Blocks, "Blocks | None"], np.ndarray]


def clean_rows(block: ReadingBlock, horizon: int) -> np.ndarray:
    """Which rows are labelled normal with no labelled fault in the previous `horizon` readings (the
    trainer's own rule, `trainer.clean_rows`)."""
    from models.training.trainer import clean_rows as trainer_clean_rows

    assert block.labels is not None
    return trainer_clean_rows({block.device_id: block}, horizon)


def _threshold(scores: np.ndarray, target_fpr: float) -> float:
    from models.training.threshold import calibrate

    return calibrate(scores, target_fpr).threshold if len(scores) else float("inf")


def rolling_zscore(values: np.ndarray, floor: np.ndarray, window: int = ZSCORE_WINDOW) -> np.ndarray:
    """max over channels of |x - mean| / max(sd, floor) over the previous `window` readings; 0 before the
    window fills. `floor` (per channel) keeps a constant stretch from dividing by zero."""
    n = len(values)
    out = np.zeros(n)
    if n <= window:
        return out
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)[: n - window]  # (n-w, C, w)
    mean, sd = view.mean(axis=-1), view.std(axis=-1)
    scale = np.maximum(sd, floor)
    out[window:] = (np.abs(values[window:] - mean) / scale).max(axis=1)
    return out


def _with_history(b: ReadingBlock, history: Blocks | None, keep: int) -> tuple[np.ndarray, int]:
    """The test values with up to `keep` readings of the device's training stream before them."""
    if history is None or b.device_id not in history:
        return b.values, 0
    h = history[b.device_id].values[-keep:] if keep else history[b.device_id].values
    return np.vstack([h, b.values]), len(h)


def fit_zscore(train: Blocks, target_fpr: float) -> tuple[Scorer, float]:
    """The z-score baseline; its sd floor is 1 % of each channel's sd over the normal training rows."""
    normal = np.vstack([b.values[clean_rows(b, 0)] for b in train.values()])
    floor = np.maximum(0.01 * normal.std(axis=0), 1e-12)
    calib = np.concatenate([rolling_zscore(b.values, floor)[clean_rows(b, ZSCORE_WINDOW)][ZSCORE_WINDOW:]
                            for b in train.values()])

    def score(test: Blocks, history: Blocks | None) -> np.ndarray:
        out = []
        for b in test.values():
            v, k = _with_history(b, history, ZSCORE_WINDOW)
            out.append(rolling_zscore(v, floor)[k:])
        return np.concatenate(out)

    return score, _threshold(calib, target_fpr)


def fit_halfspacetrees(train: Blocks, target_fpr: float, warm: int = 250) -> tuple[Scorer, float]:
    """River's HalfSpaceTrees on min-max scaled input, one model per device, learning normal training
    rows; on test data it scores then learns every reading, as River documents (each test set starts
    from the trained model)."""
    import copy

    from river import anomaly, compose, preprocessing

    calib: list[float] = []
    models: dict[str, Any] = {}
    for dev, b in train.items():
        model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=42))
        names, clean = list(b.channels), clean_rows(b, 0)
        for i, row in enumerate(b.values.tolist()):
            x = dict(zip(names, row, strict=True))
            s = model.score_one(x)
            if clean[i]:
                if i >= warm:
                    calib.append(s)
                model.learn_one(x)
        models[dev] = model
    first = next(iter(models.values()))

    def score(test: Blocks, history: Blocks | None) -> np.ndarray:
        out = []
        for dev, b in test.items():
            model = copy.deepcopy(models.get(dev, first))
            names = list(b.channels)
            for row in b.values.tolist():
                x = dict(zip(names, row, strict=True))
                out.append(model.score_one(x))
                model.learn_one(x)
        return np.asarray(out)

    return score, _threshold(np.asarray(calib), target_fpr)


def fit_edgeflag(train: Blocks, target_fpr: float, *, features: str = "auto", n_estimators: int = 100,
                 range_guard: bool = True, progress: Callable[[str], None] | None = None) -> tuple[Scorer, float]:
    """Train, export the fused ONNX bundle and score through onnxruntime with the features the agent
    computes (a continuing test stream starts with its device's training history in the windows)."""
    from models.bundle import Bundle
    from models.features import columns_for, compute_features
    from models.scorer import OnnxScorer
    from models.training.trainer import TrainConfig, export_model
    from models.training.trainer import train as train_model

    model = train_model(train, TrainConfig(target_fpr=target_fpr, n_estimators=n_estimators, features=features,
                                           range_guard=range_guard), progress=progress)
    onnx_bytes, manifest = export_model(model, name="bench", version=1)
    scorer = OnnxScorer(Bundle(Path("<memory>"), manifest, model.spec, onnx_bytes))

    def score(test: Blocks, history: Blocks | None) -> np.ndarray:
        out = []
        for b in test.values():
            v, k = _with_history(b, history, 0)
            out.append(scorer.score(compute_features(model.spec, v[:, columns_for(model.spec, b.channels)])[k:]))
        return np.concatenate(out)

    return score, float(manifest.threshold)


# ---------------------------------------------------------------- figures

def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of every maximal run of True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def figures(test: Blocks, scores: np.ndarray, threshold: float, *, top1: bool = False,
            clean_horizon: int = 0) -> dict[str, Any]:
    """The figures of one detector on one test set. The false-alarm rate is over the *clean* normal
    readings: no labelled fault in the previous `clean_horizon` readings (240 on the simulator's
    fleets, twice the default long window: the rows a threshold is calibrated on; flags just after a
    fault count against precision, not here); 0 on the public sets, whose faults are dense."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    labels = np.concatenate([b.labels for b in test.values()]).astype(int)
    faults = [str(f) for b in test.values() for f in b.faults]  # type: ignore[union-attr]
    clean = np.concatenate([clean_rows(b, clean_horizon) for b in test.values()])
    devices = [d for d, b in test.items() for _ in range(len(b))]
    flagged = scores >= threshold
    both = 0 < labels.sum() < len(labels)
    p, r, f1, _ = precision_recall_fscore_support(labels, flagged, average="binary", zero_division=0.0)
    events = [(a, b) for _kind, a, b in fault_events(devices, faults)]
    caught = [(a, b) for a, b in events if flagged[a:b].any()]
    alarm_runs = _runs(flagged)
    per_event = [sum(1 for s0, s1 in alarm_runs if s0 < b and s1 > a) for a, b in caught]
    alerts = alert_spans(devices, scores, threshold)
    alerts_per = [sum(1 for s0, s1 in alerts if s0 < b and s1 > a) for a, b in caught]
    false_alerts = sum(1 for s0, s1 in alerts if not any(s0 < b and s1 > a for a, b in events))
    out: dict[str, Any] = {
        "rows": len(labels), "positives": int(labels.sum()), "threshold": round(float(threshold), 6),
        "roc_auc": round(float(roc_auc_score(labels, scores)), 4) if both else None,
        "pr_auc": round(float(average_precision_score(labels, scores)), 4) if both else None,
        "precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f1), 4),
        "false_alarm_rate": round(float(flagged[clean].mean()), 6) if clean.any() else None,
        "events": len(events), "event_recall": round(len(caught) / len(events), 4) if events else None,
        "alarms_per_event": round(float(np.mean(per_event)), 2) if per_event else None,
        "alerts": len(alerts), "alerts_per_event": round(float(np.mean(alerts_per)), 2) if alerts_per else None,
        "false_alerts": false_alerts,
    }
    if top1:
        out["top1_in_anomaly"] = bool(labels[int(np.argmax(scores))] == 1)
    return out


def run(ds: Dataset, detectors: tuple[str, ...] = DETECTORS, target_fpr: float = 0.001,
        progress: Callable[[str], None] | None = None) -> list[DetectorResult]:
    """Every detector fitted once on the dataset's training part and scored on each of its test sets."""
    def forest_alone(features: str) -> Callable[[], tuple[Scorer, float]]:
        return lambda: fit_edgeflag(ds.train, target_fpr, features=features, range_guard=False, progress=progress)

    def product_v6() -> tuple[Scorer, float]:
        from models.features import FEATURE_ALGO_V6, TRAIN_ALGO
        from models.training.trainer import TrainConfig, resolve_features

        algo = resolve_features(ds.train, TrainConfig()).features
        return fit_edgeflag(ds.train, target_fpr, features=FEATURE_ALGO_V6 if algo == TRAIN_ALGO else algo,
                            progress=progress)

    fitters: dict[str, Callable[[], tuple[Scorer, float]]] = {
        "edgeflag": lambda: fit_edgeflag(ds.train, target_fpr, progress=progress),
        "edgeflag-unguarded": lambda: fit_edgeflag(ds.train, target_fpr, range_guard=False, progress=progress),
        "edgeflag-v6": product_v6,
        **{f"edgeflag-{v}": forest_alone(f"robust-blocks-{v}") for v in ("v1", "v2", "v3")},
        "zscore": lambda: fit_zscore(ds.train, target_fpr),
        "halfspacetrees": lambda: fit_halfspacetrees(ds.train, target_fpr),
    }
    out = []
    for name in detectors:
        score, thr = fitters[name]()
        for test_name, test in ds.tests.items():
            scores = score(test, ds.train if ds.continues else None)
            out.append(DetectorResult(test_name, name, thr, figures(test, scores, thr, top1=ds.top1,
                                                                       clean_horizon=ds.clean_horizon)))
    return out


def river_available() -> bool:
    return importlib.util.find_spec("river") is not None
