"""SQLite outbox (WAL): the agent's store-and-forward buffer on disk.

On-disk format (format 1), one file ``outbox.db`` (+ ``-wal``/``-shm`` while open)::

    meta(key PRIMARY KEY, value)                      -- format, created
    contexts(id PRIMARY KEY, header UNIQUE)           -- model lineage + channels JSON
    segments(id PRIMARY KEY AUTOINCREMENT, device_id, boot_id, context_id, kind,
             seq_first, seq_last, n, anomalies, stored_at, cost, body BLOB)
    streams(device_id PRIMARY KEY, boot_id, last_seq) -- dedup state per device
    checkpoint(key PRIMARY KEY, value)                -- source position
    drops(reason PRIMARY KEY, readings)               -- evictions, persisted

Invariants: ids only grow (AUTOINCREMENT never reuses an id); SUM(cost) <= max_bytes after
every append, beyond that only by segments held in flight; a segment row is deleted only by ack or
eviction.

Crash behaviour. Every append is one transaction (segments + stream state + checkpoint +
evictions). ``synchronous=full`` (default): the WAL is fsynced at every commit, so a
committed append survives SIGKILL *and* power loss. ``synchronous=normal``: commits survive
SIGKILL (the WAL is in the OS page cache) but the last transactions before a power cut may
be rolled back — faster, for devices with a UPS or where the source can replay. A crash
can lose nothing that `append` returned for; it can re-send segments that were delivered
but not yet acked (at-least-once).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from edge_agent.errors import OutboxError
from edge_agent.outbox.base import ROW_OVERHEAD, Outbox, OutboxStats, Segment, StoredSegment

FORMAT = "1"


class _Totals(NamedTuple):
    """Segment, reading, anomaly and byte totals of a set of rows."""

    segments: int
    readings: int
    anomalies: int
    bytes: int

    @classmethod
    def of(cls, rows: Sequence[tuple[int, int, int]]) -> _Totals:
        """Totals of (n, anomalies, cost) rows."""
        return cls(len(rows), sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows))

    def plus(self, other: _Totals) -> _Totals:
        return _Totals(*(a + b for a, b in zip(self, other, strict=True)))

    def minus(self, other: _Totals) -> _Totals:
        return _Totals(*(a - b for a, b in zip(self, other, strict=True)))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contexts(id INTEGER PRIMARY KEY, header TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS segments(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL, boot_id TEXT NOT NULL, context_id INTEGER NOT NULL,
    kind INTEGER NOT NULL, seq_first INTEGER NOT NULL, seq_last INTEGER NOT NULL,
    n INTEGER NOT NULL, anomalies INTEGER NOT NULL, stored_at REAL NOT NULL,
    cost INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS segments_kind ON segments(kind, id);
CREATE TABLE IF NOT EXISTS streams(device_id TEXT PRIMARY KEY, boot_id TEXT NOT NULL, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drops(reason TEXT PRIMARY KEY, readings INTEGER NOT NULL);
"""


