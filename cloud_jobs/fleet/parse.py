"""One parser for every input: envelope -> telemetry message -> one row per reading, or a quarantine row.

Runs in Python workers through `mapInArrow`, so the cloud applies the SAME validation rules as the
edge (`contracts.telemetry.telemetry_columns`, `decode_payload`) instead of a second copy in SQL.

Envelopes (`Envelope`):
- ``bronze``: the hub's landing line (`hub.bronze`): ``topic_device``, ``received_at``,
  ``properties``, ``body`` (JSON) or ``body_base64`` + ``error``;
- ``iothub``: IoT Hub's routing-to-storage JSON: ``SystemProperties.connectionDeviceId``,
  ``EnqueuedTimeUtc``, ``Properties``, ``Body`` as JSON or base64 (gzip bodies);
- ``raw``: the message body itself, with device, enqueued time and properties in columns (the
  Kafka/Event Hubs input, where they arrive as record headers).

Identity: ``source_device`` is the authenticated sender (the hub's ``topic_device``, IoT Hub's
``connectionDeviceId``), never read from the body; the body's ``device_id`` names the sensor (a
gateway sends for many). A message with no authenticated sender is quarantined.

Guarantee: `parse_batches` never raises on input. Every message becomes either its readings with
``status = "ok"``, or (an anomaly event message, `contracts.events`) one ``status = "event"`` row per
event with its kind in ``reason`` and its JSON in ``raw``, or exactly one row with
``status = "quarantined"``, a ``reason`` and the ``raw``
payload (base64 when it is not UTF-8; cut at `MAX_RAW_CHARS`) and the sender and receive time its envelope
gave, if it got that far (the job's watermark reads that time). Hostile input (deep nesting, gzip
bombs, NaN, non-UTF-8, out-of-range numbers) lands in quarantine.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import numpy as np

from contracts.errors import ContractError
from contracts.events import EventMessage, event_message, is_event_message
from contracts.telemetry import TelemetryColumns, decode_payload, telemetry_columns

MAX_RAW_CHARS = 1 << 20
UNKNOWN_TYPE = "unknown"

#: Spark DDL of the parser's output: one row per message, its readings packed in `readings` (see
#: `pack`). A blob is cheap to move between the JVM and Python and through the dedup state; `unpack_batches`
#: turns it into arrays (READING_DDL) that Spark explodes in the JVM.
MESSAGE_DDL = (
    "status string, reason string, source_device string, device_id string, device_type string, "
    "boot_id string, channels array<string>, model_name string, model_version int, model_sha256 string, "
    "feature_hash string, threshold double, received_ms long, raw string, last_ms long, n int, readings binary"
)
READING_ARRAYS_DDL = "seq array<long>, ts_ms array<long>, score array<double>, anomaly array<boolean>, " \
    "`values` array<array<double>>"
#: Input columns `parse_batches` reads (the io module builds them for every source).
INPUT_DDL = "raw binary, source_device string, received_ms long, properties map<string,string>"


class Envelope(str, Enum):
    BRONZE = "bronze"
    IOTHUB = "iothub"
    RAW = "raw"


class _Bad(Exception):
    """A message to quarantine; args[0] is the reason. `sender` and `received_ms`: what its envelope told
    before the message failed (None: not known)."""

    def __init__(self, reason: str, sender: str | None = None, received_ms: int | None = None) -> None:
        super().__init__(reason)
        self.sender, self.received_ms = sender or None, received_ms


def _iso_ms(text: Any, device: str = "") -> int:
    """An envelope's receive time in epoch ms; a message without a usable one is quarantined (with its
    sender, `device`, when known)."""
    if not isinstance(text, str):
        raise _Bad("envelope: missing receive time", device)
    t = text.rstrip("Z")
    head, dot, frac = t.partition(".")
    try:
        dt = datetime.fromisoformat(head + (dot + frac[:6] if dot else "")).replace(tzinfo=timezone.utc)
    except ValueError:
        raise _Bad(f"envelope: bad receive time {text[:40]!r}", device) from None
    return int(dt.timestamp() * 1000)


def _iso_ms_or_none(text: Any) -> int | None:
    try:
        return _iso_ms(text)
    except _Bad:
        return None


def _props(obj: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in obj.items()} if isinstance(obj, Mapping) else {}


def _b64_body(text: Any) -> Any:
    try:
        payload = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise _Bad("body: not base64") from None
    return decode_payload(payload)


def unwrap(envelope: Envelope, raw: bytes, source_device: str | None, received_ms: int | None,
           properties: Mapping[str, str] | None) -> tuple[str, int, dict[str, str], Any]:
    """(authenticated device, receive time ms, application properties, decoded body) of one record."""
    if envelope is Envelope.RAW:
        if received_ms is None:
            raise _Bad("envelope: missing receive time")
        return source_device or "", received_ms, dict(properties or {}), decode_payload(raw)
    rec = decode_payload(raw)
    if not isinstance(rec, Mapping):
        raise _Bad("envelope: not a JSON object")
    if envelope is Envelope.BRONZE:
        device, when = str(rec.get("topic_device") or ""), rec.get("received_at")
        if "error" in rec or "body" not in rec:
            raise _Bad(f"landed undecodable: {rec.get('error', 'no body')}", device, _iso_ms_or_none(when))
        return device, _iso_ms(when, device), _props(rec.get("properties")), rec["body"]
    system = rec.get("SystemProperties")
    device = str((system.get("connectionDeviceId") if isinstance(system, Mapping) else None) or "")
    when = rec.get("EnqueuedTimeUtc")
    body = rec.get("Body")
    if isinstance(body, str):
        try:
            body = _b64_body(body)
        except (_Bad, ContractError) as exc:
            raise _Bad(str(exc) or type(exc).__name__, device, _iso_ms_or_none(when)) from None
    return device, _iso_ms(when, device), _props(rec.get("Properties")), body


def pack(seq: Any, ts: Any, score: Any, anomaly: Any, values: Any) -> bytes:
    """A message's readings as one little-endian blob: int64 seq[n], int64 ts_ms[n], float64 score[n],
    uint8 anomaly[n], float64 values[n * channels] (row-major)."""
    return b"".join((np.asarray(seq, "<i8").tobytes(), np.asarray(ts, "<i8").tobytes(),
                     np.asarray(score, "<f8").tobytes(), np.asarray(anomaly, "u1").tobytes(),
                     np.asarray(values, "<f8").tobytes()))


def unpack(blob: bytes, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(seq, ts_ms, score, anomaly, values flat) of a `pack`ed blob of n readings."""
    b = memoryview(blob)
    seq = np.frombuffer(b[: 8 * n], "<i8")
    ts = np.frombuffer(b[8 * n: 16 * n], "<i8")
    score = np.frombuffer(b[16 * n: 24 * n], "<f8")
    anomaly = np.frombuffer(b[24 * n: 25 * n], "u1").astype(bool)
    values = np.frombuffer(b[25 * n:], "<f8")
    return seq, ts, score, anomaly, values


