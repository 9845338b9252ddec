"""Bronze files a streaming file source can read: hidden while written, published whole, never appended to."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hub.bronze import BronzeWriter, Landed, read_bronze, recover_in_progress


def _item(i: int) -> Landed:
    return Landed("dev-1", {}, json.dumps({"n": i}).encode(), time.time())


def visible(root: Path) -> list[Path]:
    """What Spark's file source lists: no names starting with '.' or '_'."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))


def test_a_file_is_published_once_whole_and_never_changes_after(tmp_path: Path) -> None:
    w = BronzeWriter(tmp_path, rotate_s=0.3)
    w.write([_item(0), _item(1)])
    assert visible(tmp_path) == [] and len(read_bronze(tmp_path)) == 2  # durable, but not yet listed
    time.sleep(0.35)
    w.tick()
    first = visible(tmp_path)
    assert len(first) == 1 and len(first[0].read_text().splitlines()) == 2
    size = first[0].stat().st_size
    w.write([_item(2)])  # goes to a new file
    assert first[0].stat().st_size == size and len(visible(tmp_path)) == 1
    w.close()
    assert len(visible(tmp_path)) == 2 and [r["body"]["n"] for r in read_bronze(tmp_path)] == [0, 1, 2]


def test_in_progress_files_of_a_dead_process_are_published_and_a_live_ones_are_not(tmp_path: Path) -> None:
    d = tmp_path / "date=2026-01-01" / "hour=00"
    d.mkdir(parents=True)
    dead = 2**22 + 12345
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
    (d / f".part-20260101T000000-{dead}-abcd-00000.jsonl.inprogress").write_text('{"x":1}\n')
    (d / f".part-20260101T000000-{os.getpid()}-beef-00000.jsonl.inprogress").write_text('{"x":2}\n')
    assert recover_in_progress(tmp_path) == 1
    assert [p.name for p in visible(tmp_path)] == [f"part-20260101T000000-{dead}-abcd-00000.jsonl"]
