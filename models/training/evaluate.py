"""Score labelled readings with a bundle and measure detection quality.

Metrics (scikit-learn): precision, recall, F1 at the bundle's threshold, ROC-AUC and
PR-AUC (average precision) of the raw score. Per anomaly type, metrics are computed
on the readings of that type plus all normal readings — as if the data held only that
fault — so every false positive is charged to every type.

Event level: an event is a maximal run of consecutive readings of one device with the same
fault; it is *caught* when at least one of its readings is flagged. "Did we notice the
fault at all" is what an operator asks first, and it does not depend on how long a fault
lasts the way reading-level recall does. **Alerts** are the events `models.events` opens over the flags
(one per event with hysteresis, what the agent announces); a false alert touches no labelled fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from contracts.block import ReadingBlock
from models.bundle import Bundle
from models.errors import ModelError
from models.events import alert_spans
from models.scorer import OnnxScorer
from models.training.trainer import feature_table


@dataclass(frozen=True)
class Metrics:
    rows: int
    positives: int
    flagged: int
    precision: float
    recall: float
    f1: float
    roc_auc: float | None
    pr_auc: float | None
    events: int | None = None
    events_caught: int | None = None
    alerts: int | None = None  # events the edge's tracker opens (one alert per event, `models.events`)
    false_alerts: int | None = None  # of those, the ones touching no labelled fault

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Metrics:
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    pred = scores >= threshold
    p, r, f, _ = precision_recall_fscore_support(labels, pred, average="binary", zero_division=0.0)
    both = 0 < labels.sum() < len(labels)
    return Metrics(
        rows=len(labels), positives=int(labels.sum()), flagged=int(pred.sum()),
        precision=float(p), recall=float(r), f1=float(f),
        roc_auc=float(roc_auc_score(labels, scores)) if both else None,
        pr_auc=float(average_precision_score(labels, scores)) if both else None,
    )


@dataclass(frozen=True)
class EvalReport:
    overall: Metrics
    by_type: dict[str, Metrics]
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "overall": self.overall.to_dict(),
                "by_type": {k: v.to_dict() for k, v in self.by_type.items()}}


@dataclass(frozen=True)
class AlertReport:
    """What a bundle does on unlabelled data: how often it alerts, per device, and its score distribution."""

    threshold: float
    rows: int
    flagged: int
    by_device: dict[str, tuple[int, int]]  # device -> (rows, flagged)
    score_quantiles: dict[str, float]  # "p50", "p90", "p99", "p99.9", "max"

    @property
    def alert_rate(self) -> float:
        return self.flagged / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "labelled": False, "rows": self.rows, "flagged": self.flagged,
                "alert_rate": round(self.alert_rate, 6), "score_quantiles": self.score_quantiles,
                "by_device": {d: {"rows": r, "flagged": f, "alert_rate": round(f / r, 6) if r else 0.0}
                              for d, (r, f) in self.by_device.items()}}


def describe(bundle: Bundle, blocks: Mapping[str, ReadingBlock]) -> AlertReport:
    """Score readings without labels: the alert rate (overall and per device) and where the scores lie."""
    scores, table = score_blocks(bundle, blocks)
    thr = float(bundle.manifest.threshold)
    flagged = scores >= thr
    devices = np.asarray(table.devices, dtype=object)
    by_device = {str(d): (int((devices == d).sum()), int(flagged[devices == d].sum())) for d in sorted(set(devices))}
    qs = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999, "max": 1.0}
    quantiles = {k: round(float(np.quantile(scores, q)), 6) for k, q in qs.items()} if len(scores) else {}
    return AlertReport(thr, len(scores), int(flagged.sum()), by_device, quantiles)


def score_blocks(bundle: Bundle, blocks: Mapping[str, ReadingBlock]) -> tuple[np.ndarray, Any]:
    table = feature_table(blocks, bundle.spec)
    return OnnxScorer(bundle).score(table.x), table


def fault_events(devices: list[str], faults: list[str]) -> list[tuple[str, int, int]]:
    """(fault, start, stop) for every maximal run of one fault on one device, in row order."""
    out = []
    start = 0
    for i in range(1, len(faults) + 1):
        if i == len(faults) or faults[i] != faults[start] or devices[i] != devices[start]:
            if faults[start]:
                out.append((faults[start], start, i))
            start = i
    return out


def evaluate(bundle: Bundle, blocks: Mapping[str, ReadingBlock]) -> EvalReport:
    from dataclasses import replace

    scores, table = score_blocks(bundle, blocks)
    if table.labels is None or table.faults is None:
        raise ModelError("the data carries no labels; eval needs labelled readings (label/fault fields)")
    labels = table.labels.astype(int)
    thr = float(bundle.manifest.threshold)
    faults = np.array(table.faults, dtype=object)
    flagged = scores >= thr
    events = fault_events(table.devices, list(table.faults))
    caught = {kind: [bool(flagged[a:b].any()) for k, a, b in events if k == kind] for kind, _, _ in events}
    by_type = {}
    for kind in sorted({f for f in table.faults if f}):
        rows = (faults == kind) | (labels == 0)
        by_type[kind] = replace(metrics(labels[rows], scores[rows], thr), events=len(caught[kind]),
                                events_caught=sum(caught[kind]))
    spans = alert_spans(table.devices, scores, thr)
    false_alerts = sum(1 for s0, s1 in spans if not any(s0 < b and s1 > a for _, a, b in events))
    overall = replace(metrics(labels, scores, thr), events=len(events),
                      events_caught=sum(bool(flagged[a:b].any()) for _, a, b in events),
                      alerts=len(spans), false_alerts=false_alerts)
    return EvalReport(overall=overall, by_type=by_type, threshold=thr)
