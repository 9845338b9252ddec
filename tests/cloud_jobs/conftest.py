"""One local SparkSession for the whole run (UI off, 2 shuffle partitions), and bronze builders."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.bronze import BronzeFormat, BronzeWriter, Landed


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    from cloud_jobs.spark import get_spark

    s = get_spark("edgeflag-tests", master="local[2]")
    yield s
    s.stop()


def land(bronze: Path, messages: Iterable[dict[str, Any]], *, types: dict[str, str] | None = None,
         fmt: BronzeFormat = BronzeFormat.HUB, source: str | None = None, received: float | None = None) -> int:
    """Land telemetry messages in bronze as the hub does (one part file per call); returns readings landed."""
    tags = (lambda d: {"device_type": types[d]} if d in types else {}) if types else None
    w = BronzeWriter(bronze, fmt, tags)
    n = 0
    items = []
    for m in messages:
        at = received if received is not None else m["readings"][-1]["ts"] / 1000 + 0.5
        items.append(Landed(source or m["device_id"], {"$.ct": "application/json", "$.ce": "utf-8"},
                            json.dumps(m).encode(), at))
        n += len(m["readings"])
    w.write(items)
    w.close()
    time.sleep(0.01)  # distinct part-file names per call
    return n
