"""The anomaly event message: one alert per event, sent beside the per-reading telemetry.

An agent tracks, per device, anomaly events with hysteresis (`models.events`): an event opens on a
flagged reading, is updated while it grows and closes when the scores have stayed low. Each announcement
(open, update, close) travels as one entry of an event message on the device's telemetry topic:

    {"v": 1, "type": "anomaly_event", "device_id": "...", "boot_id": "...", "model": {...},
     "events": [{"event_id", "kind", "opened_seq", "opened_ts", "last_seq", "last_ts", "alarms",
                 "peak_score", "threshold"}, ...],
     "readings": []}

with the application property ``message=anomaly_event`` (IoT Hub message routing selects on application
properties, so events can go to their own endpoint). `readings` is empty and present so a consumer that
only counts readings skips the message unchanged. Times are epoch milliseconds; an event's identity is
(device, boot, event_id, kind), the key a consumer deduplicates resends on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from contracts.errors import ContractError
from contracts.telemetry import MAX_TS_MS, TELEMETRY_SCHEMA, ModelLineage, message_head

EVENT_MESSAGE_TYPE = "anomaly_event"
MESSAGE_PROPERTY = "message"  # the application property that names the message type
EVENT_KINDS = ("open", "update", "close")
MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One announcement of one event, as on the wire."""

    event_id: str
    kind: str
    opened_seq: int
    opened_ts: int
    last_seq: int
    last_ts: int
    alarms: int
    peak_score: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class EventMessage:
    device_id: str
    boot_id: str
    model: ModelLineage
    events: list[EventRecord]


def is_event_message(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("type") == EVENT_MESSAGE_TYPE


def _int(v: Any, field: str, hi: int) -> int:
    if type(v) is not int or not 0 <= v <= hi:
        raise ContractError(field, f"must be an integer in [0, {hi}], got {v!r}")
    return v


def _num(v: Any, field: str) -> float:
    if (type(v) is not float and type(v) is not int) or not math.isfinite(v):
        raise ContractError(field, f"must be a finite number, got {v!r}")
    return float(v)


def event_message(obj: Any) -> EventMessage:
    """THE validation rules of an event message (edge tests and the cloud parser use this one).

    Raises ContractError naming the field: schema version, type, device id, boot id, model lineage,
    no events, an unknown kind, seq or times out of range (last before opened), a negative alarm count,
    a non-finite score or threshold."""
    if not isinstance(obj, Mapping):
        raise ContractError("", f"an event message must be a JSON object, got {type(obj).__name__}")
    if obj.get("v") != TELEMETRY_SCHEMA:
        raise ContractError("v", f"unsupported schema {obj.get('v')!r}")
    if obj.get("type") != EVENT_MESSAGE_TYPE:
        raise ContractError("type", f"expected {EVENT_MESSAGE_TYPE!r}")
    try:
        device_id, boot_id, model = message_head(obj)
        rows = obj["events"]
        if not isinstance(rows, list) or not rows:
            raise ContractError("events", "an event message carries at least one event")
        out = []
        for i, e in enumerate(rows):
            f = f"events[{i}]"
            if not isinstance(e, Mapping):
                raise ContractError(f, "must be an object")
            missing = [k for k in EventRecord.__slots__ if k not in e]
            if missing:
                raise ContractError(f"{f}.{missing[0]}", "missing")
            eid, kind = e["event_id"], e["kind"]
            if not isinstance(eid, str) or not 0 < len(eid) <= 512:
                raise ContractError(f"{f}.event_id", "must be a non-empty string of at most 512 characters")
            if kind not in EVENT_KINDS:
                raise ContractError(f"{f}.kind", f"must be one of {', '.join(EVENT_KINDS)}, got {kind!r}")
            rec = EventRecord(eid, kind, _int(e["opened_seq"], f"{f}.opened_seq", MAX_SEQ),
                              _int(e["opened_ts"], f"{f}.opened_ts", MAX_TS_MS),
                              _int(e["last_seq"], f"{f}.last_seq", MAX_SEQ),
                              _int(e["last_ts"], f"{f}.last_ts", MAX_TS_MS),
                              _int(e["alarms"], f"{f}.alarms", MAX_SEQ),
                              _num(e["peak_score"], f"{f}.peak_score"), _num(e["threshold"], f"{f}.threshold"))
            if rec.last_seq < rec.opened_seq or rec.last_ts < rec.opened_ts:
                raise ContractError(f"{f}.last_seq", "an event cannot end before it opened")
            out.append(rec)
    except KeyError as exc:
        raise ContractError(str(exc.args[0]), "missing") from None
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ContractError):
            raise
        raise ContractError("", f"malformed event message: {exc!r}") from None
    return EventMessage(device_id, boot_id, model, out)
