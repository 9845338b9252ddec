"""The outbox: a durable, bounded store of scored readings between scoring and the uplink.

Contract (every implementation; tests/edge_agent/test_outbox_contract.py runs one suite over all):

* **Unit.** A *segment* is a run of scored readings of one device stream (device_id, boot_id),
  in seq order, already rendered as telemetry JSON fragments, holding either only normal
  readings (kind 0) or only flagged readings (kind 1), at most one uplink message long.
* **Durability.** `append` returns only after its segments, the per-device stream state
  (boot_id, last seq), the source checkpoint and the agent state that follows from those
  readings (open anomaly events; a key set to None is deleted) are committed in ONE
  transaction. The agent acknowledges its source only after `append` returns.
* **Leaving.** A segment leaves only through `ack` (after the uplink confirmed delivery)
  or eviction. Nothing else deletes.
* **Bound.** The sum of `cost(segment)` (payload bytes + a fixed per-row overhead) never
  exceeds `max_bytes` after `append` returns. When over, the oldest kind-0 segments are
  evicted first; kind-1 (anomaly) segments only when no normal ones are left. Every
  evicted reading is counted by reason (`outbox_full_normal`, `outbox_full_anomaly`),
  and the counts persist with the data. Segments *held* in flight (`hold`, sent and awaiting
  the uplink's confirmation) are passed over until `ack` or `release`, so a reading is never
  both delivered and counted as evicted; the bound may be exceeded by held segments only
  (at most `uplink.max_inflight` messages). A released segment that eviction passed over is
  evicted at once.
* **Order.** `pending(kind, after_id)` returns segments of that kind in append order.

SQLite implementation (`SqliteOutbox`): on-disk format and crash behaviour are in its
module docstring and docs/outbox.md. `MemoryOutbox` is the in-memory reference model:
same contract, no durability; tests check the SQLite outbox against it.
"""

from edge_agent.outbox.base import ROW_OVERHEAD, Outbox, OutboxStats, Segment, StoredSegment, cost
from edge_agent.outbox.memory import MemoryOutbox
from edge_agent.outbox.sqlite import SqliteOutbox

__all__ = [
    "ROW_OVERHEAD",
    "MemoryOutbox",
    "Outbox",
    "OutboxStats",
    "Segment",
    "SqliteOutbox",
    "StoredSegment",
    "cost",
]
