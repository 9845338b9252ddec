"""SQLite outbox (WAL): the agent's store-and-forward buffer on disk.

On-disk format (format 2), one file ``outbox.db`` (+ ``-wal``/``-shm`` while open)::

    meta(key PRIMARY KEY, value)                      -- format, created
    contexts(id PRIMARY KEY, header UNIQUE)           -- model lineage + channels JSON
    segments(id PRIMARY KEY AUTOINCREMENT, device_id, boot_id, context_id, kind,
             seq_first, seq_last, n, anomalies, stored_at, cost, body BLOB,
             crc)                                     -- CRC-32 of the row (format 2; NULL in rows of format 1)
    streams(device_id PRIMARY KEY, boot_id, last_seq) -- dedup state per device
    checkpoint(key PRIMARY KEY, value)                -- source position
    state(key PRIMARY KEY, value)                     -- agent state (open anomaly events), added in place
    drops(reason PRIMARY KEY, readings)               -- evictions, persisted

Invariants: ids only grow (AUTOINCREMENT never reuses an id); SUM(cost) <= max_bytes after
every append, beyond that only by segments held in flight; a segment row is deleted only by ack or
eviction.

Crash behaviour. Every append is one transaction (segments + stream state + checkpoint + agent
state + evictions). ``synchronous=full`` (default): the WAL is fsynced at every commit, so a
committed append survives SIGKILL *and* power loss. ``synchronous=normal``: commits survive
SIGKILL (the WAL is in the OS page cache) but the last transactions before a power cut may
be rolled back — faster, for devices with a UPS or where the source can replay. A crash
can lose nothing that `append` returned for; it can re-send segments that were delivered
but not yet acked (at-least-once).

Corruption. Every row carries a CRC-32 of its fields and body, checked when it is read for sending:
a row whose bits changed on the medium (SQLite's own checks do not look inside a BLOB) is deleted,
counted as dropped (reason ``corrupt_row``, with the row's reading count) and never sent. A file that
SQLite cannot open or read as a database is moved aside (``outbox.db.corrupt-<time>``, with its WAL)
and a fresh outbox started, into which every row SQLite can still read from the old file and whose
CRC holds is salvaged (with the stream state, checkpoint and drop counts where readable); the agent
keeps running instead of failing every start. A file of format 1 is upgraded in place (its rows have
no CRC and are sent unchecked).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from edge_agent.errors import OutboxError
from edge_agent.outbox.base import EVICTION_REASONS, ROW_OVERHEAD, Outbox, OutboxStats, Segment, StoredSegment

FORMAT = "2"
CORRUPT = "corrupt_row"
log = logging.getLogger("edgeflag.outbox")


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "full" in str(exc).lower()


def _is_corruption(exc: sqlite3.Error) -> bool:
    msg = str(exc).lower()
    return "malformed" in msg or "not a database" in msg or "corrupt" in msg


def _intact(r: tuple) -> bool:  # type: ignore[type-arg]
    """A salvaged row (id, fields…, body, crc) is readable and, when it has a CRC, matches it."""
    try:
        crc = row_crc(r[1], r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6]), int(r[7]), int(r[8]), bytes(r[11]))
    except (TypeError, ValueError):
        return False
    return r[12] is None or r[12] == crc


def row_crc(device_id: str, boot_id: str, context_id: int, kind: int, seq_first: int, seq_last: int, n: int,
            anomalies: int, body: bytes) -> int:
    """CRC-32 over a segment row's identity, counts and body."""
    head = f"{device_id}\x00{boot_id}\x00{context_id}\x00{kind}\x00{seq_first}\x00{seq_last}\x00{n}\x00{anomalies}"
    return zlib.crc32(body, zlib.crc32(head.encode()))


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
    cost INTEGER NOT NULL, body BLOB NOT NULL, crc INTEGER);