class SqliteOutbox(Outbox):
    """The outbox in one SQLite file. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path | str, max_bytes: int, *, synchronous: str = "full") -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._sync = "FULL" if synchronous == "full" else "NORMAL"
            self._db.execute(f"PRAGMA synchronous={self._sync}")
            self._db.execute("PRAGMA wal_autocheckpoint=1000")
            # Deleted (delivered) rows are not overwritten with zeros: that halves the cost of an
            # ack and the flash writes it causes. Freed pages are reused by later appends.
            self._db.execute("PRAGMA secure_delete=OFF")
            self._db.executescript(_SCHEMA)
            fmt = self._db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            if fmt is None:
                self._db.execute("INSERT INTO meta VALUES('format', ?), ('created', ?)", (FORMAT, str(time.time())))
            elif fmt[0] != FORMAT:
                raise OutboxError(f"{self.path}: outbox format {fmt[0]} is not supported (this build: {FORMAT})")
            # Totals are kept in memory from here on, so stats() costs O(1) however large the backlog.
            self._segments, self._readings, self._anomalies, self._bytes = (int(v) for v in self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(n),0), COALESCE(SUM(anomalies),0), COALESCE(SUM(cost),0)"
                " FROM segments").fetchone())
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path}: cannot open outbox: {exc}") from None
        self._contexts: dict[str, int] = dict(self._db.execute("SELECT header, id FROM contexts").fetchall())
        self._evicted_upto = {0: 0, 1: 0}
        self._held: set[int] = set()

    def context_id(self, header: str) -> int:
        with self._lock:
            cid = self._contexts.get(header)
            if cid is None:
                cur = self._db.execute("INSERT OR IGNORE INTO contexts(header) VALUES(?)", (header,))
                cid = int(cur.lastrowid or 0) if cur.rowcount else int(
                    self._db.execute("SELECT id FROM contexts WHERE header=?", (header,)).fetchone()[0])
                self._contexts[header] = cid
            return cid

    def context(self, context_id: int) -> str:
        for h, i in self._contexts.items():
            if i == context_id:
                return h
        with self._lock:
            row = self._db.execute("SELECT header FROM contexts WHERE id=?", (context_id,)).fetchone()
        if row is None:
            raise OutboxError(f"unknown context {context_id}")
        self._contexts[row[0]] = context_id
        return str(row[0])

    def append(self, segments: Sequence[Segment], *, streams: Mapping[str, tuple[str, int]] | None = None,
               checkpoint: Mapping[str, str] | None = None) -> dict[str, int]:
        rows = [(s.device_id, s.boot_id, s.context_id, s.kind, s.seq_first, s.seq_last, s.n, s.anomalies,
                 s.stored_at, len(s.body) + ROW_OVERHEAD, s.body) for s in segments]
        added = _Totals.of([(s.n, s.anomalies, r[9]) for s, r in zip(segments, rows, strict=True)])
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(
                    "INSERT INTO segments(device_id, boot_id, context_id, kind, seq_first, seq_last, n, anomalies,"
                    " stored_at, cost, body) VALUES(?,?,?,?,?,?,?,?,?,?,?)", rows)
                if streams:
                    self._db.executemany("INSERT OR REPLACE INTO streams VALUES(?,?,?)",
                                         [(d, b, s) for d, (b, s) in streams.items()])
                if checkpoint:
                    self._db.executemany("INSERT OR REPLACE INTO checkpoint VALUES(?,?)", list(checkpoint.items()))
                total = added.plus(self._totals())
                evicted: dict[str, int] = {}
                marks: dict[int, int] = {}  # highest evicted id per kind, published once committed
                if total.bytes > self.max_bytes:
                    total = self._evict(total, evicted, marks)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"{self.path}: append failed: {exc}") from None
            self._segments, self._readings, self._anomalies, self._bytes = total
            for kind, upto in marks.items():
                self._evicted_upto[kind] = max(self._evicted_upto[kind], upto)
            return evicted

    def _totals(self) -> _Totals:
        return _Totals(self._segments, self._readings, self._anomalies, self._bytes)

    def _evict(self, total: _Totals, evicted: dict[str, int], marks: dict[int, int]) -> _Totals:
        """Delete the oldest normal segments, then the oldest anomaly segments, until under the bound."""
        for kind, reason in ((0, "outbox_full_normal"), (1, "outbox_full_anomaly")):
            after = 0
            while total.bytes > self.max_bytes:
                batch = self._db.execute(
                    "SELECT id, n, anomalies, cost FROM segments WHERE kind=? AND id>? ORDER BY id LIMIT 512",
                    (kind, after)).fetchall()
                if not batch:
                    break
                lo, after = after, batch[-1][0]
                take: list[tuple[int, int, int, int]] = []
                freed = 0
                for row in batch:
                    if row[0] in self._held:  # in flight: never both delivered and evicted
                        continue
                    take.append(row)
                    freed += row[3]
                    if total.bytes - freed <= self.max_bytes:
                        break
                if not take:
                    continue
                upto = take[-1][0]
                if len(take) == len(batch) or take[-1] is batch[len(take) - 1]:  # a prefix: one range delete
                    self._db.execute("DELETE FROM segments WHERE kind=? AND id>? AND id<=?", (kind, lo, upto))
                else:
                    ids = [r[0] for r in take]
                    self._db.execute(f"DELETE FROM segments WHERE id IN ({','.join('?' * len(ids))})", ids)
                marks[kind] = max(marks.get(kind, 0), upto)
                gone = _Totals.of([r[1:] for r in take])
                total = total.minus(gone)
                evicted[reason] = evicted.get(reason, 0) + gone.readings
        self._count_drops(evicted)
        return total

    def _count_drops(self, evicted: Mapping[str, int]) -> None:
        for reason, n in evicted.items():
            self._db.execute("INSERT INTO drops VALUES(?, ?) ON CONFLICT(reason) DO UPDATE SET readings=readings+?",
                             (reason, n, n))

    def hold(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._held.update(ids)

    def release(self, ids: Sequence[int]) -> dict[str, int]:
        evicted: dict[str, int] = {}
        if not ids:
            return evicted
        with self._lock:
            self._held.difference_update(ids)
            rows: list[tuple[int, int, int, int, int]] = []
            for i in range(0, len(ids), 500):
                chunk = list(ids[i : i + 500])
                rows += self._db.execute(f"SELECT id, kind, n, anomalies, cost FROM segments WHERE id IN "
                                         f"({','.join('?' * len(chunk))})", chunk).fetchall()
            doomed = [r for r in rows if r[0] <= self._evicted_upto[r[1]]]
            if not doomed:
                return evicted
            for r in doomed:
                reason = ("outbox_full_normal", "outbox_full_anomaly")[r[1]]
                evicted[reason] = evicted.get(reason, 0) + r[2]
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(f"DELETE FROM segments WHERE id IN ({','.join('?' * len(doomed))})",
                                 [r[0] for r in doomed])
                self._count_drops(evicted)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"{self.path}: release failed: {exc}") from None
            gone = _Totals.of([r[2:] for r in doomed])
            self._segments, self._readings, self._anomalies, self._bytes = self._totals().minus(gone)
            return evicted

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def pending(self, kind: int, after_id: int, limit: int) -> list[StoredSegment]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device_id, boot_id, context_id, seq_first, seq_last, n, anomalies, stored_at, body"
                " FROM segments WHERE kind=? AND id>? ORDER BY id LIMIT ?", (kind, after_id, limit)).fetchall()
        return [StoredSegment(r[0], Segment(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], bytes(r[9])))
                for r in rows]

    def evicted_upto(self, kind: int) -> int:
        return self._evicted_upto[kind]

    def ack(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        with self._lock:
            self._held.difference_update(ids)
            try:
                # A lost delete only means a resend (at-least-once), so acks skip the fsync.
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("BEGIN IMMEDIATE")
                deleted: list[tuple[int, int, int]] = []
                for i in range(0, len(ids), 500):
                    chunk = list(ids[i : i + 500])
                    placeholders = ",".join("?" * len(chunk))
                    sql = f"DELETE FROM segments WHERE id IN ({placeholders}) RETURNING n, anomalies, cost"
                    deleted += self._db.execute(sql, chunk).fetchall()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise OutboxError(f"{self.path}: ack failed: {exc}") from None
            finally:
                self._db.execute(f"PRAGMA synchronous={self._sync}")
            gone = _Totals.of(deleted)
            self._segments, self._readings, self._anomalies, self._bytes = self._totals().minus(gone)
            return gone.readings

    def stats(self) -> OutboxStats:
        """O(1) in the backlog: totals are kept in memory; the oldest row is found through its id."""
        with self._lock:
            row = self._db.execute("SELECT stored_at FROM segments ORDER BY id LIMIT 1").fetchone()
            return OutboxStats(segments=self._segments, readings=self._readings, anomalies=self._anomalies,
                               bytes=self._bytes, oldest_ts=row[0] if row else None)

    def streams(self) -> dict[str, tuple[str, int]]:
        with self._lock:
            return {d: (b, s) for d, b, s in self._db.execute("SELECT device_id, boot_id, last_seq FROM streams")}

    def checkpoint(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM checkpoint").fetchall())

    def drops(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT reason, readings FROM drops").fetchall())

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
