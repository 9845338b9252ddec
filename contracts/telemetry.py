"""The telemetry message contract: scored readings from one device, as sent upstream.

JSON form (UTF-8, optionally gzip with content-encoding "gzip")::

    {"v": 1, "device_id": "dev-0001", "boot_id": "6f1c...", "seq_first": 100, "seq_last": 131,
     "model": {"name": "pump", "version": 3, "sha256": "...", "feature_hash": "...", "threshold": 0.61},
     "channels": ["temperature", "vibration"],
     "anomalies": 1,
     "readings": [{"seq": 100, "ts": 1795492800000, "values": [61.2, 2.01],
                   "score": 0.43, "anomaly": false}, ...]}

A reading's `ts` is its event time in milliseconds since the Unix epoch (UTC): compact on
the wire (messages are billed per 4 KB) and cheap to produce at 100k readings/s.

Dedup key of a reading: (device_id, boot_id, seq). seq restarts at 0 with every boot and
boot_id changes with every boot, so the key is unique for the device's lifetime.
A message is at most MAX_MESSAGE_BYTES on the wire (IoT Hub's device-to-cloud limit).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.errors import ContractError
from contracts.reading import MAX_SEQ, validate_device_id

TELEMETRY_SCHEMA = 1
MAX_MESSAGE_BYTES = 256 * 1024
#: A gzip body may inflate to at most this many bytes (a bomb is refused, not inflated).
MAX_INFLATED_BYTES = 4 * 1024 * 1024
CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class ModelLineage:
    """Which model scored a reading: enough to reproduce the score."""

    name: str
    version: int
    sha256: str
    feature_hash: str
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "feature_hash": self.feature_hash,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ModelLineage:
        version = obj.get("version") if isinstance(obj, Mapping) else None
        if type(version) is not int or not 0 <= version < 2**31:
            raise ContractError("model.version", f"must be an integer in [0, 2^31), got {version!r}")
        try:
            return cls(
                name=str(obj["name"]),
                version=version,
                sha256=str(obj["sha256"]),
                feature_hash=str(obj["feature_hash"]),
                threshold=float(obj["threshold"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ContractError("model", f"bad model lineage: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ScoredReading:
    """One reading with its score (higher = more anomalous) and flag (score >= threshold)."""

    seq: int
    ts: int  # event time, epoch milliseconds (UTC)
    values: Sequence[float]
    score: float
    anomaly: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "values": list(self.values),
            "score": self.score,
            "anomaly": self.anomaly,
        }


@dataclass(frozen=True, slots=True)
class TelemetryMessage:
    """A batch of scored readings from one device boot, in seq order.

    Guarantees: readings are non-empty, in strictly increasing seq order, every
    reading has one value per channel, and seq_first/seq_last bound them.
    """

    device_id: str
    boot_id: str
    model: ModelLineage
    channels: Sequence[str]
    readings: Sequence[ScoredReading]

    def __post_init__(self) -> None:
        validate_device_id(self.device_id)
        if not self.boot_id:
            raise ContractError("boot_id", "must be non-empty")
        if not self.readings:
            raise ContractError("readings", "a message carries at least one reading")
        prev = -1
        width = len(self.channels)
        for i, r in enumerate(self.readings):
            if r.seq <= prev:
                raise ContractError(f"readings[{i}].seq", "seq must increase strictly within a message")
            if len(r.values) != width:
                raise ContractError(f"readings[{i}].values", f"expected {width} values, got {len(r.values)}")
            prev = r.seq

    @property
    def seq_first(self) -> int:
        return self.readings[0].seq

    @property
    def seq_last(self) -> int:
        return self.readings[-1].seq

    @property
    def anomalies(self) -> int:
        return sum(1 for r in self.readings if r.anomaly)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": TELEMETRY_SCHEMA,
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "seq_first": self.seq_first,
            "seq_last": self.seq_last,
            "model": self.model.to_dict(),
            "channels": list(self.channels),
            "anomalies": self.anomalies,
            "readings": [r.to_dict() for r in self.readings],
        }

    def encode(self, *, compress: bool = False) -> bytes:
        """Serialise to wire bytes; raise ContractError if over MAX_MESSAGE_BYTES."""
        return encode_payload(self.to_dict(), compress=compress)

    @classmethod
    def decode(cls, payload: bytes) -> TelemetryMessage:
        """Parse wire bytes (plain or gzip JSON), validating the contract."""
        obj = decode_payload(payload)
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> TelemetryMessage:
        """Validate with `telemetry_columns` (the one set of rules) and build the objects."""
        c = telemetry_columns(obj)
        w = len(c.channels)
        readings = [ScoredReading(seq, ts, c.values[i * w:(i + 1) * w], score, flag)
                    for i, (seq, ts, score, flag) in enumerate(zip(c.seq, c.ts, c.score, c.anomaly, strict=True))]
        return cls(device_id=c.device_id, boot_id=c.boot_id, model=c.model, channels=c.channels, readings=readings)


@dataclass(frozen=True, slots=True)
class TelemetryColumns:
    """A validated telemetry message as columns: what the cloud parser explodes into rows.

    `values` is flat, row-major: reading i's values are ``values[i * len(channels):(i + 1) * len(channels)]``.
    """

    device_id: str
    boot_id: str
    model: ModelLineage
    channels: list[str]
    seq: list[int]
    ts: list[int]
    values: list[float]
    score: list[float]
    anomaly: list[bool]


def message_head(obj: Mapping[str, Any]) -> tuple[str, str, ModelLineage]:
    """(device_id, boot_id, model) of a telemetry or event message, validated (KeyError when missing)."""
    device_id = validate_device_id(obj["device_id"])
    boot_id = obj["boot_id"]
    if not isinstance(boot_id, str) or not boot_id:
        raise ContractError("boot_id", "must be a non-empty string")
    return device_id, boot_id, ModelLineage.from_dict(obj["model"])


def telemetry_columns(obj: Any) -> TelemetryColumns:
    """THE telemetry validation rules, shared by the edge (`TelemetryMessage`) and the cloud parser.

    Raises ContractError naming the field for anything off: schema version, device id, empty boot id,
    channels, no readings, seq not an integer in [0, 2^63) or not strictly increasing, ts not integer
    epoch ms in 1970..9999, a reading with the wrong number of values, a non-finite value or score, an
    anomaly flag that is not a boolean, or a seq range that does not match the readings.
    """
    if not isinstance(obj, Mapping):
        raise ContractError("", f"a telemetry message must be a JSON object, got {type(obj).__name__}")
    if obj.get("v") != TELEMETRY_SCHEMA:
        raise ContractError("v", f"unsupported telemetry schema {obj.get('v')!r}")
    try:
        device_id, boot_id, model = message_head(obj)
        channels = obj["channels"]
        if not isinstance(channels, list) or not channels or not all(isinstance(x, str) and x for x in channels):
            raise ContractError("channels", "must be a non-empty list of channel names")
        rows = obj["readings"]
        if not isinstance(rows, list) or not rows:
            raise ContractError("readings", "a message carries at least one reading")
        width = len(channels)
        seqs: list[int] = []
        tss: list[int] = []
        values: list[float] = []
        scores: list[float] = []
        flags: list[bool] = []
        prev = -1
        isfinite = math.isfinite
        for i, r in enumerate(rows):
            seq, ts, vals, score, flag = r["seq"], r["ts"], r["values"], r["score"], r["anomaly"]
            if type(seq) is not int or not prev < seq <= MAX_SEQ:
                raise ContractError(f"readings[{i}].seq", f"must be an integer in [0, 2^63) above the last: {seq!r}")
            if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
                raise ContractError(f"readings[{i}].ts", f"must be epoch milliseconds in 1970..9999, got {ts!r}")
            if type(vals) is not list or len(vals) != width:
                raise ContractError(f"readings[{i}].values", f"expected {width} values")
            for v in vals:
                if (type(v) is not float and type(v) is not int) or not isfinite(v):
                    raise ContractError(f"readings[{i}].values", f"must be finite numbers, got {v!r}")
            if (type(score) is not float and type(score) is not int) or not isfinite(score):
                raise ContractError(f"readings[{i}].score", f"must be a finite number, got {score!r}")
            if type(flag) is not bool:
                raise ContractError(f"readings[{i}].anomaly", f"must be true or false, got {flag!r}")
            prev = seq
            seqs.append(seq)
            tss.append(ts)
            values.extend(vals)
            scores.append(score)
            flags.append(flag)
    except KeyError as exc:
        raise ContractError(str(exc.args[0]), "missing") from None
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ContractError):
            raise
        raise ContractError("", f"malformed telemetry message: {exc!r}") from None
    if obj.get("seq_first") != seqs[0] or obj.get("seq_last") != seqs[-1]:
        raise ContractError("seq_first", "seq range does not match the readings")
    return TelemetryColumns(device_id, boot_id, model, channels, seqs, tss, [float(v) for v in values],
                            [float(x) for x in scores], flags)


#: Event times must fall in years 1970..9999 (what every sink's timestamp type holds).
MAX_TS_MS = 253_402_300_799_999
def encode_payload(obj: Mapping[str, Any], *, compress: bool = False) -> bytes:
    """JSON-encode (compactly) and optionally gzip; enforce the 256 KB limit."""
    raw = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if compress:
        raw = gzip.compress(raw, compresslevel=6, mtime=0)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ContractError("", f"message is {len(raw)} bytes, over the {MAX_MESSAGE_BYTES} byte limit")
    return raw


def inflate(payload: bytes, limit: int = MAX_INFLATED_BYTES) -> bytes:
    """Gunzip with a byte cap; ContractError on a bomb (over `limit`), a truncated or a corrupt stream."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(payload, limit + 1)
    except zlib.error as exc:
        raise ContractError("", f"corrupt gzip body: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ContractError("", f"gzip body inflates past {limit} bytes")
    if not d.eof:
        raise ContractError("", "truncated gzip body")
    return out


def decode_payload(payload: bytes, *, max_inflated: int = MAX_INFLATED_BYTES) -> Any:
    """Decode a JSON payload, gunzipping it first if it starts with the gzip magic (1f 8b).

    Never raises anything but ContractError on hostile input: gzip bombs (capped at `max_inflated`
    bytes), truncated or corrupt gzip, invalid UTF-8, NaN/Infinity literals and nesting deeper than
    orjson's limit (1024) are all refused with a reason.
    """
    import orjson

    if payload[:2] == b"\x1f\x8b":
        payload = inflate(payload, max_inflated)
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError("", f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise ContractError("", "payload is nested too deeply") from None
