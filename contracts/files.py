"""Read files of readings: JSONL in the Reading contract, the simulator's CSV, or a plain CSV.

- The simulator's CSV has ``device_id,ts,seq,<channels…>[,label,fault]`` columns.
- A plain CSV (your own data) has ``timestamp,<channels…>`` (the first column may also be called
  ``ts`` or ``time``) and one device per file: pass `device_id`. Timestamps are ISO-8601, with an
  offset or naive (then `tz`, an IANA zone such as ``Europe/Berlin`` or ``UTC``, says where they were
  taken), or seconds since the Unix epoch. ``seq`` is the row's position in the file (0, 1, 2, …).

`load_blocks` validates every row through the Reading contract and groups rows by
device into ReadingBlocks in seq order. A bad row raises ContractError naming the
file, line and field.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from contracts.block import ReadingBlock
from contracts.errors import ContractError
from contracts.reading import Reading, format_ts

TIME_COLUMNS = ("timestamp", "ts", "time")


def _plain_ts(text: str, tz: str | None, where: str) -> str:
    """A plain CSV's timestamp as ISO-8601 UTC (naive ones are read in `tz`)."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return format_ts(datetime.fromtimestamp(float(text), timezone.utc))
    except (ValueError, OverflowError, OSError):
        pass
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ContractError("timestamp", f"{where}: not ISO-8601 or epoch seconds: {text[:40]!r}") from None
    if ts.tzinfo is None:
        if not tz:
            raise ContractError("timestamp", f"{where}: {text[:40]!r} has no UTC offset; say where it was "
                                             "taken with --tz (e.g. --tz UTC or --tz Europe/Berlin)")
        try:
            ts = ts.replace(tzinfo=ZoneInfo(tz))
        except (ZoneInfoNotFoundError, ValueError):
            raise ContractError("tz", f"unknown time zone {tz!r} (an IANA name such as UTC or Europe/Berlin)") from None
    return format_ts(ts)


def _plain_rows(path: Path, reader: csv.DictReader[str], device_id: str | None,
                tz: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    fields = list(reader.fieldnames or [])
    time_col = fields[0] if fields else ""
    if time_col.lower() not in TIME_COLUMNS or len(fields) < 2:
        raise ContractError("", f"{path}: a CSV needs device_id,ts,seq columns, or timestamp,<channels…> "
                                f"(got {', '.join(fields[:6]) or 'no header'})")
    if not device_id:
        raise ContractError("device_id", f"{path}: a plain timestamp,<channels…> CSV holds one device: "
                                         "name it (--device-id)")
    channels = fields[1:]
    for seq, (lineno, row) in enumerate(enumerate(reader, start=2)):
        where = f"{path}:{lineno}"
        try:
            values = {c: float(row[c]) for c in channels}
        except (KeyError, ValueError, TypeError) as exc:
            raise ContractError("values", f"{where}: bad CSV row: {exc}") from None
        yield lineno, {"device_id": device_id, "ts": _plain_ts(row[time_col] or "", tz, where), "seq": seq,
                       "values": values}


def iter_reading_dicts(path: Path, *, device_id: str | None = None,
                       tz: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, JSON object) for each reading in a .jsonl or .csv file (see the module doc;
    `device_id` and `tz` apply to plain CSVs)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if not {"device_id", "ts", "seq"} <= set(reader.fieldnames or []):
                yield from _plain_rows(path, reader, device_id, tz)
                return
            fixed = {"device_id", "ts", "seq", "label", "fault"}
            for lineno, row in enumerate(reader, start=2):
                try:
                    obj: dict[str, Any] = {
                        "device_id": row["device_id"], "ts": row["ts"], "seq": int(row["seq"]),
                        "values": {k: float(v) for k, v in row.items() if k not in fixed},
                    }
                except (KeyError, ValueError, TypeError) as exc:
                    raise ContractError("", f"{path}:{lineno}: bad CSV row: {exc}") from None
                if row.get("label", "") != "":
                    obj["label"] = int(row["label"])
                    obj["fault"] = row.get("fault") or None
                yield lineno, obj
        return
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ContractError("", f"{path}:{lineno}: not JSON: {exc.msg}") from None


def load_readings(path: Path, *, device_id: str | None = None, tz: str | None = None) -> Iterator[Reading]:
    for lineno, obj in iter_reading_dicts(path, device_id=device_id, tz=tz):
        try:
            yield Reading.from_dict(obj)
        except ContractError as exc:
            raise ContractError(exc.field, f"{path}:{lineno}: {exc.reason}") from None


def load_blocks(path: Path, *, device_id: str | None = None, tz: str | None = None) -> dict[str, ReadingBlock]:
    """Load a whole file into one ReadingBlock per device (seq order)."""
    if not path.exists():
        raise ContractError("", f"{path}: no such file")
    per_device: dict[str, list[Reading]] = defaultdict(list)
    for r in load_readings(path, device_id=device_id, tz=tz):
        per_device[r.device_id].append(r)
    if not per_device:
        raise ContractError("", f"{path}: no readings")
    out = {}
    channels: tuple[str, ...] | None = None
    for dev, rs in sorted(per_device.items()):
        rs.sort(key=lambda r: r.seq)
        block = ReadingBlock.from_readings(rs, channels)
        channels = block.channels
        out[dev] = block
    return out
