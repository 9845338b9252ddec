"""In-memory outbox: the reference model of the contract (no durability)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

from edge_agent.outbox.base import EVICTION_REASONS, Outbox, OutboxStats, Segment, StoredSegment, cost


class MemoryOutbox(Outbox):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._rows: OrderedDict[int, Segment] = OrderedDict()
        self._next = 1
        self._bytes = 0
        self._contexts: dict[str, int] = {}
        self._streams: dict[str, tuple[str, int]] = {}
        self._checkpoint: dict[str, str] = {}
        self._state: dict[str, str] = {}
        self._drops: dict[str, int] = {}
        self._lock = threading.Lock()
        self._evicted_upto = {0: 0, 1: 0}
        self._held: set[int] = set()

    def context_id(self, header: str) -> int:
        with self._lock:
            return self._contexts.setdefault(header, len(self._contexts) + 1)

    def context(self, context_id: int) -> str:
        return next(h for h, i in self._contexts.items() if i == context_id)

    def append(self, segments: Sequence[Segment], *, streams: Mapping[str, tuple[str, int]] | None = None,
               checkpoint: Mapping[str, str] | None = None,
               state: Mapping[str, str | None] | None = None) -> dict[str, int]:
        with self._lock:
            for s in segments:
                self._rows[self._next] = s
                self._next += 1
                self._bytes += cost(s)
            self._streams.update(streams or {})
            self._checkpoint.update(checkpoint or {})
            for key, value in (state or {}).items():
                if value is None:
                    self._state.pop(key, None)
                else:
                    self._state[key] = value
            return self._evict()

    def _evict(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind, reason in enumerate(EVICTION_REASONS):
            if self._bytes <= self.max_bytes:
                break
            for rid in [i for i, s in self._rows.items() if s.kind == kind and i not in self._held]:
                if self._bytes <= self.max_bytes:
                    break
                s = self._rows.pop(rid)
                self._evicted_upto[kind] = max(self._evicted_upto[kind], rid)
                self._bytes -= cost(s)
                out[reason] = out.get(reason, 0) + s.n
        for k, v in out.items():
            self._drops[k] = self._drops.get(k, 0) + v
        return out

    def pending(self, kind: int, after_id: int, limit: int) -> list[StoredSegment]:
        with self._lock:
            out = []
            for i, s in self._rows.items():
                if i > after_id and s.kind == kind:
                    out.append(StoredSegment(i, s))
                    if len(out) >= limit:
                        break
            return out

    def evicted_upto(self, kind: int) -> int:
        return self._evicted_upto[kind]

    def hold(self, ids: Sequence[int]) -> None:
        with self._lock:
            self._held.update(ids)

    def release(self, ids: Sequence[int]) -> dict[str, int]:
        with self._lock:
            self._held.difference_update(ids)
            out: dict[str, int] = {}
            for i in ids:
                s = self._rows.get(i)
                if s is not None and i <= self._evicted_upto[s.kind]:
                    del self._rows[i]
                    self._bytes -= cost(s)
                    reason = EVICTION_REASONS[s.kind]
                    out[reason] = out.get(reason, 0) + s.n
            for k, v in out.items():
                self._drops[k] = self._drops.get(k, 0) + v
            return out

    def ack(self, ids: Sequence[int]) -> int:
        with self._lock:
            self._held.difference_update(ids)
            n = 0
            for i in ids:
                s = self._rows.pop(i, None)
                if s is not None:
                    self._bytes -= cost(s)
                    n += s.n
            return n

    def stats(self) -> OutboxStats:
        with self._lock:
            rows = list(self._rows.values())
            return OutboxStats(segments=len(rows), readings=sum(s.n for s in rows),
                               anomalies=sum(s.anomalies for s in rows), bytes=self._bytes,
                               oldest_ts=rows[0].stored_at if rows else None)

    def streams(self) -> dict[str, tuple[str, int]]:
        return dict(self._streams)

    def checkpoint(self) -> dict[str, str]:
        return dict(self._checkpoint)

    def state(self) -> dict[str, str]:
        return dict(self._state)

    def drops(self) -> dict[str, int]:
        return dict(self._drops)

    def close(self) -> None:
        pass