CREATE INDEX IF NOT EXISTS segments_kind ON segments(kind, id);
CREATE TABLE IF NOT EXISTS streams(device_id TEXT PRIMARY KEY, boot_id TEXT NOT NULL, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoint(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drops(reason TEXT PRIMARY KEY, readings INTEGER NOT NULL);
"""


class SqliteOutbox(Outbox):
    """The outbox in one SQLite file. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path | str, max_bytes: int, *, synchronous: str = "full",
                 reserve_bytes: int = 8 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._new_drops: dict[str, int] = {}
        self.reserve_bytes = reserve_bytes
        self._reserve = Path(f"{self.path}.reserve")
        self.disk_full = False  # the disk filled: the outbox keeps what it holds and evicts by policy
        self._full_cap: int | None = None
        self._space_checked = 0.0
        self.salvaged: dict[str, int] | None = None  # set when a corrupt file was moved aside at open
        try:
            try:
                self._open(synchronous)
            except sqlite3.OperationalError as exc:
                if not _is_full(exc) or not self._reserve.exists():
                    raise
                self._enter_full(exc)  # the disk filled while we were down: give back the reserve, retry
                self._open(synchronous)
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error, AttributeError):
                self._db.close()
            if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
                raise OutboxError(f"{self.path}: cannot open outbox: {exc}") from None
            aside = self._move_aside(exc)
            try:
                self._open(synchronous)
            except sqlite3.DatabaseError as exc2:
                raise OutboxError(f"{self.path}: cannot open outbox: {exc2}") from None
            self.salvaged = self._salvage(aside)
            log.error("outbox %s was corrupt (%s); moved aside to %s, salvaged %s", self.path, exc, aside,
                      self.salvaged)
        self._contexts: dict[str, int] = dict(self._db.execute("SELECT header, id FROM contexts").fetchall())
        self._evicted_upto = {0: 0, 1: 0}
        self._held: set[int] = set()
        if not self.disk_full:
            self._make_reserve()

    def _open(self, synchronous: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._sync = "FULL" if synchronous == "full" else "NORMAL"
        self._db.execute(f"PRAGMA synchronous={self._sync}")
        # The WAL is checkpointed (and cut back) before it outgrows half the disk reserve, so that when the
        # disk fills, the reserve given back is always enough to fold the WAL into the database and free it.
        wal_pages = max(32, min(1000, self.reserve_bytes // 8192)) if self.reserve_bytes > 0 else 1000
        self._db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        self._db.execute(f"PRAGMA journal_size_limit={wal_pages * 4096}")
        # Deleted (delivered) rows are not overwritten with zeros: that halves the cost of an
        # ack and the flash writes it causes. Freed pages are reused by later appends.
        self._db.execute("PRAGMA secure_delete=OFF")
        self._db.executescript(_SCHEMA)
        fmt = self._db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        if fmt is None:
            self._db.execute("INSERT INTO meta VALUES('format', ?), ('created', ?)", (FORMAT, str(time.time())))
        elif fmt[0] == "1":  # upgrade: rows gain a CRC column (NULL: unchecked)
            self._db.execute("ALTER TABLE segments ADD COLUMN crc INTEGER")
            self._db.execute("UPDATE meta SET value=? WHERE key='format'", (FORMAT,))
        elif fmt[0] != FORMAT:
            raise OutboxError(f"{self.path}: outbox format {fmt[0]} is not supported (this build: {FORMAT})")
        # Totals are kept in memory from here on, so stats() costs O(1) however large the backlog.
        self._load_totals()

    def _load_totals(self) -> None:
        self._segments, self._readings, self._anomalies, self._bytes = (int(v) for v in self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(n),0), COALESCE(SUM(anomalies),0), COALESCE(SUM(cost),0)"
            " FROM segments").fetchone())

    def _move_aside(self, exc: Exception) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        return aside

    def _salvage(self, aside: Path) -> dict[str, int]:
        """Copy what SQLite can still read from a corrupt file into this (fresh) outbox; returns counts."""
        out = {"segments": 0, "readings": 0, "unreadable_or_bad_crc": 0}
        try:
            old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
        except sqlite3.Error:
            return out
        try:
            for table, sql in (("contexts", "INSERT OR IGNORE INTO contexts VALUES(?,?)"),
                               ("streams", "INSERT OR REPLACE INTO streams VALUES(?,?,?)"),
                               ("checkpoint", "INSERT OR REPLACE INTO checkpoint VALUES(?,?)"),
                               ("state", "INSERT OR REPLACE INTO state VALUES(?,?)"),
                               ("drops", "INSERT OR REPLACE INTO drops VALUES(?,?)")):
                with contextlib.suppress(sqlite3.Error):
                    self._db.executemany(sql, old.execute(f"SELECT * FROM {table}").fetchall())
            try:
                top = int(old.execute("SELECT MAX(id) FROM segments").fetchone()[0] or 0)
            except sqlite3.Error:
                top = 0
            cols = "id, device_id, boot_id, context_id, kind, seq_first, seq_last, n, anomalies, stored_at, cost, body"
            lo = 0
            while lo < top:  # in pages, stepping over the ones SQLite cannot read
                try:
                    rows = old.execute(f"SELECT {cols}, crc FROM segments WHERE id>? AND id<=? ORDER BY id",
                                       (lo, lo + 256)).fetchall()
                except sqlite3.Error:  # a damaged page in this range: row by row, to keep what can be read
                    rows = []
                    for i in range(lo + 1, lo + 257):
                        try:
                            rows += old.execute(f"SELECT {cols}, crc FROM segments WHERE id=?", (i,)).fetchall()
                        except sqlite3.Error:
                            out["unreadable_or_bad_crc"] += 1
                good = [r for r in rows if _intact(r)]
                out["unreadable_or_bad_crc"] += len(rows) - len(good)
                self._db.executemany(f"INSERT OR IGNORE INTO segments({cols}, crc) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                     good)
                out["segments"] += len(good)
                out["readings"] += sum(r[7] for r in good)
                lo += 256
        finally:
            old.close()
        self._load_totals()
        return out

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
               checkpoint: Mapping[str, str] | None = None,
               state: Mapping[str, str | None] | None = None) -> dict[str, int]:
        rows = [(s.device_id, s.boot_id, s.context_id, s.kind, s.seq_first, s.seq_last, s.n, s.anomalies,
                 s.stored_at, len(s.body) + ROW_OVERHEAD, s.body,
                 row_crc(s.device_id, s.boot_id, s.context_id, s.kind, s.seq_first, s.seq_last, s.n, s.anomalies,
                         s.body)) for s in segments]
        added = _Totals.of([(s.n, s.anomalies, r[9]) for s, r in zip(segments, rows, strict=True)])
        with self._lock:
            self._check_space()
            try:
                return self._append(rows, added, streams, checkpoint, state)
            except sqlite3.Error as exc:
                if not _is_full(exc) or (self.disk_full and not self._reserve.exists()):
                    raise OutboxError(f"{self.path}: append failed: {exc}") from None
                self._enter_full(exc)
            try:  # again, now making room first inside what the file already holds
                return self._append(rows, added, streams, checkpoint, state)
            except sqlite3.Error as exc:
                raise OutboxError(f"{self.path}: append failed: {exc}") from None

    def _append(self, rows: list[tuple], added: _Totals, streams: Mapping[str, tuple[str, int]] | None,  # type: ignore[type-arg]
                checkpoint: Mapping[str, str] | None, state: Mapping[str, str | None] | None) -> dict[str, int]:
        evicted: dict[str, int] = {}
        marks: dict[int, int] = {}  # highest evicted id per kind, published once committed
        bound = self._bound()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            total = self._totals()
            if self.disk_full and total.bytes + added.bytes > bound:  # free pages before asking for new ones
                total = self._evict(total, evicted, marks, bound=max(0, bound - added.bytes))
            self._db.executemany(
                "INSERT INTO segments(device_id, boot_id, context_id, kind, seq_first, seq_last, n, anomalies,"
                " stored_at, cost, body, crc) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            if streams:
                self._db.executemany("INSERT OR REPLACE INTO streams VALUES(?,?,?)",
                                     [(d, b, s) for d, (b, s) in streams.items()])
            if checkpoint:
                self._db.executemany("INSERT OR REPLACE INTO checkpoint VALUES(?,?)", list(checkpoint.items()))
            if state:
                self._db.executemany("DELETE FROM state WHERE key=?", [(k,) for k, v in state.items() if v is None])
                self._db.executemany("INSERT OR REPLACE INTO state VALUES(?,?)",
                                     [(k, v) for k, v in state.items() if v is not None])
            total = added.plus(total)
            if total.bytes > bound:
                total = self._evict(total, evicted, marks, bound=bound)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
            raise
        self._segments, self._readings, self._anomalies, self._bytes = total
        for kind, upto in marks.items():
            self._evicted_upto[kind] = max(self._evicted_upto[kind], upto)
        if self.disk_full:
            self._shrink_wal()
        return evicted

    # -- full disk -----------------------------------------------------------------------------------
    def _bound(self) -> int:
        return self.max_bytes if self._full_cap is None else min(self.max_bytes, self._full_cap)

    def _make_reserve(self) -> None:
        """Keep `reserve_bytes` of the disk in a file of our own, given back the moment the disk fills."""
        if self.reserve_bytes <= 0 or self._reserve.exists():
            return
        try:
            with open(self._reserve, "wb") as fh:
                for at in range(0, self.reserve_bytes, 1 << 20):
                    fh.write(b"\0" * min(1 << 20, self.reserve_bytes - at))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve.unlink()

    def _enter_full(self, exc: Exception) -> None:
        with contextlib.suppress(OSError):
            self._reserve.unlink()
        if not self.disk_full:
            log.error("outbox %s: the disk is full (%s); keeping %d bytes and evicting by policy until space "
                      "returns", self.path, exc, self._bytes)
        self.disk_full = True
        self._full_cap = self._bytes
        self._space_checked = time.monotonic()
        self._shrink_wal()

    def _shrink_wal(self) -> None:
        """Fold the WAL into the database and truncate it: on a full disk the WAL is the space we need."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _check_space(self) -> None:
        """While the disk is full, every 2 s: has space come back (reserve twice over)? Then grow again."""
        if not self.disk_full or time.monotonic() - self._space_checked < 2.0:
            return
        self._space_checked = time.monotonic()
        with contextlib.suppress(OSError):
            if shutil.disk_usage(self.path.parent).free >= 2 * self.reserve_bytes + (1 << 20):
                self._make_reserve()
                self.disk_full, self._full_cap = False, None
                log.warning("outbox %s: disk space is back; the outbox may grow to %d bytes again", self.path,
                            self.max_bytes)

    def _totals(self) -> _Totals:
        return _Totals(self._segments, self._readings, self._anomalies, self._bytes)

    def _evict(self, total: _Totals, evicted: dict[str, int], marks: dict[int, int], *, bound: int) -> _Totals:
        """Delete the oldest normal segments, then the oldest anomaly segments, until under `bound`."""
        counted: dict[str, int] = {}
        for kind, reason in enumerate(EVICTION_REASONS):
            after = 0
            while total.bytes > bound:
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
                    if total.bytes - freed <= bound:
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
                counted[reason] = counted.get(reason, 0) + gone.readings
        self._count_drops(counted)
        for reason, n in counted.items():
            evicted[reason] = evicted.get(reason, 0) + n
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
                reason = EVICTION_REASONS[r[1]]
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
        """Rows whose CRC holds; a corrupt one is deleted and counted as dropped (`corrupt_row`) instead."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, device_id, boot_id, context_id, seq_first, seq_last, n, anomalies, stored_at, body, crc,"
                " cost FROM segments WHERE kind=? AND id>? ORDER BY id LIMIT ?", (kind, after_id, limit)).fetchall()
            out, bad = [], []
            for r in rows:
                body = bytes(r[9])
                if r[10] is not None and r[10] != row_crc(r[1], r[2], r[3], kind, r[4], r[5], r[6], r[7], body):
                    bad.append(r)
                    continue
                out.append(StoredSegment(r[0], Segment(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], body)))
            if bad:
                self._drop_corrupt(bad)
        return out

    def _drop_corrupt(self, bad: list[tuple]) -> None:  # type: ignore[type-arg]
        n = sum(max(0, int(r[6])) for r in bad)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM segments WHERE id=?", [(r[0],) for r in bad])
            self._count_drops({CORRUPT: n})
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise OutboxError(f"{self.path}: cannot drop corrupt rows: {exc}") from None
        gone = _Totals(len(bad), n, sum(int(r[7]) for r in bad), sum(int(r[11]) for r in bad))
        self._segments, self._readings, self._anomalies, self._bytes = self._totals().minus(gone)
        self._new_drops[CORRUPT] = self._new_drops.get(CORRUPT, 0) + n
        log.error("outbox: %d corrupt row(s) (%d readings) failed their checksum; dropped, not sent", len(bad), n)

    def take_drops(self) -> dict[str, int]:
        with self._lock:
            out, self._new_drops = self._new_drops, {}
            return out

    def evicted_upto(self, kind: int) -> int:
        return self._evicted_upto[kind]

    def ack(self, ids: Sequence[int]) -> int:
        if not ids:
            return 0
        with self._lock:
            self._held.difference_update(ids)
            done: list[tuple[int, int, int]] = []  # (n, anomalies, cost) of every committed delete
            try:
                for attempt in (1, 2):
                    try:
                        if attempt == 1:
                            self._delete(ids, done)
                        else:  # small transactions, the WAL folded back between them (each needs a few pages)
                            self._delete(ids, done, chunk=32, shrink=True)
                        break
                    except sqlite3.Error as exc:
                        self._rollback()
                        if attempt == 2 or not _is_full(exc):
                            raise OutboxError(f"{self.path}: ack failed: {exc}") from None
                        self._enter_full(exc)  # even a delete needs WAL space: give back the reserve, again
                    finally:
                        self._db.execute(f"PRAGMA synchronous={self._sync}")
            finally:  # what was committed is gone, even when a later part failed
                gone = _Totals.of(done)
                self._segments, self._readings, self._anomalies, self._bytes = self._totals().minus(gone)
            return gone.readings

    def _delete(self, ids: Sequence[int], done: list[tuple[int, int, int]], *, chunk: int | None = None,
                shrink: bool = False) -> None:
        """Delete `ids`, adding each committed row's (n, anomalies, cost) to `done`: in one transaction,
        or (`chunk`) one per `chunk` ids, folding the WAL back after each when `shrink` (on a full disk:
        rows scattered over many pages, e.g. anomaly events between readings, need more WAL pages in one
        transaction than the disk has)."""
        # A lost delete only means a resend (at-least-once), so acks skip the fsync.
        self._db.execute("PRAGMA synchronous=NORMAL")
        step = chunk or len(ids)
        for at in range(0, len(ids), step):
            self._db.execute("BEGIN IMMEDIATE")
            part: list[tuple[int, int, int]] = []
            for i in range(at, min(len(ids), at + step), 500):
                sub = list(ids[i: min(i + 500, at + step)])
                placeholders = ",".join("?" * len(sub))
                sql = f"DELETE FROM segments WHERE id IN ({placeholders}) RETURNING n, anomalies, cost"
                part += self._db.execute(sql, sub).fetchall()
            self._db.execute("COMMIT")
            done += part
            if shrink:
                self._shrink_wal()

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

    def state(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM state").fetchall())

    def drops(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT reason, readings FROM drops").fetchall())

    def close(self) -> None:
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
