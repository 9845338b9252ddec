"""Bronze landing: append-only JSONL files partitioned by receive date and hour.

Layout: ``<root>/date=YYYY-MM-DD/hour=HH/part-<YYYYmmddTHHMMSS>-<pid>-<random>.jsonl``. Each hub
process writes only its own part files and only appends to them; a landed line is never
rewritten. `write` returns after the lines are fsynced, so the hub acknowledges telemetry
to the broker only once it is on disk (at-least-once into bronze; silver dedups).

One line per telemetry message, in one of two formats (`BronzeFormat`):

``hub`` (the default)::

    {"received_at": "...Z", "topic_device": "dev-0001", "properties": {"anomaly": "true", ...},
     "content_encoding": "gzip"|"utf-8", "body": {...telemetry message...}}

A payload that cannot be decoded (not JSON, bad gzip, a gzip bomb, too deep, non-finite numbers) is
still landed, as ``"body_base64"`` with an ``"error"``; nothing a device sends can stop the ingest.
Every line is strict JSON (no NaN/Infinity literals). Telemetry over 256 KB (IoT Hub's limit) is
refused by the ingest before it gets here (counted, never landed).

``iothub``: IoT Hub's own message-routing-to-storage JSON (what Auto Loader reads on Databricks)::

    {"EnqueuedTimeUtc": "...", "Properties": {...}, "SystemProperties": {"connectionDeviceId": "gw-1",
     "contentType": "application/json", "contentEncoding": "utf-8", "enqueuedTime": "..."},
     "Body": {...} | "<base64>"}

``Body`` is the JSON object when the message is plain UTF-8 JSON, otherwise base64 of the raw bytes
(gzip bodies), as IoT Hub writes it.

Enrichment: like an IoT Hub message enrichment of ``$twin.tags.device_type``, the ingest sets the
application property ``device_type`` from the device registry's tags (the sensor named in the body,
else the connected device); a value sent by the device itself is overwritten.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from contracts.durable import fsync_dir
from contracts.errors import ContractError
from contracts.telemetry import decode_payload


class BronzeFormat(str, Enum):
    HUB = "hub"
    IOTHUB = "iothub"


@dataclass(frozen=True, slots=True)
class Landed:
    topic_device: str
    properties: dict[str, str]
    payload: bytes
    received_at: float


class BronzeWriter:
    """Append-only, fsynced bronze files that a streaming file source may read.

    Lines go to a hidden in-progress file (``.part-<tag>-<n>.jsonl.inprogress``; Spark's file source skips
    hidden files) and the file is published, renamed to ``part-<tag>-<n>.jsonl``, once it is
    `rotate_s` seconds old or `max_bytes` long (checked on every `write` and `tick`), and on `close`. A
    published file never changes again, so a stream that lists it reads all of it: a file source marks a
    file done when it first reads it, and lines appended later would never be read. In-progress files a
    crashed hub process left behind are published by the next writer on the same directory (their
    lines were fsynced before the broker was acknowledged).
    """

    def __init__(self, root: Path, fmt: BronzeFormat = BronzeFormat.HUB,
                 tags: Callable[[str], dict[str, str]] | None = None, *, rotate_s: float = 5.0,
                 max_bytes: int = 128 * 1024 * 1024) -> None:
        """`tags(device_id)`: the registry's twin tags of a device (for the device_type enrichment)."""
        self.root = root
        self.fmt = BronzeFormat(fmt)
        self.tags = tags
        self.rotate_s, self.max_bytes = rotate_s, max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._tag = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._files: dict[Path, Any] = {}  # final path -> open in-progress file
        self._opened = 0.0
        self._n = 0
        self.lines = 0
        self.published = recover_in_progress(root)

    def _path(self, ts: float) -> Path:
        d = datetime.fromtimestamp(ts, tz=timezone.utc)
        return self.root / f"date={d:%Y-%m-%d}" / f"hour={d:%H}" / f"part-{self._tag}-{self._n:05d}.jsonl"

    def write(self, items: Sequence[Landed]) -> None:
        """Append and fsync; returns once every item is durable."""
        self.tick()
        by_file: dict[Path, list[str]] = {}
        for it in items:
            by_file.setdefault(self._path(it.received_at), []).append(self._line(it))
        for path, lines in by_file.items():
            fh = self._files.get(path)
            if fh is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                if not self._files:
                    self._opened = time.monotonic()
                fh = self._files[path] = _in_progress(path).open("a", encoding="utf-8")
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
            self.lines += len(lines)

    def tick(self) -> None:
        """Publish the open files if they are old or large enough."""
        if self._files and (time.monotonic() - self._opened >= self.rotate_s
                            or any(fh.tell() >= self.max_bytes for fh in self._files.values())):
            self.publish()

    def publish(self) -> None:
        """Close the open files and rename them to their final names (durably)."""
        for path, fh in self._files.items():
            fh.close()
            os.replace(_in_progress(path), path)
            fsync_dir(path.parent)
            self.published += 1
        self._files.clear()
        self._n += 1

    def close(self) -> None:
        self.publish()


    def _line(self, it: Landed) -> str:
        props = dict(it.properties)
        body: Any = None
        error = None
        try:
            body = decode_payload(it.payload)
        except ContractError as exc:
            error = str(exc)
        if self.tags is not None:
            named = body.get("device_id") if isinstance(body, dict) else None
            dtype = (self.tags(named) if isinstance(named, str) else {}).get("device_type") \
                or self.tags(it.topic_device).get("device_type")
            if dtype:
                props["device_type"] = dtype
        received = datetime.fromtimestamp(it.received_at, tz=timezone.utc)
        if self.fmt is BronzeFormat.IOTHUB:
            return _iothub_line(it, props, body, error, received)
        rec: dict[str, Any] = {
            "received_at": received.isoformat(timespec="milliseconds"),
            "topic_device": it.topic_device, "properties": props,
            "content_encoding": props.get("$.ce", "utf-8"),
        }
        if error is None:
            rec["body"] = body
            try:
                return _dumps(rec)
            except (ValueError, RecursionError) as exc:  # decodable but not re-encodable as strict JSON
                del rec["body"]
                error = f"body cannot be landed as JSON: {exc}"
        rec["body_base64"] = base64.b64encode(it.payload).decode()
        rec["error"] = error
        return _dumps(rec)


