"""Read files of readings (JSONL in the Reading contract, or the simulator's CSV).

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
from contracts.reading import Reading


def iter_reading_dicts(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, JSON object) for each reading in a .jsonl or .csv file."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
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


def load_readings(path: Path) -> Iterator[Reading]:
    for lineno, obj in iter_reading_dicts(path):
        try:
            yield Reading.from_dict(obj)
        except ContractError as exc:
            raise ContractError(exc.field, f"{path}:{lineno}: {exc.reason}") from None


def load_blocks(path: Path) -> dict[str, ReadingBlock]:
    """Load a whole file into one ReadingBlock per device (seq order)."""
    if not path.exists():
        raise ContractError("", f"{path}: no such file")
    per_device: dict[str, list[Reading]] = defaultdict(list)
    for r in load_readings(path):
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
