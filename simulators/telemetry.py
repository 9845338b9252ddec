"""Scored telemetry straight from the simulator, for the cloud side's tests and benchmarks.

`oracle_messages` turns simulated blocks into telemetry messages (the agent's wire contract) whose
anomaly flag is the ground-truth label and whose score follows it: a perfect scorer, so a cloud test
checks aggregation and incidents without depending on a model's detection quality.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from contracts.block import ReadingBlock
from contracts.telemetry import TELEMETRY_SCHEMA

ORACLE_MODEL = {"name": "oracle", "version": 1, "sha256": "0" * 64, "feature_hash": "0" * 16, "threshold": 0.5}


def oracle_messages(blocks: Iterable[ReadingBlock], *, per_message: int = 40, boot_ids: dict[str, str] | None = None,
                    model: dict[str, Any] | None = None, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Telemetry message dicts, `per_message` readings each, in seq order per device."""
    rng = np.random.default_rng(seed)
    boots = boot_ids if boot_ids is not None else {}
    for b in blocks:
        boot = boots.setdefault(b.device_id, uuid.UUID(int=int(rng.integers(1 << 62))).hex)
        labels = b.labels if b.labels is not None else np.zeros(len(b), dtype=np.int8)
        scores = np.where(labels == 1, 0.8, 0.2) + rng.uniform(-0.15, 0.15, len(b))
        ts_ms = np.round(b.ts * 1000).astype(np.int64)
        for i in range(0, len(b), per_message):
            sl = slice(i, i + per_message)
            rows = [{"seq": int(s), "ts": int(t), "values": [round(x, 4) for x in v], "score": round(float(sc), 4),
                     "anomaly": bool(lab)}
                    for s, t, v, sc, lab in zip(b.seq[sl].tolist(), ts_ms[sl].tolist(), b.values[sl].tolist(),
                                                 scores[sl].tolist(), labels[sl].tolist(), strict=True)]
            yield {"v": TELEMETRY_SCHEMA, "device_id": b.device_id, "boot_id": boot, "seq_first": rows[0]["seq"],
                   "seq_last": rows[-1]["seq"], "model": model or ORACLE_MODEL, "channels": list(b.channels),
                   "anomalies": sum(r["anomaly"] for r in rows), "readings": rows}
