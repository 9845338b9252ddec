"""The Reading contract: one sample of a device's channels at one instant.

JSON form (one object per line in JSONL files and one per MQTT sensor message)::

    {"v": 1, "device_id": "dev-0001", "ts": "2026-11-24T04:00:00.000Z", "seq": 17,
     "values": {"temperature": 61.2, "vibration": 2.01}, "label": 0, "fault": null}

`label` and `fault` are ground truth written only by simulators; they are optional
and never influence scoring.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from contracts.errors import ContractError

READING_SCHEMA = 1
MAX_DEVICE_ID_LEN = 128
MAX_SEQ = 2**63 - 1  # seq is a signed 64-bit integer everywhere downstream (numpy, SQLite, Spark)
#: Event times must fall in [2000-01-01, 2100-01-01) UTC: a reading from year 1 or 9999 is a broken
#: clock, and such times overflow the datetime and timestamp types of the stores downstream.
MIN_TS = 946684800.0
MAX_TS = 4102444800.0
_ALLOWED_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.:_")


def format_ts(ts: datetime) -> str:
    """Format an aware datetime as ISO-8601 UTC with milliseconds and a trailing Z."""
    if ts.tzinfo is None:
        raise ContractError("ts", "naive datetime; event times must be timezone-aware UTC")
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_ts(text: str) -> datetime:
    """Parse an ISO-8601 timestamp; it must carry a UTC offset (Z or ±hh:mm)."""
    if not isinstance(text, str):
        raise ContractError("ts", f"expected an ISO-8601 string, got {type(text).__name__}")
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError as exc:
        raise ContractError("ts", f"not an ISO-8601 timestamp: {text[:64]!r}") from exc
    if ts.tzinfo is None:
        raise ContractError("ts", f"timestamp has no UTC offset: {text[:64]!r}")
    try:
        return ts.astimezone(timezone.utc)
    except OverflowError:
        raise ContractError("ts", f"timestamp out of range: {text[:64]!r}") from None


def check_ts_range(epoch: float) -> None:
    """Raise ContractError unless MIN_TS <= epoch < MAX_TS (see MIN_TS)."""
    if not MIN_TS <= epoch < MAX_TS:
        raise ContractError("ts", f"event time {epoch:.0f} s outside 2000-01-01..2100-01-01 UTC")


def validate_device_id(device_id: object) -> str:
    """Return device_id if it is a valid IoT Hub style device id, else raise ContractError."""
    if not isinstance(device_id, str) or not device_id:
        raise ContractError("device_id", "must be a non-empty string")
    if len(device_id) > MAX_DEVICE_ID_LEN:
        raise ContractError("device_id", f"longer than {MAX_DEVICE_ID_LEN} characters")
    if not set(device_id) <= _ALLOWED_ID_CHARS:
        raise ContractError("device_id", f"has characters outside [A-Za-z0-9-.:_]: {device_id!r}")
    return device_id


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample of a device's channels.

    Guarantees after construction: device_id is valid, ts is timezone-aware UTC within
    [MIN_TS, MAX_TS), seq is an int in [0, MAX_SEQ], every value is a finite float.
    """

    device_id: str
    ts: datetime
    seq: int
    values: Mapping[str, float]
    label: int | None = None
    fault: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if self.ts.tzinfo is None:
            raise ContractError("ts", "naive datetime; event times must be timezone-aware UTC")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise ContractError("seq", f"must be a non-negative integer, got {self.seq!r}")
        if self.seq > MAX_SEQ:
            raise ContractError("seq", f"must be at most 2**63-1, got {self.seq}")
        check_ts_range(self.ts.timestamp())
        if not self.values:
            raise ContractError("values", "no channel values")
        for name, value in self.values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ContractError(f"values.{name}", f"must be a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ContractError(f"values.{name}", f"must be finite, got {value!r}")
        if self.label not in (None, 0, 1):
            raise ContractError("label", f"must be 0, 1 or null, got {self.label!r}")

    @property
    def ts_epoch(self) -> float:
        """Event time as seconds since the Unix epoch."""
        return self.ts.timestamp()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see module docstring)."""
        out: dict[str, Any] = {
            "v": READING_SCHEMA,
            "device_id": self.device_id,
            "ts": format_ts(self.ts),
            "seq": self.seq,
            "values": dict(self.values),
        }
        if self.label is not None:
            out["label"] = self.label
            out["fault"] = self.fault
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Reading:
        """Build a Reading from its JSON form, raising ContractError naming the bad field."""
        if not isinstance(obj, Mapping):
            raise ContractError("", f"a reading must be a JSON object, got {type(obj).__name__}")
        version = obj.get("v", READING_SCHEMA)
        if version != READING_SCHEMA:
            raise ContractError("v", f"unsupported reading schema {version!r} (this build reads {READING_SCHEMA})")
        for key in ("device_id", "ts", "seq", "values"):
            if key not in obj:
                raise ContractError(key, "missing")
        values = obj["values"]
        if not isinstance(values, Mapping):
            raise ContractError("values", "must be an object of channel name to number")
        label = obj.get("label")
        fault = obj.get("fault")
        if fault is not None and not isinstance(fault, str):
            raise ContractError("fault", "must be a string or null")
        return cls(
            device_id=obj["device_id"],
            ts=parse_ts(obj["ts"]),
            seq=obj["seq"],
            values=dict(values),
            label=label,
            fault=fault,
        )