def _dumps(rec: dict[str, Any]) -> str:
    """One strict JSON line (no NaN/Infinity); ValueError or RecursionError on what cannot be one."""
    return json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n"


def _in_progress(path: Path) -> Path:
    return path.with_name(f".{path.name}.inprogress")


def recover_in_progress(root: Path) -> int:
    """Publish in-progress files of hub processes that are gone; returns how many."""
    n = 0
    for f in root.rglob(".part-*.jsonl.inprogress"):
        try:
            os.kill(int(f.name.split("-")[2]), 0)
            continue  # its process is alive: a live writer's file (this process's too)
        except (ValueError, IndexError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        os.replace(f, f.with_name(f.name[1:-len(".inprogress")]))
        n += 1
    return n


def _iothub_line(it: Landed, props: dict[str, str], body: Any, error: str | None, received: datetime) -> str:
    """One record as IoT Hub's routing to storage writes it (JSON encoding of the endpoint)."""
    app = {k: v for k, v in props.items() if not k.startswith("$.")}
    enq = received.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    gz = it.payload[:2] == b"\x1f\x8b"
    system = {"connectionDeviceId": it.topic_device, "connectionAuthMethod": '{"scope":"device","type":"sas"}',
              "contentType": props.get("$.ct", "application/json"),
              "contentEncoding": props.get("$.ce", "gzip" if gz else "utf-8"), "enqueuedTime": enq}
    rec = {"EnqueuedTimeUtc": enq, "Properties": app, "SystemProperties": system,
           "Body": base64.b64encode(it.payload).decode()}
    if error is None and not gz:
        try:
            return _dumps({**rec, "Body": body})
        except (ValueError, RecursionError):
            pass  # as IoT Hub does with a body it cannot parse: base64
    return _dumps(rec)


def read_bronze(root: Path) -> list[dict[str, Any]]:
    """Every landed record under root, published or still in progress (for tests and small tools; Spark
    reads published bronze in the jobs)."""
    out = []
    files = [*root.rglob("*.jsonl"), *root.rglob(".part-*.jsonl.inprogress")]
    for f in sorted(files, key=lambda p: p.name.lstrip(".")):
        with f.open() as fh:
            out += [json.loads(line) for line in fh if line.strip()]
    return out
