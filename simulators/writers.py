"""Write simulated readings as JSONL (the Reading contract, one per line) or CSV.

Rows are interleaved in event-time order across devices, as a fleet would emit them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import IO, Protocol

from contracts.block import ReadingBlock
from contracts.reading import READING_SCHEMA


class BlockWriter(Protocol):
    def write(self, blocks: Sequence[ReadingBlock]) -> int: ...


def _interleave(blocks: Sequence[ReadingBlock]) -> list[tuple[int, int]]:
    n = max((len(b) for b in blocks), default=0)
    return [(i, d) for i in range(n) for d in range(len(blocks)) if i < len(blocks[d])]


class JsonlWriter:
    """Writes the Reading contract's JSON form, one object per line."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def write(self, blocks: Sequence[ReadingBlock]) -> int:
        cols = [(b, b.ts_strings(), b.values.tolist(), b.seq.tolist()) for b in blocks]
        lines = []
        for i, d in _interleave(blocks):
            b, ts, vals, seq = cols[d]
            values = ",".join(f'"{c}":{round(v, 6)!r}' for c, v in zip(b.channels, vals[i], strict=True))
            label = int(b.labels[i]) if b.labels is not None else None
            fault = b.faults[i] if b.faults is not None else ""
            tail = ""
            if label is not None:
                tail = f',"label":{label},"fault":{json.dumps(fault) if fault else "null"}'
            lines.append(
                f'{{"v":{READING_SCHEMA},"device_id":"{b.device_id}","ts":"{ts[i]}","seq":{seq[i]},'
                f'"values":{{{values}}}{tail}}}\n'
            )
        self.fh.write("".join(lines))
        return len(lines)


class CsvWriter:
    """Writes ``device_id,ts,seq,<channels…>,label,fault`` with a header row."""

    def __init__(self, fh: IO[str], channels: Sequence[str]) -> None:
        self.fh = fh
        self.channels = tuple(channels)
        self._w = csv.writer(fh, lineterminator="\n")
        self._w.writerow(["device_id", "ts", "seq", *self.channels, "label", "fault"])

    def write(self, blocks: Sequence[ReadingBlock]) -> int:
        cols = [(b, b.ts_strings(), b.values.tolist()) for b in blocks]
        rows = []
        for i, d in _interleave(blocks):
            b, ts, vals = cols[d]
            label = int(b.labels[i]) if b.labels is not None else ""
            fault = b.faults[i] if b.faults is not None else ""
            rows.append([b.device_id, ts[i], int(b.seq[i]), *[repr(v) for v in vals[i]], label, fault])
        self._w.writerows(rows)
        return len(rows)
