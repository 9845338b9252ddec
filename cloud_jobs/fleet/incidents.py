"""Fleet incidents: correlated anomalies across devices of one type, one incident per event.

`IncidentTracker.observe(windows)` is pure: it takes the finalised windows of a micro-batch (per
device type: devices reporting, which were anomalous) and returns incident events. The condition
(`IncidentConfig`) is a count or fraction of anomalous devices that the type's baseline rate of
anomalous devices would not explain (`chance`, a binomial tail); the baseline is an exponentially
weighted rate over the type's earlier windows that did not meet the condition. An incident
**opens** on the first window that meets the condition, **updates** on a later one
only when it adds something (new devices, a new peak; a window that adds nothing is counted in
``windows``, not announced), and **closes** once `close_after_windows` windows pass without it. Its id,
``inc-<type>-<first window start, UTC>``, depends only on the data, so a re-run over the same
bronze gives the same ids.

`IncidentLog` makes the outputs exactly-once across micro-batch replays: the tracker's state and the
length of ``incidents.jsonl`` are committed together (atomic rename) after each batch; a batch at or
below the committed id is skipped, and a crashed attempt's partial lines are cut off before a retry.
Webhook POSTs carry ``Idempotency-Key: <incident id>:<version>`` and are retried with backoff; a
receiver that dedups on it sees each event once. A webhook that stays down is counted, never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cloud_jobs.config import IncidentConfig

log = logging.getLogger("edgeflag.cloud.incidents")


@dataclass(frozen=True)
class TypeWindow:
    """One finalised window of one device type."""

    window_start: datetime
    window_end: datetime
    device_type: str
    devices_reporting: int
    anomalous_devices: tuple[str, ...]


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def chance(anomalous: int, reporting: int, rate: float) -> float:
    """P(at least `anomalous` of `reporting` devices are anomalous), each independently with `rate`."""
    if anomalous <= 0:
        return 1.0
    if anomalous > reporting:
        return 0.0
    log_p, log_q = math.log(rate), math.log1p(-rate)
    terms = [math.lgamma(reporting + 1) - math.lgamma(k + 1) - math.lgamma(reporting - k + 1)
             + k * log_p + (reporting - k) * log_q for k in range(anomalous, reporting + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


#: The baseline prior's weight, in device-windows.
PRIOR_WEIGHT = 50.0


@dataclass
class IncidentTracker:
    config: IncidentConfig
    open: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per type: [anomalous, reporting] device-windows, exponentially weighted (windows without the condition)
    baseline: dict[str, list[float]] = field(default_factory=dict)

    def base_rate(self, device_type: str) -> float:
        """The type's baseline rate of anomalous devices per window (the prior until windows are seen)."""
        a, r = self.baseline.get(device_type, (0.0, 0.0))
        prior = self.config.baseline_prior
        return (a + prior * PRIOR_WEIGHT) / (r + PRIOR_WEIGHT)

    def triggered(self, w: TypeWindow) -> bool:
        return self._condition(w)[0]

    def _condition(self, w: TypeWindow) -> tuple[bool, float]:
        """Whether the window meets the condition, and the chance of its count at the baseline rate (1.0
        when the count rule alone fails)."""
        n = len(w.anomalous_devices)
        frac = n / w.devices_reporting if w.devices_reporting else 0.0
        if not (n >= self.config.min_devices or (n >= 2 and frac >= self.config.min_fraction)):
            return False, 1.0
        p = chance(n, w.devices_reporting, self.base_rate(w.device_type))
        return self.config.max_chance >= 1 or p <= self.config.max_chance, p

    def _learn(self, w: TypeWindow) -> None:
        keep = 1.0 - 1.0 / self.config.baseline_windows
        a, r = self.baseline.get(w.device_type, (0.0, 0.0))
        self.baseline[w.device_type] = [a * keep + len(w.anomalous_devices), r * keep + w.devices_reporting]

    def observe(self, windows: Iterable[TypeWindow]) -> list[dict[str, Any]]:
        """Events (open / update / close) for these windows, in event-time order."""
        events: list[dict[str, Any]] = []
        latest_end: datetime | None = None
        for w in sorted(windows, key=lambda x: (x.window_start, x.device_type)):
            latest_end = w.window_end if latest_end is None else max(latest_end, w.window_end)
            self._close_stale(w.window_start, events, only=w.device_type)
            met, p = self._condition(w)
            if not met:
                self._learn(w)
                continue
            inc = self.open.get(w.device_type)
            if inc is None:
                inc = self.open[w.device_type] = {
                    "incident_id": f"inc-{w.device_type}-{w.window_start.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}",
                    "device_type": w.device_type, "opened_at": _iso(w.window_start), "version": 0,
                    "windows": 0, "devices": [], "peak_devices_anomalous": 0, "peak_fraction": 0.0,
                    "window_s": int((w.window_end - w.window_start).total_seconds()),
                    "baseline_rate": round(self.base_rate(w.device_type), 6), "min_chance": 1.0,
                }
                kind = "open"
            else:
                kind = "update"
            before = (len(inc["devices"]), inc["peak_devices_anomalous"], inc["peak_fraction"])
            inc["windows"] += 1
            inc["last_window_end"] = _iso(w.window_end)
            inc["devices"] = sorted(set(inc["devices"]) | set(w.anomalous_devices))
            inc["peak_devices_anomalous"] = max(inc["peak_devices_anomalous"], len(w.anomalous_devices))
            inc["peak_fraction"] = max(inc["peak_fraction"], len(w.anomalous_devices) / max(w.devices_reporting, 1))
            inc["min_chance"] = min(inc.get("min_chance", 1.0), float(f"{p:.3g}"))
            if kind == "open" or (len(inc["devices"]), inc["peak_devices_anomalous"], inc["peak_fraction"]) != before:
                events.append(self._event(inc, kind))  # a window that adds nothing is counted, not announced
        if latest_end is not None:
            self._close_stale(latest_end, events)
        return events

    def _close_stale(self, now: datetime, events: list[dict[str, Any]], only: str | None = None) -> None:
        for dtype in sorted(self.open):
            if only is not None and dtype != only:
                continue
            inc = self.open[dtype]
            quiet = (now - datetime.fromisoformat(inc["last_window_end"].replace("Z", "+00:00"))).total_seconds()
            if quiet >= self.config.close_after_windows * inc["window_s"]:
                del self.open[dtype]
                inc["closed_at"] = inc["last_window_end"]
                events.append(self._event(inc, "close"))

    @staticmethod
    def _event(inc: dict[str, Any], kind: str) -> dict[str, Any]:
        inc["version"] += 1
        return {**inc, "event": kind, "status": "closed" if kind == "close" else "open",
                "devices": list(inc["devices"])}


