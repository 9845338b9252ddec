"""The ingest stage: a micro-batch of source batches -> validated, scored, stored, acknowledged.

`IngestStage.ingest(batches)` validates every reading (the intake), scores what passed with the model
in the slot (swapping models only here, between batches), packs segments, appends them to the outbox
with the streams' positions and the sources' checkpoints in one transaction, and only then acknowledges
the sources. Guarantees:
- A source batch is acknowledged only after its readings are durable in the outbox (or quarantined).
- Every reading read ends as scored-and-stored or quarantined with a reason; `readings_in` = both.
- When the outbox write fails (disk full, I/O error), `ingest_with_retry` restores the intake's stream
  state, keeps the batch and retries with backoff: nothing is acknowledged, nothing is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from contracts.block import ReadingBlock
from edge_agent.errors import OutboxError
from edge_agent.flow import Backoff
from edge_agent.intake import Intake, Quarantine, Rejected, StreamState
from edge_agent.logs import event
from edge_agent.metrics import AgentMetrics
from edge_agent.model_slot import ModelSlot
from edge_agent.outbox import Outbox, Segment
from edge_agent.packing import ScoredBlock, context_header, event_header, event_segment, segments_for_many
from edge_agent.sources.base import Batch
from models.bundle import Bundle
from models.events import EventConfig, EventTracker

_EVENTS = ("\0anomaly_event",)  # the event context's key among the channel-set contexts (no channel is named so)


class IngestStage:
    def __init__(self, slot: ModelSlot, intake: Intake, outbox: Outbox, quarantine: Quarantine,
                 metrics: AgentMetrics, log: logging.Logger, *, max_message_bytes: int,
                 clock: Callable[[], float] = time.time, events: EventConfig | None = None,
                 on_model: Callable[[Bundle], None] = lambda _b: None,
                 on_dropped: Callable[[dict[str, int]], None] = lambda _d: None,
                 on_quarantined: Callable[[Counter[str]], None] = lambda _c: None,
                 on_error: Callable[[str], None] = lambda _e: None) -> None:
        self.slot, self.intake, self.outbox, self.quarantine = slot, intake, outbox, quarantine
        self.metrics, self.log, self.clock = metrics, log, clock
        self.max_message_bytes = max_message_bytes
        self._on_model, self._on_dropped = on_model, on_dropped
        self._on_quarantined, self._on_error = on_quarantined, on_error
        self._contexts: dict[tuple[str, ...], int] = {}
        self.events = EventTracker(events or EventConfig())
        self.component = metrics.component("transform", "score", "onnx")

    def ingest_with_retry(self, batches: list[Batch], stop: threading.Event) -> bool:
        """`ingest`, retried with backoff while the outbox fails; False when `stop` is set first."""
        backoff: Backoff | None = None  # created on the first failure only (seeding a Random is not free)
        while True:
            snapshot = {d: StreamState(s.boot_id, s.last_seq, s.channels) for d, s in self.intake.streams.items()}
            try:
                self.ingest(batches)
                return True
            except OutboxError as exc:  # disk full, I/O error: keep the batch, keep trying, never ack
                self.intake.streams = snapshot
                self.component.error("outbox_write")
                self._on_error(str(exc))
                event(self.log, logging.ERROR, "outbox write failed; retrying", error=str(exc))
                backoff = backoff or Backoff(0.2, 5.0)
                if stop.wait(backoff.next_delay()):
                    return False

    def ingest(self, batches: list[Batch]) -> None:
        """Validate, score and store one micro-batch; acknowledge its sources once durable."""
        self._swap()
        t0 = time.perf_counter()
        accepted: list[tuple[ReadingBlock, str]] = []
        rejected: list[Rejected] = []
        checkpoint: dict[str, str] = {}
        total = 0
        for b in batches:
            total += len(b)
            if b.blocks:
                acc, rej = self.intake.check_blocks(b.blocks)
                accepted += acc
                rejected += rej
            if b.raw:
                acc, rej = self.intake.parse(b.raw)
                accepted += acc
                rejected += rej
            checkpoint.update(b.checkpoint)
        segments = []
        flagged = scored = 0
        if accepted:
            ts = time.perf_counter()
            results = self.slot.stage.score_many([blk for blk, _ in accepted])
            self.metrics.batch_seconds.observe(time.perf_counter() - ts)
            items = [ScoredBlock(blk, res.scores, res.flags, boot, self._context(blk.channels))
                     for (blk, boot), res in zip(accepted, results, strict=True)]
            segments = segments_for_many(items, max_message_bytes=self.max_message_bytes, stored_at=self.clock())
            flagged = sum(int(r.flags.sum()) for r in results)
            scored = sum(len(blk) for blk, _ in accepted)
            segments += self._track([(blk, boot, res.scores)
                                     for (blk, boot), res in zip(accepted, results, strict=True)])
        touched = {blk.device_id for blk, _ in accepted}
        streams = {d: (self.intake.streams[d].boot_id, self.intake.streams[d].last_seq) for d in touched}
        evicted = self.outbox.append(segments, streams=streams, checkpoint=checkpoint)
        for b in batches:
            if b.ack is not None:
                b.ack()
        self.quarantine.add(rejected)
        m = self.metrics
        m.readings_in.inc(total)
        m.scored.inc(scored)
        m.flagged.inc(flagged)
        quarantined = Counter(r.reason for r in rejected)
        for reason, n in quarantined.items():
            m.quarantined.labels(reason=reason).inc(n)
        self.component.received(total)
        self.component.sent(scored)
        self.component.discarded(quarantined)
        if evicted:
            self._on_dropped(evicted)
        if quarantined:
            self._on_quarantined(quarantined)
        m.observe_batch(time.perf_counter() - t0)

    def _track(self, scored: list[tuple[ReadingBlock, str, np.ndarray]]) -> list[Segment]:
        """Anomaly events (one alert per event, `models.events`): counted, logged, and returned as outbox
        segments, stored in the same transaction as the readings that caused them (`contracts.events`)."""
        thr = float(self.slot.threshold)
        out: list[Segment] = []
        now = self.clock()
        for blk, boot, scores in scored:
            for ev in self.events.update(blk.device_id, boot, blk.seq, blk.ts, scores, thr):
                out.append(event_segment(ev, self._event_context(), now))
                self.metrics.anomaly_events.labels(kind=ev.kind).inc()
                if ev.kind != "update":
                    event(self.log, logging.INFO, f"anomaly event {ev.kind}", device=ev.device_id,
                          event_id=ev.event_id, alarms=ev.alarms, peak_score=round(ev.peak_score, 4))
        self.metrics.anomaly_events_open.set(self.events.open_events)
        return out

    def _swap(self) -> None:
        bundle = self.slot.swap()
        if bundle is None:
            return
        self._contexts.clear()  # every message names the model and threshold that scored it
        self.intake.required = bundle.spec.channels
        event(self.log, logging.INFO, "model in use", model=bundle.label, threshold=self.slot.threshold)
        self._on_model(bundle)

    def _event_context(self) -> int:
        cid = self._contexts.get(_EVENTS)
        if cid is None:
            cid = self._contexts[_EVENTS] = self.outbox.context_id(event_header(self.slot.lineage()))
        return cid

    def _context(self, channels: tuple[str, ...]) -> int:
        cid = self._contexts.get(channels)
        if cid is None:
            cid = self._contexts[channels] = self.outbox.context_id(context_header(self.slot.lineage(), channels))
        return cid
