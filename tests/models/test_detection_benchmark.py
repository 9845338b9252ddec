"""A small run of benchmarks/detection.py: the product's detector against the baselines on the
simulator's fleets of one device type, one test fleet per fault type, through the real edge path.

The issue's simulator targets (F1 >= 0.9 per fault, >= 0.7 for drift; achieved false-alarm rate <=
2 x target) are NOT met yet; these assertions pin what is (figures in docs/detection.md), so a change
that loses ground fails here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from contracts.block import ReadingBlock
from models.training import detection as D

pytestmark = pytest.mark.slow
TARGET = 0.001


@pytest.fixture(scope="module")
def results() -> dict[tuple[str, str], dict[str, Any]]:
    detectors = ("edgeflag", "zscore") + (("halfspacetrees",) if D.river_available() else ())
    ds = D.simulator("pump", devices=3, readings=2400)
    out = {(r.dataset.rsplit(":", 1)[1], r.detector): r.figures for r in D.run(ds, detectors, TARGET)}
    for (kind, det), f in sorted(out.items()):
        print(f"{kind:12} {det:15} pr_auc {f['pr_auc']} f1 {f['f1']} far {f['false_alarm_rate']} "
              f"event_recall {f['event_recall']} alarms/event {f['alarms_per_event']} "
              f"alerts/event {f['alerts_per_event']} false alerts {f['false_alerts']}")
    return out


FAULTS = ("spike", "dip", "level_shift", "drift", "stuck", "noise_burst", "dropout")
#: What this small run reaches with features v6 and the range guard (3 December 2026: spike 0.918, dip
#: 0.814, level shift 0.859, drift 0.730, stuck 0.954, noise burst 0.861, dropout 0.917), less a margin.
#: The noise-burst floor is above what v4 reached here (0.792): v6's burst odds are what lift it.
F1_FLOOR = {"spike": 0.85, "dip": 0.7, "level_shift": 0.8, "drift": 0.65, "stuck": 0.9, "noise_burst": 0.82,
            "dropout": 0.9}


def test_ours_beats_the_baselines_on_pr_auc_for_every_fault(results: dict[tuple[str, str], Any]) -> None:
    for kind in FAULTS:
        ours = results[(kind, "edgeflag")]["pr_auc"]
        for det in ("zscore", "halfspacetrees"):
            if (kind, det) in results:
                assert ours > results[(kind, det)]["pr_auc"], (kind, det)


def test_every_fault_type_is_noticed_and_false_alarms_stay_near_the_target(
        results: dict[tuple[str, str], Any]) -> None:
    for kind in FAULTS:
        f = results[(kind, "edgeflag")]
        assert f["event_recall"] >= 0.9, (kind, f)
        assert f["f1"] >= F1_FLOOR[kind], (kind, f)
    assert results[("normal", "edgeflag")]["false_alarm_rate"] <= 3 * TARGET


def test_hysteresis_gives_about_one_alert_per_event(results: dict[tuple[str, str], Any]) -> None:
    for kind in FAULTS:
        f = results[(kind, "edgeflag")]
        assert f["alerts_per_event"] <= min(f["alarms_per_event"], 1.5), (kind, f)


def test_figures_count_events_alarms_and_clean_false_alarms() -> None:
    labels = np.array([0] * 300 + [1] * 5 + [0] * 300, dtype=np.int8)
    faults = ["spike" if v else "" for v in labels]
    b = ReadingBlock("d", ("a",), np.arange(605.0), np.arange(605), np.zeros((605, 1)), labels, faults)
    scores = np.zeros(605)
    scores[[300, 302, 304]] = 1.0  # one event, caught, three alarm runs inside it
    scores[[10, 320]] = 1.0  # a false alarm in clean data, and one right after the fault
    f = D.figures({"d": b}, scores, 0.5, clean_horizon=240)
    assert (f["events"], f["event_recall"], f["alarms_per_event"]) == (1, 1.0, 3.0)
    assert f["precision"] == 0.6 and f["recall"] == 0.6
    clean = int(D.clean_rows(b, 240).sum())
    assert clean == 300 + (605 - 545) and f["false_alarm_rate"] == round(1 / clean, 6)


def test_public_data_shuttle_and_kdd_targets_with_the_features_auto_picks() -> None:
    """The issue's public-data targets: Shuttle ROC-AUC >= 0.99 (its rows are independent records:
    ``values-v1``) and KDD-TSAD_135's top-scored reading inside its anomaly (a smooth blood-pressure
    wave: ``robust-blocks-v5``), each beating the z-score on PR-AUC. Needs the ``eval`` extra."""
    pytest.importorskip("river")
    pytest.importorskip("aeon")
    picked: list[str] = []
    for ds in (D.shuttle(), D.kdd_tsad_135()):
        res = {r.detector: r.figures for r in D.run(ds, ("edgeflag", "zscore"), TARGET, progress=picked.append)}
        ours, z = res["edgeflag"], res["zscore"]
        assert ours["pr_auc"] > z["pr_auc"], (ds.name, ours, z)
        if ds.top1:
            assert ours["top1_in_anomaly"] and not z["top1_in_anomaly"], (ds.name, ours)
        else:
            assert ours["roc_auc"] >= 0.99 and ours["false_alarm_rate"] <= 2 * TARGET, (ds.name, ours)
    chosen = [m.split(":")[0] for m in picked if m.startswith("features ")]
    assert chosen == ["features values-v1", "features robust-blocks-v5"], picked
