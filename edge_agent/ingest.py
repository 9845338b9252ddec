"""The ingest stage: a micro-batch of source batches -> validated, scored, stored, acknowledged.

`IngestStage.ingest(batches)` validates every reading (the intake), scores what passed with the model
in the slot (swapping models only here, between batches), packs segments, appends them to the outbox
with the streams' positions and the sources' checkpoints in one transaction, and only then acknowledges
the sources. Guarantees:
- A source batch is acknowledged only after its readings are durable in the outbox (or quarantined).
- Every reading read ends as scored-and-stored or quarantined with a reason; `readings_in` = both.
- When the outbox write fails (disk full, I/O error), `ingest` returns the intake's stream state, the
  devices' rolling feature windows and the anomaly events to where they were before the batch, and
  `ingest_with_retry` keeps the batch and retries with backoff: nothing is acknowledged, nothing is
  skipped, and the retry scores and announces exactly what the first try would have.
- Open anomaly events are stored with the readings that moved them (outbox state ``events/<device>``)
  and taken back by `restore_events` at start: an event in progress goes on under its id after a
  restart, and is closed once, not left open or opened twice.
- A clean stop stores each device's rolling window (`save_windows`, outbox state ``window/<device>``,
  with the stream position and the channels it belongs to); `restore_windows` takes back those whose
  position is still the stream's, so after a stop and start the readings score as if the agent had never
  stopped. A window kept under another model's feature spec is rebuilt for the model's (its readings of
  the model's channels, `scoring.rebuilt_window`, as a model swap does) when it holds those channels.
  A start deletes them once read, so after a crash there are none: the devices warm up again, as on a
  first start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
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
from edge_agent.scoring import rebuilt_window
from edge_agent.sources.base import Batch
from models.bundle import Bundle
from models.events import AnomalyEvent, EventConfig, EventTracker

_EVENTS = ("\0anomaly_event",)  # the event context's key among the channel-set contexts (no channel is named so)
_EVENT_STATE = "events/"  # outbox state key prefix of a device's open anomaly event
_WINDOW_STATE = "window/"  # outbox state key prefix of a device's rolling window, stored at a clean stop


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
        self._stored = False  # the current batch is in the outbox
        self._seen: dict[str, float] = {}  # device -> clock() of its last accepted readings (idle events)
        self.events = EventTracker(events or EventConfig())
        self.component = metrics.component("transform", "score", "onnx")

    def ingest_with_retry(self, batches: list[Batch], stop: threading.Event) -> bool:
        """`ingest`, retried with backoff while the outbox fails; False when `stop` is set first."""
        backoff: Backoff | None = None  # created on the first failure only (seeding a Random is not free)
        while True:
            try:
                self.ingest(batches)
                return True
            except OutboxError as exc:  # disk full, I/O error: keep the batch, keep trying, never ack
                self.component.error("outbox_write")
                self._on_error(str(exc))
                event(self.log, logging.ERROR, "outbox write failed; retrying", error=str(exc))
                backoff = backoff or Backoff(0.2, 5.0)
                if stop.wait(backoff.next_delay()):
                    return False

    def ingest(self, batches: list[Batch]) -> None:
        """Validate, score and store one micro-batch; acknowledge its sources once durable. When it raises,
        the stream state, feature windows and events are as before the call (the batch can come again)."""
        self._swap()
        stage = self.slot.stage
        streams = {d: StreamState(s.boot_id, s.last_seq, s.channels) for d, s in self.intake.streams.items()}
        self._stored = False
        try:
            self._ingest(batches)
        except BaseException:
            if not self._stored:  # once the outbox holds the batch, its state stands
                self.intake.streams = streams
                stage.rollback()
                self.events.rollback()
            raise

    def restore_events(self, state: dict[str, str]) -> list[str]:
        """Take back the open events stored in the outbox state at start; returns the devices whose stored
        state could not be read (their event, if any, is not continued; the unreadable state is deleted)."""
        stored = {k[len(_EVENT_STATE):]: v for k, v in state.items() if k.startswith(_EVENT_STATE)}
        now = self.clock()
        self._seen.update(dict.fromkeys(stored, now))  # silent from here on: idle from the start
        unreadable = self.events.restore(stored)
        if unreadable:  # reported once: they are deleted, not read again at every start
            with contextlib.suppress(OutboxError):
                self.outbox.append([], state={_EVENT_STATE + d: None for d in unreadable})
        return unreadable

    def close_idle(self, idle_s: float) -> int:
        """Close the open events of devices that have sent nothing for `idle_s` seconds (call from the
        ingest thread, between batches): announced and stored like any close; returns how many closed.
        When the outbox write fails they stay open and the next call tries again."""
        now = self.clock()
        thr = float(self.slot.threshold)
        silent = [d for d, st in self.events.devices.items()
                  if st.open is not None and now - self._seen.get(d, now) >= idle_s]
        closed = [ev for ev in (self.events.close(d, thr) for d in silent) if ev is not None]
        if not closed:
            return 0
        try:
            self.outbox.append([event_segment(ev, self._event_context(), now) for ev in closed],
                               state={_EVENT_STATE + d: v for d, v in self.events.changed().items()})
        except OutboxError as exc:
            self.events.rollback()
            self.component.error("outbox_write")
            event(self.log, logging.ERROR, "closing idle anomaly events failed; retrying", error=str(exc))
            return 0
        self.events.commit()
        self._announce(closed, " (device silent)",
                       lambda ev: {"silent_s": round(now - self._seen.get(ev.device_id, now))})
        return len(closed)

    def save_windows(self) -> int:
        """Store every device's rolling window with its stream position (call once ingest has stopped);
        returns how many were stored."""
        stage = self.slot.stage
        state: dict[str, str | None] = {}
        for d, tail in stage.windows().items():
            st = self.intake.streams.get(d)
            if st is None:
                continue
            state[_WINDOW_STATE + d] = json.dumps({
                "v": 1, "spec": stage.bundle.spec.hash, "channels": list(stage.bundle.spec.channels),
                "boot_id": st.boot_id, "last_seq": st.last_seq,
                "shape": list(tail.shape), "data": base64.b64encode(tail.astype("<f8").tobytes()).decode()})
        if state:
            self.outbox.append([], state=state)
        return len(state)

    def restore_windows(self, state: dict[str, str]) -> tuple[int, int]:
        """Take back the windows `save_windows` stored that still fit (see the module docstring) and delete
        them all from the outbox; returns (taken back, left out)."""
        stage = self.slot.stage
        taken = left = 0
        for key, text in state.items():
            if not key.startswith(_WINDOW_STATE):
                continue
            d = key[len(_WINDOW_STATE):]
            st = self.intake.streams.get(d)
            try:
                w = json.loads(text)
                spec = stage.bundle.spec
                same = w["spec"] == spec.hash
                channels = w.get("channels")  # absent before 3 December 2026: then only the same spec fits
                fits = (w["v"] == 1 and st is not None and (w["boot_id"], w["last_seq"]) == (st.boot_id, st.last_seq)
                        and (same or (isinstance(channels, list) and set(spec.channels) <= set(channels))))
                if fits:
                    tail = np.frombuffer(base64.b64decode(w["data"]), dtype="<f8").reshape(w["shape"])
                    stage.set_window(d, tail.astype(np.float64) if same else rebuilt_window(tail, channels, spec))
            except (ValueError, TypeError, KeyError, IndexError, binascii.Error):
                fits = False
            taken += fits
            left += not fits
        if taken or left:  # used up: the windows move on from here, a later crash leaves none behind
            with contextlib.suppress(OutboxError):  # full disk: left behind, they fit only until the streams move
                self.outbox.append([], state={k: None for k in state if k.startswith(_WINDOW_STATE)})
        return taken, left

    def _ingest(self, batches: list[Batch]) -> None:
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
        segments: list[Segment] = []
        events: list[AnomalyEvent] = []
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
            events = self._track([(blk, boot, res.scores)
                                  for (blk, boot), res in zip(accepted, results, strict=True)])
            now = self.clock()
            segments += [event_segment(ev, self._event_context(), now) for ev in events]
        touched = {blk.device_id for blk, _ in accepted}
        now = self.clock()
        self._seen.update(dict.fromkeys(touched, now))
        streams = {d: (self.intake.streams[d].boot_id, self.intake.streams[d].last_seq) for d in touched}
        evicted = self.outbox.append(segments, streams=streams, checkpoint=checkpoint,
                                     state={_EVENT_STATE + d: v for d, v in self.events.changed().items()})
        self._stored = True
        self.slot.stage.commit()
        self.events.commit()
        self._announce(events, extra=lambda ev: {"peak_score": round(ev.peak_score, 4)})
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

    def _track(self, scored: list[tuple[ReadingBlock, str, np.ndarray]]) -> list[AnomalyEvent]:
        """Anomaly events (one alert per event, `models.events`) of a batch, to be stored as outbox segments
        in the same transaction as the readings that caused them (`contracts.events`)."""
        thr = float(self.slot.threshold)
        return [ev for blk, boot, scores in scored
                for ev in self.events.update(blk.device_id, boot, blk.seq, blk.ts, scores, thr)]

    def _announce(self, events: list[AnomalyEvent], why: str = "",
                  extra: Callable[[AnomalyEvent], dict[str, object]] = lambda _ev: {}) -> None:
        """Count and log events once they are stored (a failed write is retried, never counted twice)."""
        for ev in events:
            self.metrics.anomaly_events.labels(kind=ev.kind).inc()
            if ev.kind != "update":
                event(self.log, logging.INFO, f"anomaly event {ev.kind}{why}", device=ev.device_id,
                      event_id=ev.event_id, alarms=ev.alarms, **extra(ev))
        self.metrics.anomaly_events_open.set(self.events.open_events)

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
