"""`jsonl` source: Reading-contract JSON lines from a file or stdin ("-").

Checkpoint `jsonl.offset` (files only): byte offset after the last stored line, so a
restarted agent continues from there. Lines are validated by the intake (bad lines are
quarantined, not fatal).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import BinaryIO

from edge_agent.config import SourceConfig, check
from edge_agent.errors import ConfigError
from edge_agent.sources.base import Batch, Emit, Source, register


class JsonlSourceConfig(SourceConfig, tag="jsonl", frozen=True, forbid_unknown_fields=True):
    """type = "jsonl": Reading-contract JSON lines from `path` ("-" = stdin)."""

    path: str = "-"

    def __post_init__(self) -> None:
        check(bool(self.path), "path", "required: a file, or - for stdin")


@register("jsonl")
class JsonlSource(Source):
    Config = JsonlSourceConfig
    config: JsonlSourceConfig

    def run(self, emit: Emit, stop: threading.Event) -> None:
        path = self.config.path
        fh: BinaryIO
        if path == "-":
            fh, offset = sys.stdin.buffer, None
        else:
            p = Path(path)
            if not p.exists():
                raise ConfigError("source.path", f"{p} does not exist")
            fh = p.open("rb")
            offset = int(self.checkpoint.get("jsonl.offset", "0"))
            fh.seek(offset)
        try:
            while not stop.is_set():
                lines = []
                for _ in range(self.batch_size):
                    line = fh.readline()
                    if not line:
                        break
                    if offset is not None:
                        offset += len(line)
                    if line.strip():
                        lines.append(line)
                if not lines:
                    if offset is not None:
                        emit(Batch(checkpoint={"jsonl.offset": str(offset)}))
                    return
                cp = {"jsonl.offset": str(offset)} if offset is not None else {}
                if not emit(Batch(raw=lines, checkpoint=cp)):
                    return
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()
