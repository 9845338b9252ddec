"""Bronze landing: append-only JSONL files partitioned by receive date and hour.

Layout: ``<root>/date=YYYY-MM-DD/hour=HH/part-<YYYYmmddTHHMMSS>-<pid>-<random>.jsonl``. Each hub
process writes only its own part files and only appends to them; a landed line is never
rewritten. `write` returns after the lines are fsynced, so the hub acknowledges telemetry
to the broker only once it is on disk (at-least-once into bronze; silver dedups).

One line per telemetry message::

    {"received_at": "...Z", "topic_device": "dev-0001", "properties": {"anomaly": "true", ...},
     "content_encoding": "gzip"|"utf-8", "body": {...telemetry message...}}

A payload that is not valid JSON is still landed, as ``"body_base64"`` with an ``"error"``.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Landed:
    topic_device: str
    properties: dict[str, str]
    payload: bytes
    received_at: float


class BronzeWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
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
            by_file.setdefault(self._path(it.received_at), []).append(_line(it))
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


def _line(it: Landed) -> str:
    rec: dict[str, Any] = {
        "received_at": datetime.fromtimestamp(it.received_at, tz=timezone.utc).isoformat(timespec="milliseconds"),
        "topic_device": it.topic_device, "properties": it.properties,
        "content_encoding": it.properties.get("$.ce", "utf-8"),
    }
    raw = it.payload
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        rec["body"] = json.loads(raw)
    except (OSError, ValueError) as exc:
        rec["body_base64"] = base64.b64encode(it.payload).decode()
        rec["error"] = f"not JSON: {exc}"
    return json.dumps(rec, separators=(",", ":")) + "\n"


def read_bronze(root: Path) -> list[dict[str, Any]]:
    """Every landed record under root (for tests and small tools; Spark reads bronze in the jobs)."""
    out = []
    for f in sorted(root.rglob("*.jsonl")):
        with f.open() as fh:
            out += [json.loads(line) for line in fh if line.strip()]
    return out
