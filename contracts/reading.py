"""The Reading contract: one sample of a device's channels at one instant.

JSON form (one object per line in JSONL files and one per MQTT sensor message)::

    {"v": 1, "device_id": "dev-0001", "ts": "2026-11-24T04:00:00.000Z", "seq": 17,
     "values": {"temperature": 61.2, "vibration": 2.01}, "label": 0, "fault": null}

`label` and `fault` are ground truth written only by simulators; they are optional
and never influence scoring.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

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


class ReadingError(ContractError):
    """A reading the contract refuses. `kind` is the quarantine reason: malformed, wrong_type,
    out_of_range, bad_timestamp or non_finite."""

    def __init__(self, kind: str, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.kind = kind


class DecodedReading(NamedTuple):
    device_id: str
    ts: datetime
    seq: int
    channels: tuple[str, ...]
    values: list[float]
    label: int | None
    fault: str | None


def decode_reading(obj: Any, known_ids: set[str] | None = None) -> DecodedReading:
    """Check a reading's JSON form (a parsed object) against the contract: the one decoder of the
    agent's intake and `Reading.from_dict` alike. Raises ReadingError naming the field and the kind.

    `known_ids`: device ids already validated (the intake's cache; valid ids are added to it)."""
    if not isinstance(obj, Mapping):
        raise ReadingError("malformed", "", f"a reading must be a JSON object, got {type(obj).__name__}")
    version = obj.get("v", READING_SCHEMA)
    if version != READING_SCHEMA or type(version) is not int:
        raise ReadingError("malformed", "v", f"unsupported reading schema {str(version)[:20]!r} "
                                             f"(this build reads {READING_SCHEMA})")
    for key in ("device_id", "ts", "seq", "values"):
        if key not in obj:
            raise ReadingError("malformed", key, "missing")
    dev = obj["device_id"]
    if known_ids is None or type(dev) is not str or dev not in known_ids:
        try:
            validate_device_id(dev)
        except ContractError as exc:
            raise ReadingError("malformed", exc.field, exc.reason) from None
        if known_ids is not None and len(known_ids) < 100_000:
            known_ids.add(dev)
    try:
        ts = parse_ts(obj["ts"])
    except ContractError as exc:
        raise ReadingError("malformed", exc.field, exc.reason) from None
    seq = obj["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ReadingError("wrong_type", "seq", f"must be a non-negative integer, got {str(seq)[:40]!r}")
    if seq > MAX_SEQ:
        raise ReadingError("out_of_range", "seq", f"{str(seq)[:40]} above 2**63-1")
    if not MIN_TS <= ts.timestamp() < MAX_TS:
        raise ReadingError("bad_timestamp", "ts", f"{str(obj['ts'])[:40]} outside 2000-01-01..2100-01-01 UTC")
    label = obj.get("label")
    if label is not None and (type(label) is not int or label not in (0, 1)):
        raise ReadingError("wrong_type", "label", f"must be 0, 1 or null, got {str(label)[:20]!r}")
    fault = obj.get("fault")
    if fault is not None and not isinstance(fault, str):
        raise ReadingError("wrong_type", "fault", "must be a string or null")
    values = obj["values"]
    if not isinstance(values, Mapping):
        raise ReadingError("malformed", "values", "must be an object of channel name to number")
    if not values:
        raise ReadingError("malformed", "values", "no channel values")
    chans = tuple(values)
    vals = []
    for c in chans:
        v = values[c]
        t = type(v)
        if t is not float and t is not int and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
            raise ReadingError("wrong_type", f"values.{c}", f"must be a number, got {t.__name__}")
        try:
            f = float(v)
        except OverflowError:  # an int beyond float range
            raise ReadingError("out_of_range", f"values.{c}", f"{str(v)[:40]} beyond a 64-bit float") from None
        if not math.isfinite(f):
            raise ReadingError("non_finite", f"values.{c}", f"must be finite, got {v}")
        vals.append(f)
    return DecodedReading(dev, ts, seq, chans, vals, label, fault)


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
        """Build a Reading from its JSON form (`decode_reading`), raising ContractError naming the bad field."""
        d = decode_reading(obj)
        return cls(device_id=d.device_id, ts=d.ts, seq=d.seq, values=dict(obj["values"]), label=d.label,
                   fault=d.fault)
