"""Bronze landing: append-only JSONL files partitioned by receive date and hour.

Layout: ``<root>/date=YYYY-MM-DD/hour=HH/part-<YYYYmmddTHHMMSS>-<pid>-<random>.jsonl``. Each hub
process writes only its own part files and only appends to them; a landed line is never
rewritten. `write` returns after the lines are fsynced, so the hub acknowledges telemetry
to the broker only once it is on disk (at-least-once into bronze; silver dedups).

One line per telemetry message, in one of two formats (`BronzeFormat`):

``hub`` (the default)::

    {"received_at": "...Z", "topic_device": "dev-0001", "properties": {"anomaly": "true", ...},
     "content_encoding": "gzip"|"utf-8", "body": {...telemetry message...}}

A payload that cannot be decoded (not JSON, bad gzip, a gzip bomb, too deep) is still landed,
as ``"body_base64"`` with an ``"error"``; nothing a device sends can stop the ingest.

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
    def __init__(self, root: Path, fmt: BronzeFormat = BronzeFormat.HUB,
                 tags: Callable[[str], dict[str, str]] | None = None) -> None:
        """`tags(device_id)`: the registry's twin tags of a device (for the device_type enrichment)."""
        self.root = root
        self.fmt = BronzeFormat(fmt)
        self.tags = tags
        self.root.mkdir(parents=True, exist_ok=True)
        self._tag = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._files: dict[Path, Any] = {}
        self.lines = 0

    def _path(self, ts: float) -> Path:
        d = datetime.fromtimestamp(ts, tz=timezone.utc)
        return self.root / f"date={d:%Y-%m-%d}" / f"hour={d:%H}" / f"part-{self._tag}.jsonl"

    def write(self, items: Sequence[Landed]) -> None:
        """Append and fsync; returns once every item is durable."""
        by_file: dict[Path, list[str]] = {}
        for it in items:
            by_file.setdefault(self._path(it.received_at), []).append(self._line(it))
        for path, lines in by_file.items():
            fh = self._files.get(path)
            if fh is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                fh = self._files[path] = path.open("a", encoding="utf-8")
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
            self.lines += len(lines)
        if len(self._files) > 4:  # an hour rolled over: close older files
            for p in sorted(self._files)[:-2]:
                self._files.pop(p).close()

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


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
        else:
            rec["body_base64"] = base64.b64encode(it.payload).decode()
            rec["error"] = error
        return json.dumps(rec, separators=(",", ":")) + "\n"


def _iothub_line(it: Landed, props: dict[str, str], body: Any, error: str | None, received: datetime) -> str:
    """One record as IoT Hub's routing to storage writes it (JSON encoding of the endpoint)."""
    app = {k: v for k, v in props.items() if not k.startswith("$.")}
    enq = received.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    gz = it.payload[:2] == b"\x1f\x8b"
    system = {"connectionDeviceId": it.topic_device, "connectionAuthMethod": '{"scope":"device","type":"sas"}',
              "contentType": props.get("$.ct", "application/json"),
              "contentEncoding": props.get("$.ce", "gzip" if gz else "utf-8"), "enqueuedTime": enq}
    plain = error is None and not gz
    rec = {"EnqueuedTimeUtc": enq, "Properties": app, "SystemProperties": system,
           "Body": body if plain else base64.b64encode(it.payload).decode()}
    return json.dumps(rec, separators=(",", ":")) + "\n"


def read_bronze(root: Path) -> list[dict[str, Any]]:
    """Every landed record under root (for tests and small tools; Spark reads bronze in the jobs)."""
    out = []
    for f in sorted(root.rglob("*.jsonl")):
        with f.open() as fh:
            out += [json.loads(line) for line in fh if line.strip()]
    return out