class Webhook:
    """POST each event as JSON; retried with exponential backoff on network errors, 5xx and 429."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, attempts: int = 5, backoff_s: float = 0.5) -> None:
        self.url, self.timeout_s, self.attempts, self.backoff_s = url, timeout_s, attempts, backoff_s
        self.sent = 0
        self.failed = 0

    def post(self, event: Mapping[str, Any]) -> bool:
        body = json.dumps(event).encode()
        key = f"{event['incident_id']}:{event['version']}"
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            req = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "Idempotency-Key": key})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    resp.read()
                self.sent += 1
                return True
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    log.error("incident webhook refused %s: HTTP %s", key, exc.code)
                    break
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                reason = str(exc)
            if attempt < self.attempts:
                log.warning("incident webhook %s failed (%s); retry %d in %.1fs", key, reason, attempt, delay)
                time.sleep(delay)
                delay *= 2
        self.failed += 1
        return False


class IncidentLog:
    """incidents.jsonl + the tracker's state, committed once per micro-batch (see module docstring)."""

    def __init__(self, root: Path, config: IncidentConfig) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.jsonl = root / "incidents.jsonl"
        self.state_file = root / "_incident_state.json"
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.batch_id: int = state.get("batch_id", -1)
        self.committed_bytes: int = state.get("jsonl_bytes", 0)
        self.tracker = IncidentTracker(config, state.get("open", {}), state.get("baseline", {}))
        self.webhook = (Webhook(config.webhook_url, timeout_s=config.webhook_timeout_s,
                                attempts=config.webhook_attempts, backoff_s=config.webhook_backoff_s)
                        if config.webhook_url else None)
        self.events_total = 0

    def process(self, batch_id: int, windows: list[TypeWindow],
                write_table: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]] | None:
        """Events of this batch, written (JSONL, then `write_table`) and posted; None if already committed."""
        if batch_id <= self.batch_id:
            return None
        events = self.tracker.observe(windows)
        if events and write_table is not None:
            write_table(events)
        with self.jsonl.open("ab") as fh:
            fh.truncate(self.committed_bytes)  # a crashed attempt's lines go
            fh.seek(self.committed_bytes)
            for ev in events:
                fh.write(json.dumps({**ev, "batch_id": batch_id}, sort_keys=True).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        if self.webhook is not None:
            for ev in events:
                self.webhook.post(ev)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"batch_id": batch_id, "jsonl_bytes": size, "open": self.tracker.open,
                                   "baseline": self.tracker.baseline}))
        os.replace(tmp, self.state_file)
        self.batch_id, self.committed_bytes = batch_id, size
        self.events_total += len(events)
        return events


def read_incidents(path: Path) -> list[dict[str, Any]]:
    """Every event in incidents.jsonl (for tests, the demo and small tools)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
