"""Intake: turn raw readings into ReadingBlocks, quarantining bad ones with a reason.

Reasons (the `reason` label of `edgeflag_readings_quarantined_total`):
malformed (not JSON / not an object / missing or unparsable field), wrong_type (a value or
seq of the wrong type), non_finite (NaN or ±inf), out_of_range (a value outside
[scoring.min_value, scoring.max_value], or a seq above 2**63-1), bad_timestamp (an event time
outside 2000-01-01..2100-01-01 UTC: a broken clock), missing_channel (lacks a channel the model
needs), channel_mismatch (a channel set other than the one the device sent first in this boot; a
device may change its channels when it restarts at seq 0), duplicate (seq not above the last
accepted seq of that device; a seq of 0 after a higher one is a device restart and opens a new
boot_id instead).

Guarantee: a rejected reading never changes the stream state, so no hostile value (a seq of 2**63,
a year-9999 time) can make later good readings look like duplicates, and no single reading can
raise out of `parse` or `check_blocks`.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from contracts.block import ReadingBlock
from contracts.reading import MAX_TS, MIN_TS, ReadingError, decode_reading

REASONS = ("malformed", "wrong_type", "non_finite", "out_of_range", "bad_timestamp", "missing_channel",
           "channel_mismatch", "duplicate")


@dataclass(slots=True)
class Rejected:
    reason: str
    detail: str
    raw: Any


class Quarantine:
    """Counts rejected readings by reason and keeps the latest ones in a bounded JSONL file."""

    def __init__(self, path: Path | None, max_bytes: int = 10 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, rejected: Iterable[Rejected]) -> None:
        lines = []
        for r in rejected:
            self.counts[r.reason] += 1
            raw = r.raw.decode("utf-8", "replace") if isinstance(r.raw, (bytes, bytearray)) else r.raw
            lines.append(json.dumps({"reason": r.reason, "detail": r.detail, "raw": raw}, default=str) + "\n")
        if not lines or self.path is None:
            return
        with self._lock:
            try:
                if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                    self.path.replace(self.path.with_suffix(".jsonl.1"))
                with self.path.open("a") as fh:
                    fh.writelines(lines)
            except OSError:
                pass  # the counters still say what happened


@dataclass
class StreamState:
    """Per-device dedup state: current boot_id, last accepted seq, and the channel set of this boot."""

    boot_id: str
    last_seq: int
    channels: frozenset[str] | None = None


@dataclass
class Intake:
    """Validates readings against the model's channels and the per-device stream state."""

    required: tuple[str, ...]
    min_value: float = -1e9
    max_value: float = 1e9
    streams: dict[str, StreamState] = field(default_factory=dict)
    _known_ids: set[str] = field(default_factory=set, repr=False)  # device ids already validated

    def parse(self, items: Sequence[Any]) -> tuple[list[tuple[ReadingBlock, str]], list[Rejected]]:
        """Raw readings (bytes, str or dicts in the Reading contract) -> blocks + rejects."""
        rows: dict[tuple[str, tuple[str, ...]], list[tuple[float, int, list[float]]]] = {}
        rejected: list[Rejected] = []
        for raw in items:
            try:
                dev, ts, seq, chans, vals = self._one(raw)
            except _Reject as r:
                rejected.append(Rejected(r.reason, r.detail, raw))
                continue
            except Exception as exc:  # one odd reading must not crash-loop the daemon
                rejected.append(Rejected("malformed", f"unreadable: {type(exc).__name__}: {exc}", raw))
                continue
            rows.setdefault((dev, chans), []).append((ts, seq, vals))
        blocks = []
        for (dev, chans), rs in rows.items():
            blocks.append(ReadingBlock(
                device_id=dev, channels=chans, ts=np.array([r[0] for r in rs], dtype=np.float64),
                seq=np.array([r[1] for r in rs], dtype=np.int64),
                values=np.array([r[2] for r in rs], dtype=np.float64)))
        accepted, dups = self.check_blocks(blocks)
        return accepted, rejected + dups

    def _one(self, raw: Any) -> tuple[str, float, int, tuple[str, ...], list[float]]:
        obj = raw
        if isinstance(raw, (bytes, bytearray, str)):
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                try:  # NaN / Infinity literals: orjson refuses them, json reads them (-> non_finite below)
                    obj = json.loads(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise _Reject("malformed", f"not JSON: {exc}") from None
        try:
            d = decode_reading(obj, self._known_ids)
        except ReadingError as exc:
            raise _Reject(exc.kind, str(exc)) from None
        missing = [c for c in self.required if c not in d.channels]
        if missing:
            raise _Reject("missing_channel", f"missing {', '.join(missing)}")
        lo, hi = self.min_value, self.max_value
        for c, v in zip(d.channels, d.values, strict=True):
            if not lo <= v <= hi:
                raise _Reject("out_of_range", f"values.{c}={str(v)[:40]} outside [{lo}, {hi}]")
        return d.device_id, d.ts.timestamp(), d.seq, d.channels, d.values

    def check_blocks(self, blocks: Sequence[ReadingBlock]) -> tuple[list[tuple[ReadingBlock, str]], list[Rejected]]:
        """Vectorised checks (channels, finite, range, seq order). Returns (block, boot_id) pairs and rejects.

        A block is split where its device restarted (seq back to 0), so each part has one boot_id.
        """
        out: list[tuple[ReadingBlock, str]] = []
        rejected: list[Rejected] = []
        for b in blocks:
            missing = [c for c in self.required if c not in b.channels]
            if missing:
                rejected += [Rejected("missing_channel", f"missing {', '.join(missing)}", _row(b, i))
                             for i in range(len(b))]
                continue
            st = self.streams.get(b.device_id)
            if st is not None and st.channels is not None and frozenset(b.channels) != st.channels \
                    and not (len(b) and b.seq[0] == 0 and st.last_seq > 0):  # a restart may change them
                rejected += [Rejected("channel_mismatch", f"channels {', '.join(b.channels)}; this device sends "
                                      f"{', '.join(sorted(st.channels))}", _row(b, i)) for i in range(len(b))]
                continue
            finite = np.isfinite(b.values).all(axis=1)
            inrange = ((b.values >= self.min_value) & (b.values <= self.max_value)).all(axis=1)
            for i in np.flatnonzero(~finite).tolist():
                rejected.append(Rejected("non_finite", "NaN or inf value", _row(b, i)))
            for i in np.flatnonzero(finite & ~inrange).tolist():
                rejected.append(Rejected("out_of_range", f"outside [{self.min_value}, {self.max_value}]", _row(b, i)))
            ok = finite & inrange
            in_time = (b.ts >= MIN_TS) & (b.ts < MAX_TS)
            for i in np.flatnonzero(ok & ~in_time).tolist():
                rejected.append(Rejected("bad_timestamp", "event time outside 2000-01-01..2100-01-01 UTC", _row(b, i)))
            out += self._by_boot(b, ok & in_time, rejected)
        return [(blk, boot) for blk, boot in out if len(blk)], rejected

    def _by_boot(self, b: ReadingBlock, ok: np.ndarray, rejected: list[Rejected]) -> list[tuple[ReadingBlock, str]]:
        st = self.streams.get(b.device_id)
        seq = b.seq
        if st is not None and ok.all() and len(seq) and seq[0] > st.last_seq and bool(np.all(np.diff(seq) > 0)):
            st.last_seq = int(seq[-1])  # the common case: increasing, after the last accepted one
            st.channels = frozenset(b.channels)
            return [(b, st.boot_id)]
        parts: list[tuple[ReadingBlock, str]] = []
        keep = np.zeros(len(b), dtype=bool)
        start = 0
        for i, s in enumerate(seq.tolist()):
            if not ok[i]:
                continue
            if st is None:
                st = self.streams[b.device_id] = StreamState(boot_id=new_boot_id(), last_seq=-1)
            st.channels = frozenset(b.channels)
            if s > st.last_seq:
                st.last_seq = s
                keep[i] = True
            elif s == 0 and st.last_seq > 0:  # the device restarted its sequence: a new boot
                if keep[start:i].any():
                    parts.append((_take(b.slice(start, i), keep[start:i]), st.boot_id))
                start = i
                st.boot_id, st.last_seq = new_boot_id(), 0
                keep[i] = True
            else:
                rejected.append(Rejected("duplicate", f"seq {s} <= last accepted {st.last_seq}", _row(b, i)))
        if st is not None and keep[start:].any():
            parts.append((_take(b.slice(start, len(b)), keep[start:]), st.boot_id))
        return parts


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def new_boot_id() -> str:
    return uuid.uuid4().hex


def _row(b: ReadingBlock, i: int) -> dict[str, Any]:
    return {"device_id": b.device_id, "seq": int(b.seq[i]), "values": dict(zip(b.channels, b.values[i].tolist(),
                                                                                strict=True))}


def _take(b: ReadingBlock, mask: np.ndarray) -> ReadingBlock:
    return ReadingBlock(device_id=b.device_id, channels=b.channels, ts=b.ts[mask], seq=b.seq[mask],
                        values=b.values[mask],
                        labels=None if b.labels is None else b.labels[mask],
                        faults=None if b.faults is None else [f for f, m in zip(b.faults, mask, strict=True) if m])