def seq_ts(blob: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(seq, ts_ms) of a `pack`ed blob of n readings: what the dedup operator decides on (zero-copy)."""
    b = memoryview(blob)
    return np.frombuffer(b[: 8 * n], "<i8"), np.frombuffer(b[8 * n: 16 * n], "<i8")


def select(blob: bytes, n: int, keep: np.ndarray) -> bytes:
    """The blob of only the readings where `keep` is true."""
    seq, ts, score, anomaly, values = unpack(blob, n)
    w = len(values) // n if n else 0
    return pack(seq[keep], ts[keep], score[keep], anomaly[keep], values.reshape(n, w)[keep])


class _Columns:
    """Output columns built up as Python lists, then handed to Arrow in one go per batch."""

    SCALARS = ("status", "reason", "source_device", "device_id", "device_type", "boot_id", "model_name",
               "model_version", "model_sha256", "feature_hash", "threshold", "received_ms", "raw", "last_ms", "n",
               "readings")

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {n: [] for n in self.SCALARS}
        self.chan_offsets: list[int] = [0]
        self.channels: list[str] = []

    def add_message(self, c: TelemetryColumns, source: str, dtype: str, received_ms: int) -> None:
        m = c.model
        for name, value in (("status", "ok"), ("reason", None), ("source_device", source), ("device_id", c.device_id),
                            ("device_type", dtype), ("boot_id", c.boot_id), ("model_name", m.name),
                            ("model_version", m.version), ("model_sha256", m.sha256),
                            ("feature_hash", m.feature_hash), ("threshold", m.threshold),
                            ("received_ms", received_ms), ("raw", None), ("last_ms", max(c.ts)), ("n", len(c.seq)),
                            ("readings", pack(c.seq, c.ts, c.score, c.anomaly, c.values))):
            self.cols[name].append(value)
        self.channels.extend(c.channels)
        self.chan_offsets.append(self.chan_offsets[-1] + len(c.channels))

    def add_events(self, msg: EventMessage, source: str, dtype: str, received_ms: int) -> None:
        """One ``status = "event"`` row per announcement: `reason` = its kind, `raw` = its canonical JSON
        (with device and boot), which is also what duplicates are recognised by."""
        m = msg.model
        for ev in msg.events:
            raw = json.dumps({"device_id": msg.device_id, "boot_id": msg.boot_id, **ev.to_dict()},
                             sort_keys=True, separators=(",", ":"))
            for name, value in (("status", "event"), ("reason", ev.kind), ("source_device", source),
                                ("device_id", msg.device_id), ("device_type", dtype), ("boot_id", msg.boot_id),
                                ("model_name", m.name), ("model_version", m.version), ("model_sha256", m.sha256),
                                ("feature_hash", m.feature_hash), ("threshold", ev.threshold),
                                ("received_ms", received_ms), ("raw", raw), ("last_ms", ev.last_ts), ("n", 0),
                                ("readings", b"")):
                self.cols[name].append(value)
            self.chan_offsets.append(self.chan_offsets[-1])

    def add_bad(self, reason: str, raw: bytes, source: str | None, received_ms: int | None) -> None:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "base64:" + base64.b64encode(raw).decode()
        row = dict.fromkeys(self.SCALARS)
        row.update(status="quarantined", reason=reason[:500], source_device=source, received_ms=received_ms,
                   raw=text[:MAX_RAW_CHARS], n=0, readings=b"")
        for name in self.SCALARS:
            self.cols[name].append(row[name])
        self.chan_offsets.append(self.chan_offsets[-1])

    def to_arrow(self) -> Any:
        import pyarrow as pa

        arrays = {name: pa.array(self.cols[name], _ARROW_TYPES[name]) for name in self.SCALARS}
        arrays["channels"] = pa.ListArray.from_arrays(pa.array(self.chan_offsets, pa.int32()),
                                                      pa.array(self.channels, pa.string()))
        names = _names(MESSAGE_DDL)
        return pa.RecordBatch.from_arrays([arrays[n] for n in names], names=names)


def _names(ddl: str) -> list[str]:
    return [c.split()[0].strip("`") for c in ddl.split(", ")]


def unpack_batches(batches: Iterator[Any]) -> Iterator[Any]:
    """A `mapInArrow` function: each row's `n` + `readings` blob -> READING_ARRAYS_DDL columns; every other
    column passes through untouched (zero-copy)."""
    import pyarrow as pa

    for batch in batches:
        ns = batch.column("n").to_numpy(zero_copy_only=False)
        blobs = batch.column("readings").to_pylist()
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("seq", "ts", "score", "anomaly", "values")}
        widths = []
        for blob, n in zip(blobs, ns.tolist(), strict=True):
            if not n:
                widths.append(0)
                continue
            seq, ts, score, anomaly, values = unpack(blob, n)
            for k, v in zip(parts, (seq, ts, score, anomaly, values), strict=True):
                parts[k].append(v)
            widths.append(len(values) // n)
        counts = np.nan_to_num(ns).astype(np.int32)
        msg_off = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
        row_w = np.repeat(np.asarray(widths, np.int32), counts)
        val_off = pa.array(np.concatenate([[0], np.cumsum(row_w)]).astype(np.int32))

        def flat(k: str, dtype: Any, parts: dict[str, list[np.ndarray]] = parts) -> Any:
            return np.concatenate(parts[k]).astype(dtype) if parts[k] else np.empty(0, dtype)

        cols = {
            "seq": pa.ListArray.from_arrays(msg_off, pa.array(flat("seq", np.int64))),
            "ts_ms": pa.ListArray.from_arrays(msg_off, pa.array(flat("ts", np.int64))),
            "score": pa.ListArray.from_arrays(msg_off, pa.array(flat("score", np.float64))),
            "anomaly": pa.ListArray.from_arrays(msg_off, pa.array(flat("anomaly", np.bool_))),
            "values": pa.ListArray.from_arrays(msg_off, pa.ListArray.from_arrays(
                val_off, pa.array(flat("values", np.float64)))),
        }
        keep = [name for name in batch.schema.names if name not in ("n", "readings")]
        arrays = [batch.column(name) for name in keep] + list(cols.values())
        yield pa.RecordBatch.from_arrays(arrays, names=keep + list(cols))


def _arrow_types() -> dict[str, Any]:
    import pyarrow as pa

    s, i64 = pa.string(), pa.int64()
    return {"status": s, "reason": s, "source_device": s, "device_id": s, "device_type": s, "boot_id": s,
            "seq": i64, "ts_ms": i64, "score": pa.float64(), "anomaly": pa.bool_(), "model_name": s,
            "model_version": pa.int32(), "model_sha256": s, "feature_hash": s, "threshold": pa.float64(),
            "received_ms": i64, "raw": s, "last_ms": i64, "n": pa.int32(), "readings": pa.binary()}


_ARROW_TYPES: dict[str, Any] = {}


def parse_records(envelope: Envelope, records: Iterable[tuple[bytes, str | None, int | None, Any]]) -> Any:
    """Parse (raw, source_device, received_ms, properties) records into one Arrow RecordBatch."""
    if not _ARROW_TYPES:
        _ARROW_TYPES.update(_arrow_types())
    out = _Columns()
    for raw, source, received, props in records:
        sender, at = source, received  # a quarantined message keeps what its envelope told, once known
        try:
            device, received_ms, properties, body = unwrap(envelope, raw, source, received, props)
            sender, at = device or None, received_ms
            if not device:
                raise _Bad("identity: no authenticated device (topic_device / connectionDeviceId)")
            dtype = properties.get("device_type") or UNKNOWN_TYPE
            if is_event_message(body):
                out.add_events(event_message(body), device, dtype, received_ms)
                continue
            out.add_message(telemetry_columns(body), device, dtype, received_ms)
        except _Bad as exc:
            out.add_bad(str(exc), raw, exc.sender or sender, at if exc.received_ms is None else exc.received_ms)
        except ContractError as exc:
            out.add_bad(str(exc) or type(exc).__name__, raw, sender, at)
        except Exception as exc:  # never let one message stop the job
            out.add_bad(f"internal: {type(exc).__name__}: {exc}", raw, sender, at)
    return out.to_arrow()


def parse_batches(envelope: Envelope) -> Any:
    """A `mapInArrow` function over INPUT_DDL batches producing MESSAGE_DDL batches."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            cols = batch.to_pydict()
            props = cols.get("properties") or [None] * batch.num_rows
            yield parse_records(envelope, zip(cols["raw"], cols["source_device"], cols["received_ms"],
                                              [dict(p) if p else None for p in props], strict=True))

    return run
