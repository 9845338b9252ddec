"""The source pump: every configured source on its own thread, one bounded hand-off queue to ingest.

Guarantees:
- A source's batch is counted (`emitted`) only once it is in the queue; `take` gives ingest whatever
  has arrived, up to a reading limit, waiting up to a linger time for more (`scoring.linger_ms`), so
  batches fill at high rates and a slow stream is still handled several readings at a time.
- With several sources each one's checkpoint keys are stored as ``<name>/<key>``, so two sources of one
  type (two JSONL backfills) never overwrite each other's position; a single [source] keeps its keys
  unprefixed (the outbox of an existing agent resumes where it was).
- A source that fails (AgentError, OSError) is counted as an error of its component, reported through
  `on_fatal`, and closed; `done` is set once every source has returned.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from edge_agent.config import SourceConfig
from edge_agent.errors import AgentError
from edge_agent.logs import event
from edge_agent.metrics import AgentMetrics
from edge_agent.sources.base import Batch, Source, make_source

QUEUE_BATCHES = 16  # source batches waiting for ingest at most (back-pressure on the sources)


class SourceSlot:
    """One configured source, its name, its checkpoint namespace and its counts."""

    def __init__(self, source: Source, label: str, prefix: str, metrics: AgentMetrics) -> None:
        self.source, self.label, self.prefix = source, label, prefix
        self.component = metrics.component("source", label, source.name)

    @staticmethod
    def view(checkpoint: dict[str, str], label: str, scoped: bool) -> dict[str, str]:
        """The part of the outbox's checkpoint that belongs to one source (its keys without the prefix)."""
        if not scoped:
            return dict(checkpoint)
        prefix = f"{label}/"
        return {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}

    def prepare(self, batch: Batch) -> None:
        """Count a batch and put its checkpoint keys in this source's namespace."""
        self.component.received(len(batch))
        if self.prefix and batch.checkpoint:
            batch.checkpoint = {self.prefix + k: v for k, v in batch.checkpoint.items()}


class SourcePump:
    def __init__(self, slots: list[SourceSlot], log: logging.Logger,
                 on_fatal: Callable[[str, BaseException], None]) -> None:
        self.slots, self.log, self._on_fatal = slots, log, on_fatal
        self.queue: queue.Queue[Batch] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.stop = threading.Event()
        self.done = threading.Event()
        self.emitted = 0  # batches handed over, all sources
        self._running = len(slots)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, configs: tuple[SourceConfig, ...], checkpoint: dict[str, str], batch_size: int,
                    metrics: AgentMetrics, log: logging.Logger,
                    on_fatal: Callable[[str, BaseException], None]) -> SourcePump:
        scoped = len(configs) > 1
        slots = [SourceSlot(make_source(c, SourceSlot.view(checkpoint, c.label, scoped), batch_size),
                            c.label, f"{c.label}/" if scoped else "", metrics) for c in configs]
        return cls(slots, log, on_fatal)

    def bodies(self) -> list[tuple[str, Callable[[], None]]]:
        """(thread name, body) per source."""
        return [(f"source-{s.label}", lambda s=s: self._run(s)) for s in self.slots]  # type: ignore[misc]

    def take(self, limit: int, timeout: float, linger: float = 0.0) -> list[Batch]:
        """The batches that have arrived, up to `limit` readings (at least one batch; [] after `timeout`).

        With `linger` > 0 it waits up to that many seconds after the first batch for more, so that a slow
        stream is scored, stored and sent in batches of several readings rather than one by one (each batch
        costs the same onnxruntime call, outbox commit and uplink message). It stops waiting once `limit`
        readings are in hand, once the pump is stopping, or as soon as it holds a batch whose source waits
        for its `ack` (the MQTT source: a sensor's broker lets only a few messages go unacknowledged, so
        waiting would throttle it to that window per `linger`)."""
        try:
            first = self.queue.get(timeout=timeout)
        except queue.Empty:
            return []
        batches, n = [first], len(first)
        deadline = time.monotonic() + (linger if first.ack is None else 0.0)
        while n < limit:
            left = 0.0 if self.stop.is_set() else deadline - time.monotonic()  # stopping: no more waiting
            try:
                b = self.queue.get(timeout=min(left, 0.1)) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                if left > 0.1:
                    continue
                break
            batches.append(b)
            n += len(b)
            if b.ack is not None:
                deadline = 0.0
        return batches

    def _run(self, slot: SourceSlot) -> None:
        def emit(batch: Batch) -> bool:
            slot.prepare(batch)
            while not self.stop.is_set():
                try:
                    self.queue.put(batch, timeout=0.1)
                except queue.Full:
                    continue
                with self._lock:
                    self.emitted += 1
                slot.component.sent(len(batch))
                return True
            return False

        try:
            slot.source.run(emit, self.stop)
        except (AgentError, OSError) as exc:
            slot.component.error(type(exc).__name__)
            event(self.log, logging.ERROR, "source failed", source=slot.label, error=str(exc))
            self._on_fatal(f"source {slot.label}: {exc}", exc)
        finally:
            slot.source.close()
            with self._lock:
                self._running -= 1
                if self._running == 0:
                    self.done.set()
