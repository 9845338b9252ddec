"""Agent telemetry: the same names in Prometheus metrics, status reports and logs.

Counters count readings unless named `messages`. Every reading that enters is, eventually,
exactly one of: sent (acked by the uplink), quarantined (by reason), dropped (evicted, by
reason), or still in the outbox.

Per component (Vector's convention): every source, the scoring stage (transform), the outbox
(buffer) and the uplink (sink) count, in readings, `received`, `sent`, `discarded` by reason and
`errors` by type, as
``edgeflag_component_{received,sent,discarded}_events_total`` and ``edgeflag_component_errors_total``
labelled ``component_kind`` (source, transform, buffer, sink), ``component_id`` and ``component_type``,
and under the same names in `status()["components"]` (logs, `get_status`, reported properties).
A source's received = sent = readings it handed over; the stage's received = readings in, sent =
readings stored, discarded = quarantined; the outbox counts discarded = evicted or corrupt (what it
received and sent are the stage's sent and the uplink's sent); the uplink's received = readings put in messages (a
message sent again after a disconnect counts again), sent = readings confirmed, errors by type.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

COMPONENT_LABELS = ("component_kind", "component_id", "component_type")


class Component:
    """One source, stage or sink's counts (thread-safe); see the module docstring for the names."""

    def __init__(self, metrics: AgentMetrics, kind: str, cid: str, ctype: str) -> None:
        self.kind, self.id, self.type = kind, cid, ctype
        self._m = metrics
        self._labels = {"component_kind": kind, "component_id": cid, "component_type": ctype}
        self._received = metrics.component_received.labels(**self._labels)
        self._sent = metrics.component_sent.labels(**self._labels)
        self._lock = threading.Lock()
        self.counts: dict[str, Any] = {"received": 0, "sent": 0, "discarded": {}, "errors": {}}

    def received(self, n: int) -> None:
        if n:
            self._received.inc(n)
            with self._lock:
                self.counts["received"] += n

    def sent(self, n: int) -> None:
        if n:
            self._sent.inc(n)
            with self._lock:
                self.counts["sent"] += n

    def discarded(self, by_reason: dict[str, int]) -> None:
        for reason, n in by_reason.items():
            if n:
                self._m.component_discarded.labels(**self._labels, reason=reason).inc(n)
                with self._lock:
                    self.counts["discarded"][reason] = self.counts["discarded"].get(reason, 0) + n

    def error(self, error_type: str) -> None:
        self._m.component_errors.labels(**self._labels, error_type=error_type).inc()
        with self._lock:
            self.counts["errors"][error_type] = self.counts["errors"].get(error_type, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            c = self.counts
            return {"kind": self.kind, "type": self.type, "received": c["received"], "sent": c["sent"],
                    "discarded": dict(c["discarded"]), "errors": dict(c["errors"])}


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.component_received = Counter("edgeflag_component_received_events", "Readings a component received",
                                          COMPONENT_LABELS, registry=r)
        self.component_sent = Counter("edgeflag_component_sent_events", "Readings a component passed on",
                                      COMPONENT_LABELS, registry=r)
        self.component_discarded = Counter("edgeflag_component_discarded_events",
                                           "Readings a component discarded, by reason", (*COMPONENT_LABELS, "reason"),
                                           registry=r)
        self.component_errors = Counter("edgeflag_component_errors", "Errors in a component, by type",
                                        (*COMPONENT_LABELS, "error_type"), registry=r)
        self.components: dict[str, Component] = {}
        self.readings_in = Counter("edgeflag_readings_in", "Readings received from the source", registry=r)
        self.scored = Counter("edgeflag_readings_scored", "Readings scored", registry=r)
        self.flagged = Counter("edgeflag_readings_flagged", "Readings flagged anomalous", registry=r)
        self.sent = Counter("edgeflag_readings_sent", "Readings confirmed by the uplink", registry=r)
        self.quarantined = Counter("edgeflag_readings_quarantined", "Readings rejected at intake", ["reason"],
                                   registry=r)
        self.dropped = Counter("edgeflag_readings_dropped", "Readings evicted before delivery", ["reason"],
                               registry=r)
        self.anomaly_events = Counter("edgeflag_anomaly_events", "Anomaly events announced (open, update, close)",
                                      ["kind"], registry=r)
        self.anomaly_events_open = Gauge("edgeflag_anomaly_events_open", "Devices with an anomaly event open",
                                         registry=r)
        self.messages_sent = Counter("edgeflag_messages_sent", "Messages confirmed by the uplink", registry=r)
        self.send_errors = Counter("edgeflag_uplink_errors", "Uplink connect/send failures", registry=r)
        self.batch_seconds = Histogram("edgeflag_scoring_batch_seconds", "Features + ONNX scoring per micro-batch",
                                       buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
                                       registry=r)
        self.outbox_segments = Gauge("edgeflag_outbox_segments", "Segments waiting in the outbox", registry=r)
        self.outbox_readings = Gauge("edgeflag_outbox_readings", "Readings waiting in the outbox", registry=r)
        self.outbox_bytes = Gauge("edgeflag_outbox_bytes", "Bytes (cost) held by the outbox", registry=r)
        self.oldest_age = Gauge("edgeflag_outbox_oldest_age_seconds",
                                "Seconds since the oldest unsent segment was stored", registry=r)
        self.connected = Gauge("edgeflag_uplink_connected", "1 when the uplink is connected", registry=r)
        self.model = Info("edgeflag_model", "Model in use", registry=r)
        self._server: Any = None
        self._lock = threading.Lock()
        self.batch_ms: list[float] = []  # recent batch durations, for status/benchmarks

    def component(self, kind: str, cid: str, ctype: str) -> Component:
        """The counts of one component (made once per kind and id)."""
        key = f"{kind}/{cid}"
        if key not in self.components:
            self.components[key] = Component(self, kind, cid, ctype)
        return self.components[key]

    def observe_batch(self, seconds: float) -> None:
        """Record one whole micro-batch's ingest time (validation, scoring, outbox commit) for status and
        benchmarks; the scoring histogram is observed by the scoring step itself, once per batch."""
        with self._lock:
            self.batch_ms.append(seconds * 1000)
            if len(self.batch_ms) > 100_000:
                del self.batch_ms[:50_000]

    def serve(self, host: str, port: int) -> None:
        if port:
            self._server = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            thread.join(2)

    @staticmethod
    def labelled(counter: Counter, label: str = "reason") -> dict[str, int]:
        out = {}
        for metric in counter.collect():
            for s in metric.samples:
                if s.name.endswith("_total"):
                    out[s.labels.get(label, "")] = int(s.value)
        return out

    def snapshot(self) -> dict[str, Any]:
        def v(c: Counter) -> int:
            return int(c._value.get())

        return {
            "readings_in": v(self.readings_in), "scored": v(self.scored), "flagged": v(self.flagged),
            "sent": v(self.sent), "messages_sent": v(self.messages_sent), "uplink_errors": v(self.send_errors),
            "quarantined": self.labelled(self.quarantined), "dropped": self.labelled(self.dropped),
            "anomaly_events": {**self.labelled(self.anomaly_events, "kind"),
                               "open_now": int(self.anomaly_events_open._value.get())},
            "outbox": {"segments": int(self.outbox_segments._value.get()),
                       "readings": int(self.outbox_readings._value.get()),
                       "bytes": int(self.outbox_bytes._value.get()),
                       "oldest_age_s": round(self.oldest_age._value.get(), 3)},
            "connected": bool(self.connected._value.get()), "time": time.time(),
            "components": {k: c.snapshot() for k, c in list(self.components.items())},
        }
