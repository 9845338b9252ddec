"""Fleet incidents: one incident per correlated event, stable ids, exactly-once outputs, a webhook that retries."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from cloud_jobs.config import IncidentConfig
from cloud_jobs.fleet.incidents import IncidentLog, IncidentTracker, TypeWindow, Webhook, chance, read_incidents

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def win(minute: int, dtype: str, anomalous: int | list[int], reporting: int = 10) -> TypeWindow:
    start = T0 + timedelta(minutes=minute)
    ids = range(anomalous) if isinstance(anomalous, int) else anomalous
    return TypeWindow(start, start + timedelta(minutes=1), dtype, reporting, tuple(f"{dtype}-{i:04d}" for i in ids))


def test_chance_is_the_binomial_tail() -> None:
    assert chance(2, 4, 0.01) == pytest.approx(1 - 0.99**4 - 4 * 0.01 * 0.99**3, rel=1e-9)
    assert chance(1, 3, 0.2) == pytest.approx(1 - 0.8**3, rel=1e-9)
    assert chance(0, 5, 0.1) == 1.0 and chance(6, 5, 0.1) == 0.0 and chance(5, 5, 0.1) == pytest.approx(1e-5)
    assert 0 < chance(400, 2000, 0.05) < 1e-100  # large fleets: no overflow


def test_independent_faults_coinciding_in_a_large_fleet_are_no_incident_a_correlated_one_is() -> None:
    """60 pumps, each anomalous in a window with probability 0.04 on its own: 3 or more at once is common
    (a third of the windows), so the count rule alone raises incident after incident. Against the learned
    baseline those coincidences are unremarkable; 15 pumps at once (a bad firmware push) is one incident."""
    rng = np.random.default_rng(7)
    windows = [win(m, "pump", np.flatnonzero(rng.random(60) < 0.04).tolist(), reporting=60) for m in range(300)]
    windows[200] = win(200, "pump", list(range(15)), reporting=60)
    windows[201] = win(201, "pump", list(range(10, 30)), reporting=60)
    plain = IncidentTracker(IncidentConfig(max_chance=1.0)).observe(windows)
    assert sum(e["event"] == "open" for e in plain) >= 20
    tracker = IncidentTracker(IncidentConfig())
    events = tracker.observe(windows[:150]) + tracker.observe(windows[150:])
    opened = [e for e in events if e["event"] == "open"]
    assert [e["incident_id"] for e in opened] == ["inc-pump-20260101T032000Z"], [e["opened_at"] for e in opened]
    closed = next(e for e in events if e["event"] == "close")
    assert len(closed["devices"]) >= 30 and closed["min_chance"] < 1e-10
    assert 0.03 < tracker.base_rate("pump") < 0.05, "learned from the windows without an incident"


def test_a_correlated_event_is_one_incident_that_opens_updates_and_closes() -> None:
    tr = IncidentTracker(IncidentConfig(min_devices=3, close_after_windows=2))
    windows = [win(m, "pump", a) for m, a in enumerate([0, 1, 4, 6, 2, 5, 0, 0, 0])] + \
              [win(m, "chiller", 1) for m in range(9)]
    events = tr.observe(windows[:5]) + tr.observe(windows[5:])  # across two micro-batches
    assert [(e["event"], e["incident_id"]) for e in events] == [
        ("open", "inc-pump-20260101T000200Z"), ("update", "inc-pump-20260101T000200Z"),
        ("close", "inc-pump-20260101T000200Z")]  # minute 5 (5 known devices) adds nothing: counted, not announced
    assert events[-1]["peak_devices_anomalous"] == 6 and events[-1]["windows"] == 3
    assert [e["version"] for e in events] == [1, 2, 3] and not tr.open


def test_a_fraction_of_a_small_type_raises_it_but_one_device_never_does() -> None:
    tr = IncidentTracker(IncidentConfig(min_devices=5, min_fraction=0.5))
    assert tr.triggered(win(0, "chiller", 2, reporting=4))
    assert not tr.triggered(win(0, "chiller", 1, reporting=1))
    assert not tr.triggered(win(0, "pump", 2, reporting=10))


def test_events_are_committed_once_per_batch_and_a_crashed_attempt_leaves_no_lines(tmp_path: Path) -> None:
    cfg = IncidentConfig(min_devices=2)
    log = IncidentLog(tmp_path, cfg)
    assert log.process(0, [win(0, "pump", 3)]) and log.process(0, [win(0, "pump", 3)]) is None
    with (tmp_path / "incidents.jsonl").open("a") as fh:  # a crash mid-write of batch 1
        fh.write('{"partial": tru')
    again = IncidentLog(tmp_path, cfg)  # restart: state says batch 0 is the last committed
    events = again.process(1, [win(1, "pump", 0), win(2, "pump", 0), win(3, "pump", 0)])
    assert [e["event"] for e in events or []] == ["close"]
    assert IncidentLog(tmp_path, cfg).tracker.baseline == again.tracker.baseline == {"pump": [0.0, pytest.approx(
        10 * (1 + 59 / 60 + (59 / 60) ** 2))]}, "the baseline is committed with the batch"
    assert [(e["event"], e["batch_id"]) for e in read_incidents(tmp_path / "incidents.jsonl")] == [
        ("open", 0), ("close", 1)]


class _Receiver(BaseHTTPRequestHandler):
    fail_first = 2
    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append((self.headers["Idempotency-Key"], body))
        code = 503 if len(type(self).calls) <= type(self).fail_first else 200
        self.send_response(code)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.calls = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/incidents"
    srv.shutdown()


def test_the_webhook_retries_with_backoff_and_keys_each_event(tmp_path: Path, receiver: str) -> None:
    log = IncidentLog(tmp_path, IncidentConfig(min_devices=2, webhook_url=receiver, webhook_backoff_s=0.05))
    log.process(0, [win(0, "pump", 3), win(1, "pump", 4)])
    keys = [k for k, _ in _Receiver.calls]
    assert keys == ["inc-pump-20260101T000000Z:1"] * 3 + ["inc-pump-20260101T000000Z:2"]
    assert log.webhook is not None and log.webhook.sent == 2 and log.webhook.failed == 0
    assert _Receiver.calls[-1][1]["event"] == "update"


def test_a_webhook_that_stays_down_is_counted_not_fatal(tmp_path: Path) -> None:
    hook = Webhook("http://127.0.0.1:9/none", attempts=2, backoff_s=0.01, timeout_s=0.5)
    assert not hook.post({"incident_id": "inc-x", "version": 1}) and hook.failed == 1
