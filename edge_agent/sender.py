"""The sender: outbox -> uplink, anomalies first, through a token bucket, at most `max_inflight` unconfirmed.

`Sender.step()` does one round and never blocks: it (re)connects when the uplink is down (with capped,
jittered backoff), collects confirmations, stages rows from the outbox, builds and sends messages
while there is in-flight room and a token, and returns how long the caller may wait before the next
round (0 = go on at once). `run(stop, wake)` loops over it on the sender thread; tests drive `step()`
directly with the in-memory outbox, a `ListSink` and a fake clock.

Guarantees:
- A row leaves the outbox only once the uplink confirmed the message that carried it (`ack`), in
  batches at most 20 ms or 256 messages old, so a kill re-sends only what was unconfirmed or just confirmed.
- On a disconnect every unconfirmed row is released and read again: sent again, never lost.
- A link that drops before its confirmations arrive cannot livelock the sender: each disconnect that
  loses unconfirmed messages halves the in-flight window (`window`, down to 1 message), and every
  confirmation widens it by one again (doubling per round trip, up to `max_inflight`), so a link that
  carries at least one message and its confirmation per connection drains the outbox.
- Anomaly rows (kind 1) are sent before the normal backlog (kind 0); within a kind, in outbox order.
- Corrupt rows the outbox skips, and rows evicted while staged, are counted as dropped, never sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge_agent.config import UplinkConfig
from edge_agent.errors import OutboxError, UplinkError
from edge_agent.flow import Backoff, TokenBucket
from edge_agent.logs import event
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox
from edge_agent.packing import HEADER_ALLOWANCE, Message, build_message
from edge_agent.sinks.base import Sink
from edge_agent.staging import SendQueue

STAGE_MAX_ROWS = 8192  # rows read ahead per kind (bounds memory with tiny rows)
STAGE_PAGE_ROWS = 4096  # rows per outbox read at most
ACK_BATCH_S = 0.02  # confirmed rows are deleted at most this long after their confirmation...
ACK_BATCH_MESSAGES = 256  # ...or once this many messages are confirmed
IDLE_WAIT_S = 0.05  # nothing to send, nothing in flight
INFLIGHT_WAIT_S = 0.002  # nothing to send, confirmations expected soon
NO_UPLINK_WAIT_S = 0.5  # uplink.type = none


class Sender:
    def __init__(self, outbox: Outbox, sink: Sink, config: UplinkConfig, *, bucket: TokenBucket,
                 metrics: AgentMetrics, log: logging.Logger,
                 on_connected: Callable[[Sink], None] = lambda _s: None,
                 on_dropped: Callable[[dict[str, int]], None] = lambda _d: None,
                 on_error: Callable[[str], None] = lambda _e: None,
                 clock: Callable[[], float] = time.monotonic, backoff: Backoff | None = None) -> None:
        self.outbox, self.sink, self.config, self.bucket = outbox, sink, config, bucket
        self.metrics, self.log, self.clock = metrics, log, clock
        self._on_connected, self._on_dropped, self._on_error = on_connected, on_dropped, on_error
        self.backoff = backoff or Backoff(config.backoff_initial_s, config.backoff_max_s)
        budget = config.max_message_bytes - HEADER_ALLOWANCE
        self.queues = {1: SendQueue(budget), 0: SendQueue(budget)}
        self.inflight: dict[int, Message] = {}
        self.window = config.max_inflight  # messages allowed unconfirmed now (see the module docstring)
        self.component = metrics.component("sink", "uplink", config.type)
        self._token = 0
        self._headers: dict[int, str] = {}
        self._was_connected = False
        self._retry_at = 0.0
        self._acked_ids: list[int] = []  # confirmed by the uplink, not yet deleted from the outbox
        self._acked_readings = self._acked_messages = 0
        self._acked_since = 0.0

    # ---- the loop ----------------------------------------------------------------------------
    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """Step until `stop` is set, waiting on `wake` (set by ingest on new rows) between rounds."""
        while not stop.is_set():
            try:
                wait = self.step()
            except OutboxError as exc:
                self.component.error("outbox_read")
                self._error(f"outbox read failed: {exc}", str(exc))
                wait = 1.0
            if wait > 0:
                wake.wait(wait)
                wake.clear()
        self.finish()

    def finish(self) -> None:
        """Delete what was confirmed so far (at stop)."""
        try:
            self._confirm(flush=True)
        except OutboxError as exc:
            self._on_error(str(exc))

    def step(self) -> float:
        """One round; returns the seconds the caller may wait before the next (0 = at once)."""
        if not self.sink.connected:
            wait = self._reconnect()
            if wait > 0:
                return wait
        self._confirm()
        room = self.window - len(self.inflight)
        if room > 0:
            for kind in (1, 0):
                q = self.queues[kind]
                self._stage(q, kind, room)
                self._dropped(self.outbox.take_drops())  # corrupt rows, never sent
                if not q:
                    continue
                return self._send_from(q, kind, room)  # anomalies first: normal rows only when none pending
        self._confirm(flush=not self.inflight)
        return INFLIGHT_WAIT_S if self.inflight else IDLE_WAIT_S

    def _send_from(self, q: SendQueue, kind: int, room: int) -> float:
        evicted = self.outbox.evicted_upto(kind)
        sent = 0
        for _ in range(room):
            group = q.pop(evicted)
            if group is None:
                break
            wait = self.bucket.try_acquire()
            if wait > 0:
                q.push_front(group)
                return wait
            cid = group[0].segment.context_id
            header = self._headers.get(cid) or self._headers.setdefault(cid, self.outbox.context(cid))
            msg = build_message(group, header, compress=self.config.compress)
            self._token += 1
            if not self.sink.send(msg, self._token):
                q.push_front(group)
                break
            self.inflight[self._token] = msg
            self.component.received(msg.readings)
            self.outbox.hold(msg.ids)
            sent += 1
            self._confirm()  # delete what was confirmed meanwhile, promptly
        if sent:
            return 0.0
        self._confirm(flush=not self.inflight)
        return INFLIGHT_WAIT_S if self.inflight else IDLE_WAIT_S

    # ---- connection ----------------------------------------------------------------------------
    def _reconnect(self) -> float:
        """Release what was in flight (it is read and sent again), then connect unless backing off."""
        if self._was_connected:
            if self.inflight:  # lost unconfirmed: send fewer at once until confirmations come back
                self.window = max(1, min(self.window, len(self.inflight)) // 2)
            event(self.log, logging.WARNING, "uplink disconnected; resending unconfirmed",
                  unconfirmed=len(self.inflight), window=self.window)
            self._was_connected = False
        self.metrics.connected.set(0)
        self._confirm(flush=True)
        self._dropped(self.outbox.release([i for m in self.inflight.values() for i in m.ids]))
        self.inflight.clear()
        for q in self.queues.values():
            q.reset()  # unconfirmed rows are read again and resent
        if self.config.type == "none":
            return NO_UPLINK_WAIT_S
        now = self.clock()
        if now < self._retry_at:
            return self._retry_at - now
        try:
            self.sink.connect(timeout=5.0)
        except UplinkError as exc:
            self.metrics.send_errors.inc()
            self.component.error("connect")
            delay = self.backoff.next_delay()
            self._retry_at = self.clock() + delay
            self._error("uplink connect failed", str(exc), retry_in_s=round(delay, 2))
            return max(delay, 1e-3)
        self.backoff.reset()
        self._was_connected = True
        self.metrics.connected.set(1)
        event(self.log, logging.INFO, "uplink connected", uplink=self.config.type, endpoint=self.config.endpoint)
        self._on_connected(self.sink)
        return 0.0

    def _error(self, message: str, error: str, **fields: object) -> None:
        self._on_error(error)
        event(self.log, logging.WARNING, message, error=error, **fields)

    # ---- outbox --------------------------------------------------------------------------------
    def _dropped(self, evicted: dict[str, int]) -> None:
        if evicted:
            self._on_dropped(evicted)

    def _stage(self, q: SendQueue, kind: int, room: int) -> None:
        """Read ahead enough rows to fill `room` messages (bounded in rows and bytes).

        Rows are read in pages sized from the rows seen so far, so small rows (many devices, small
        batches) are read in large pages and big rows (one device, big batches) in small ones.
        """
        want = room * q.budget
        limit = room + 8
        while q.bytes < want and q.rows < STAGE_MAX_ROWS:
            before = q.bytes
            rows = self.outbox.pending(kind, q.fetched_upto, limit)
            q.add(rows)
            if len(rows) < limit:
                return
            avg = max(1, (q.bytes - before) // len(rows))
            limit = max(8, min(STAGE_PAGE_ROWS, (want - q.bytes) // avg + 8))

    def _confirm(self, *, flush: bool = False) -> None:
        """Collect confirmations; delete them from the outbox in batches (every 20 ms or 256 messages)."""
        for tok in self.sink.confirmed():
            msg = self.inflight.pop(tok, None)
            if msg is not None:
                if not self._acked_ids:
                    self._acked_since = self.clock()
                self._acked_ids += msg.ids
                self._acked_readings += msg.readings
                self._acked_messages += 1
                self.window = min(self.config.max_inflight, self.window + 1)
        if self._acked_ids and (flush or self._acked_messages >= ACK_BATCH_MESSAGES
                                or self.clock() - self._acked_since > ACK_BATCH_S):
            self.outbox.ack(self._acked_ids)
            self.metrics.sent.inc(self._acked_readings)
            self.metrics.messages_sent.inc(self._acked_messages)
            self.component.sent(self._acked_readings)
            self._acked_ids, self._acked_readings, self._acked_messages = [], 0, 0
