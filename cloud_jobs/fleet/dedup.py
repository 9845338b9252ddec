"""Exactly-once readings in a stream, with one small state row per stream instead of one per reading.

A stream is ``(source_device, device_id, boot_id)``; its seq numbers are unique. The state of a stream
is the set of seq numbers already emitted, kept as sorted disjoint ranges ``[lo, hi]`` (a healthy
stream is one range), plus the largest event time seen. For each message, in seq order:

1. readings with event time at or below the watermark are dropped and counted as late;
2. readings whose seq lies in a range are dropped as duplicates;
3. the rest are emitted and their seqs merged into the ranges.

The state times out when the watermark passes the stream's largest event time. From then on any
reading of that stream is older than the watermark, so it is late (rule 1): a duplicate can never
slip through after the state is gone. This is the guarantee of Spark's
``dropDuplicatesWithinWatermark`` on ``(source_device, device_id, boot_id, seq)``, at a fraction of the
state-store writes (measured in docs/benchmarks.md).

A quarantined message has no readings; its stream is ``(sender, "", "q:<sha256 of the payload>")``, so a
message the hub landed twice is quarantined once. One with no time at all (a torn line) is remembered only
until the watermark next moves.

Late readings are reported as a row with ``status = "late"`` and the count in ``late`` (Spark's own
``numRowsDroppedByWatermark`` does not cover a custom stateful operator; the job adds these up).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from cloud_jobs.fleet.parse import select, seq_ts

# PySpark's applyInPandasWithState serializer pads each output with all-NA frames and concatenates them
# (pyspark/worker.py), and pandas 2 warns about that on every micro-batch, flooding the job's stderr.
# Nothing of ours to fix; this module is imported in every Python worker that runs the operator.
warnings.filterwarnings("ignore", message="The behavior of DataFrame concatenation with empty or all-NA entries",
                        category=FutureWarning)

#: Ranges travel as "lo-hi,lo-hi" text: PySpark 4.3 fails to read array types in a state schema.
STATE_DDL = "ranges string, max_ms long"
KEY = ("source_device", "device_id", "boot_id")


def merge_ranges(lo: np.ndarray, hi: np.ndarray, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranges (sorted, disjoint, inclusive) united with sorted unique `seqs`; adjacent ranges join."""
    if len(seqs) == 0:
        return lo, hi
    breaks = np.flatnonzero(np.diff(seqs) != 1)
    new_lo = np.concatenate([seqs[:1], seqs[breaks + 1]])
    new_hi = np.concatenate([seqs[breaks], seqs[-1:]])
    all_lo, all_hi = np.concatenate([lo, new_lo]), np.concatenate([hi, new_hi])
    order = np.argsort(all_lo, kind="stable")
    all_lo, all_hi = all_lo[order], all_hi[order]
    out_lo, out_hi = [int(all_lo[0])], [int(all_hi[0])]
    for a, b in zip(all_lo[1:].tolist(), all_hi[1:].tolist(), strict=True):
        if a <= out_hi[-1] + 1:
            out_hi[-1] = max(out_hi[-1], b)
        else:
            out_lo.append(a)
            out_hi.append(b)
    return np.asarray(out_lo, dtype=np.int64), np.asarray(out_hi, dtype=np.int64)


def covered(lo: np.ndarray, hi: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """Which of `seqs` lie in one of the ranges."""
    if len(lo) == 0:
        return np.zeros(len(seqs), dtype=bool)
    idx = np.searchsorted(hi, seqs, side="left")
    inside = idx < len(hi)
    out = np.zeros(len(seqs), dtype=bool)
    out[inside] = lo[idx[inside]] <= seqs[inside]
    return out


def dedup_group(key: tuple[Any, ...], frames: Iterator[Any], state: Any, columns: list[str]) -> Iterator[Any]:
    """The `applyInPandasWithState` function (see the module docstring)."""
    import pandas as pd

    if state.hasTimedOut:
        state.remove()
        return
    wm = int(state.getCurrentWatermarkMs() or 0)
    if state.exists:
        text, max_ms = state.get
        pairs = np.array([p.split("-") for p in text.split(",")] if text else np.empty((0, 2)), dtype=np.int64)
        lo, hi = pairs[:, 0].copy(), pairs[:, 1].copy()
    else:
        lo, hi, max_ms = np.empty(0, np.int64), np.empty(0, np.int64), -1
    parts = list(frames)
    msgs = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    if msgs.empty:
        return
    keep_rows: list[int] = []
    blobs: dict[int, tuple[bytes, int]] = {}
    late_total = 0
    if key[2].startswith("q:"):  # a quarantined payload: emit the first copy, once
        if not state.exists:
            keep_rows.append(0)
            known = msgs["msg_ms"].dropna()
            # a payload with no time at all is remembered until the watermark next moves
            max_ms = int(known.max()) if len(known) else wm + 1
    else:
        ns, raw = msgs["n"].to_numpy(), msgs["readings"].to_numpy()
        unpacked = [seq_ts(b, int(n)) for b, n in zip(raw, ns, strict=True)]
        firsts = np.array([u[0][0] if len(u[0]) else -1 for u in unpacked], dtype=np.int64)
        order = np.argsort(firsts, kind="stable").tolist()
        seqs_all = np.concatenate([unpacked[i][0] for i in order])
        ts_all = np.concatenate([unpacked[i][1] for i in order])
        if (all(len(u[0]) for u in unpacked) and (ts_all > wm).all() and (not len(hi) or seqs_all[0] > hi[-1])
                and (np.diff(seqs_all) > 0).all()):
            order = []  # the usual case: new readings after everything kept, none late: all kept, one merge
            keep_rows = list(range(len(unpacked)))
            lo, hi = merge_ranges(lo, hi, seqs_all)
            max_ms = max(max_ms, int(ts_all.max()))
        for i in order:
            seqs, ts = unpacked[i][0], unpacked[i][1]
            fresh = ts > wm  # Spark: an event at or below the watermark is late
            late_total += len(ts) - int(fresh.sum())
            if len(lo):
                fresh &= ~covered(lo, hi, seqs)
            if not fresh.any():
                continue
            keep_rows.append(i)
            if not fresh.all():
                blobs[i] = (select(raw[i], int(ns[i]), fresh), int(fresh.sum()))
            lo, hi = merge_ranges(lo, hi, seqs[fresh])
            max_ms = max(max_ms, int(ts[fresh].max()))
    if max_ms > wm:
        state.update((",".join(f"{a}-{b}" for a, b in zip(lo.tolist(), hi.tolist(), strict=True)), max_ms))
        state.setTimeoutTimestamp(max_ms)
    elif state.exists:
        state.remove()
    out = msgs.iloc[sorted(keep_rows)].copy()
    for i, (blob, n) in blobs.items():
        out.at[i, "readings"], out.at[i, "n"] = blob, n
    out["late"] = 0
    if late_total:
        marker = msgs.iloc[:1].copy()
        marker["status"], marker["reason"], marker["raw"], marker["late"] = "late", None, None, late_total
        marker["n"], marker["readings"] = 0, b""
        out = pd.concat([out, marker], ignore_index=True)
    if len(out):
        yield out.reindex(columns=columns)
