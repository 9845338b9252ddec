"""Outbox data types and the interface both implementations follow (see the package docstring)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

ROW_OVERHEAD = 64  # bytes charged per segment on top of its payload


class Segment(NamedTuple):
    """Scored readings of one device stream, ready to be wrapped into a telemetry message; or, with
    ``n = 0`` in an event context (`edge_agent.packing.event_header`), one anomaly event announcement
    (`contracts.events`), `seq_first` = `seq_last` = the reading that announced it.

    `body` is the comma-joined JSON objects of the readings (the telemetry `readings` array
    without its brackets). `anomalies` > 0 means kind 1 (all readings flagged). Immutable;
    a NamedTuple because millions are made (a frozen dataclass costs 5x more to build).
    """

    device_id: str
    boot_id: str
    context_id: int
    seq_first: int
    seq_last: int
    n: int
    anomalies: int
    stored_at: float  # wall-clock time it was stored (for the oldest-unsent-age gauge)
    body: bytes

    @property
    def kind(self) -> int:
        """1 for flagged readings and for anomaly events (n = 0, an event message's entry): sent first,
        evicted last."""
        return 1 if self.anomalies or not self.n else 0


#: the reason an evicted reading is counted under, by segment kind (0 normal, 1 anomaly)
EVICTION_REASONS = ("outbox_full_normal", "outbox_full_anomaly")


class StoredSegment(NamedTuple):
    """A segment and its outbox id."""

    id: int
    segment: Segment


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What the outbox holds now; `oldest_ts` is `stored_at` of its oldest (lowest-id) segment."""

    segments: int
    readings: int
    anomalies: int
    bytes: int
    oldest_ts: float | None


def cost(segment: Segment) -> int:
    """Bytes a segment counts against the outbox bound."""
    return len(segment.body) + ROW_OVERHEAD


class Outbox(ABC):
    """Durable, bounded store of segments (contract in the package docstring)."""

    max_bytes: int

    @abstractmethod
    def context_id(self, header: str) -> int:
        """Id of a message-header context (model lineage + channels), created if new."""

    @abstractmethod
    def context(self, context_id: int) -> str:
        """The header context stored under an id."""

    @abstractmethod
    def append(self, segments: Sequence[Segment], *, streams: Mapping[str, tuple[str, int]] | None = None,
               checkpoint: Mapping[str, str] | None = None,
               state: Mapping[str, str | None] | None = None) -> dict[str, int]:
        """Store segments, stream state, checkpoint and agent state atomically; evict to the bound.

        `state`: the agent's own state that follows from the readings stored (the open anomaly events),
        by key; None deletes the key. Returns readings evicted by this call, by reason.
        """

    @abstractmethod
    def pending(self, kind: int, after_id: int, limit: int) -> list[StoredSegment]:
        """Up to `limit` segments of `kind` with id > after_id, oldest first."""

    @abstractmethod
    def evicted_upto(self, kind: int) -> int:
        """The highest id of `kind` evicted since this outbox was opened (0: none). Eviction takes the
        oldest first, so no segment of that kind with a lower id is left: a reader holding rows it
        fetched earlier drops those at or below this mark instead of sending evicted readings."""

    @abstractmethod
    def ack(self, ids: Sequence[int]) -> int:
        """Delete delivered segments (and end their hold); returns how many readings they held."""

    @abstractmethod
    def hold(self, ids: Sequence[int]) -> None:
        """Mark segments as in flight: eviction passes over them until `ack` or `release`, so a reading
        is never both delivered and counted as evicted."""

    @abstractmethod
    def release(self, ids: Sequence[int]) -> dict[str, int]:
        """End the hold of segments that will be sent again (the link dropped before confirming them).

        Released segments that eviction passed over (ids at or below `evicted_upto` of their kind) are
        evicted now, so `evicted_upto` keeps its meaning; returns readings evicted, by reason."""

    def take_drops(self) -> dict[str, int]:
        """Readings dropped outside `append`/`release` (corrupt rows found by `pending`) since the last
        call, by reason, so the agent can count them; {} for an outbox that cannot find corruption."""
        return {}

    @abstractmethod
    def stats(self) -> OutboxStats: ...

    @abstractmethod
    def streams(self) -> dict[str, tuple[str, int]]:
        """Per device: (boot_id, last accepted seq)."""

    @abstractmethod
    def checkpoint(self) -> dict[str, str]:
        """Source checkpoint committed with the last append."""

    @abstractmethod
    def state(self) -> dict[str, str]:
        """The agent state committed by the appends so far (`append`'s `state`, deleted keys left out)."""

    @abstractmethod
    def drops(self) -> dict[str, int]:
        """Readings evicted since the outbox was created, by reason."""

    @abstractmethod
    def close(self) -> None: ...
