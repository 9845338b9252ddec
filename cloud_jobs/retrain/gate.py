"""The gate: does a candidate beat (or match) the production model of its type on data it never saw?

`figures(...)` measures a model on the holdout: with labels, precision / recall / F1 at its own threshold,
ROC-AUC and PR-AUC, and event recall (an event is a maximal run of one fault on one device; caught when
one of its readings is flagged); always, the alert rate, the alert events (with the rows' devices: the
events the agent would announce, `models.events.alert_spans`) and the PSI of its holdout scores against
its training scores. `verdict(candidate, champion, compatible, config)` applies `GateConfig` and returns
whether it passes and every reason it does not. Pure numpy; runs on an executor or the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_jobs.config import GateConfig

PSI_BINS = 10


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of `actual` against `expected`, on `expected`'s deciles."""
    if len(expected) < bins or len(actual) == 0:
        return 0.0
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1) / len(expected)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1) / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def rate_lower_bound(rate: float, n: int, confidence: float) -> float:
    """One-sided Wilson lower bound of a proportion observed as `rate` over `n` rows.

    The alert rate of a good model on a holdout of a few thousand rows is a handful of alerts: 3 alerts
    instead of 1 triples the rate by chance. The gate refuses only when even this bound is above its limit.
    """
    from models.training.threshold import wilson_interval

    return wilson_interval(rate, n, confidence)[0]


def events(devices: np.ndarray, faults: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) row ranges of maximal runs of one non-empty fault on one device (rows in device order)."""
    out = []
    start = 0
    n = len(faults)
    for i in range(1, n + 1):
        if i == n or faults[i] != faults[start] or devices[i] != devices[start]:
            if faults[start]:
                out.append((start, i))
            start = i
    return out


def figures(scores: np.ndarray, threshold: float, train_scores: np.ndarray, *, labels: np.ndarray | None = None,
            devices: np.ndarray | None = None, faults: np.ndarray | None = None) -> dict[str, Any]:
    """Detection figures of one model on the holdout (rows ordered by device, then time)."""
    flagged = scores >= threshold
    out: dict[str, Any] = {"holdout_rows": len(scores),
                           "alert_rate": float(flagged.mean()) if len(scores) else 0.0,
                           "psi": psi(train_scores, scores), "threshold": float(threshold)}
    if devices is not None:
        from models.events import alert_spans

        out["alert_events"] = len(alert_spans([str(d) for d in devices], scores, threshold))
    if labels is None or not labels.any():
        return out
    tp = int((flagged & (labels == 1)).sum())
    p = tp / max(int(flagged.sum()), 1)
    r = tp / max(int(labels.sum()), 1)
    out.update(precision=p, recall=r, f1=2 * p * r / (p + r) if p + r else 0.0, positives=int(labels.sum()))
    if 0 < labels.sum() < len(labels):
        from sklearn.metrics import average_precision_score, roc_auc_score

        out.update(roc_auc=float(roc_auc_score(labels, scores)), pr_auc=float(average_precision_score(labels, scores)))
    if devices is not None and faults is not None:
        ev = events(devices, faults)
        out.update(events=len(ev), events_caught=sum(bool(flagged[a:b].any()) for a, b in ev),
                   event_recall=(sum(bool(flagged[a:b].any()) for a, b in ev) / len(ev)) if ev else 0.0)
    return out


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    labelled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "labelled": self.labelled}


def verdict(cand: dict[str, Any], champ: dict[str, Any] | None, *, compatible: bool, gate: GateConfig) -> Verdict:
    """Apply the gate to the candidate's and the champion's holdout figures."""
    reasons = []
    if not compatible:
        reasons.append("feature spec: the candidate needs channels that devices of this type do not send")
    if cand["holdout_rows"] < gate.min_holdout_rows:
        reasons.append(f"holdout has {cand['holdout_rows']} rows, fewer than {gate.min_holdout_rows}")
    labelled = "f1" in cand
    if labelled:
        if champ is None or "f1" not in champ:
            if cand["f1"] < gate.min_f1:
                reasons.append(f"F1 {cand['f1']:.3f} below the minimum {gate.min_f1:.3f} (no champion to compare)")
        else:
            if cand["f1"] < champ["f1"] - gate.f1_tolerance:
                reasons.append(f"F1 {cand['f1']:.3f} worse than the champion's {champ['f1']:.3f}")
            if cand.get("event_recall", 0.0) < champ.get("event_recall", 0.0) - gate.event_recall_tolerance:
                reasons.append(f"event recall {cand.get('event_recall', 0.0):.3f} worse than the champion's "
                               f"{champ.get('event_recall', 0.0):.3f}")
    elif champ is not None and "alert_events" in cand and "alert_events" in champ:
        reasons += _against_champion(cand, champ, gate)
    else:
        limit = gate.max_alert_rate
        if champ is not None:
            limit = min(limit, max(champ["alert_rate"] * gate.alert_rate_factor, 1e-3))
        low = rate_lower_bound(cand["alert_rate"], cand["holdout_rows"], gate.alert_rate_confidence)
        if low > limit:
            reasons.append(f"alert rate {cand['alert_rate']:.4f} on recent data above {limit:.4f} "
                           f"(at {gate.alert_rate_confidence:.0%} confidence: at least {low:.4f})")
        if cand["psi"] > gate.max_psi:
            reasons.append(f"score distribution shifted from training to recent data: PSI {cand['psi']:.3f} "
                           f"> {gate.max_psi:.3f}")
    return Verdict(not reasons, reasons, labelled)


def _against_champion(cand: dict[str, Any], champ: dict[str, Any], gate: GateConfig) -> list[str]:
    """The unlabelled rules when the champion was measured on the same holdout, with its alert events.

    Recent data may hold real faults, and then both models alert on them: a candidate that flags more of
    a fault's readings is not a noisier model. So the candidate is compared with the champion on what an
    operator receives, alert events (one per fault, as the agent announces them): at most
    `alert_rate_factor` x the champion's (or one per 1,000 readings, whichever is more), judged on the
    rate's one-sided Wilson lower bound. Per reading it is held to `max_alert_rate`, or to
    `alert_rate_factor` x the champion's reading rate when the champion itself alerts more than that (a
    holdout full of faults), so a candidate that alerts on everything is still refused.
    """
    reasons = []
    rows, conf = cand["holdout_rows"], gate.alert_rate_confidence
    cap = max(gate.max_alert_rate, champ["alert_rate"] * gate.alert_rate_factor)
    low = rate_lower_bound(cand["alert_rate"], rows, conf)
    if low > cap:
        reasons.append(f"alert rate {cand['alert_rate']:.4f} on recent data above {cap:.4f} (the champion's "
                       f"{champ['alert_rate']:.4f}; at {conf:.0%} confidence: at least {low:.4f})")
    events = cand["alert_events"] / max(rows, 1)
    limit = max(champ["alert_events"] / max(rows, 1) * gate.alert_rate_factor, 1e-3)
    low = rate_lower_bound(events, rows, conf)
    if low > limit:
        reasons.append(f"{cand['alert_events']} alert events on recent data against the champion's "
                       f"{champ['alert_events']} ({events * 1000:.2f} per 1,000 readings above {limit * 1000:.2f}; "
                       f"at {conf:.0%} confidence: at least {low * 1000:.2f})")
    return reasons
