"""The agent: source -> intake -> features + ONNX scoring -> outbox -> uplink.

Three threads: the source, the ingest loop (micro-batches: it takes whatever batches have
arrived, up to `scoring.batch_size` readings, so latency stays low at low rates and
throughput high at high rates) and the sender (anomaly segments first, then the normal
backlog in order, through a token bucket, with at most `uplink.max_inflight` unconfirmed
messages). The outbox is the only hand-off between ingest and sender.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from contracts.block import ReadingBlock
from contracts.telemetry import ModelLineage
from edge_agent import sinks as _sinks  # noqa: F401  (register sinks)
from edge_agent import sources as _sources  # noqa: F401  (register sources)
from edge_agent.config import AgentConfig
from edge_agent.control import ControlPlane
from edge_agent.errors import AgentError, ConfigError, OutboxError
from edge_agent.flow import Backoff, TokenBucket
from edge_agent.intake import Intake, Quarantine, Rejected, StreamState
from edge_agent.logs import Throttle, event, setup_logging
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import Outbox, SqliteOutbox
from edge_agent.packing import ScoredBlock, context_header, segments_for_many
from edge_agent.rollout import RolloutError
from edge_agent.scoring import ScoringStage
from edge_agent.sender import Sender
from edge_agent.sinks.base import Sink, make_sink
from edge_agent.sources.base import Batch, Source, make_source
from edge_agent.tuning import tune_allocator
from models.bundle import Bundle, load_bundle
from models.errors import BundleError, ModelError

VERSION = "0.1.0"


def load_model(config: AgentConfig) -> Bundle:
    """The configured bundle, verified; ConfigError naming model.bundle when it is missing or bad."""
    from models.registry import Registry

    try:
        path = Registry(config.model.bundle).resolve(config.model.bundle, config.model.name or None)
        trusted = Path(config.model.trusted_key) if config.model.trusted_key else None
        return load_bundle(path, trusted_key=trusted)
    except (BundleError, ModelError) as exc:
        raise ConfigError("model.bundle", str(exc)) from None


class Agent:
    """One agent process. `start()`, then `stop()` (or `run()` until SIGTERM/SIGINT)."""

    def __init__(self, config: AgentConfig, *, sink: Sink | None = None, source: Source | None = None,
                 outbox: Outbox | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.log = setup_logging(config.log.level)
        self.allocator_tuned = tune_allocator()
        self.clock = clock
        self.bundle = load_model(config)
        self.stage = ScoringStage(self.bundle, threads=config.scoring.threads)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = outbox or SqliteOutbox(config.state_dir / "outbox.db", config.outbox.max_bytes,
                                             synchronous=config.outbox.synchronous)
        self.intake = Intake(required=self.bundle.spec.channels, min_value=config.scoring.min_value,
                             max_value=config.scoring.max_value,
                             streams={d: StreamState(b, s) for d, (b, s) in self.outbox.streams().items()})
        self.quarantine = Quarantine(config.state_dir / "quarantine.jsonl")
        self.metrics = AgentMetrics()
        salvaged = getattr(self.outbox, "salvaged", None)
        if salvaged is not None:  # the file was corrupt: moved aside, a fresh one started (see SqliteOutbox)
            event(self.log, logging.ERROR, "outbox was corrupt; moved aside and salvaged", **salvaged)
        self._evictions_log = Throttle(self.log, logging.WARNING, "outbox full: evicted readings")
        self._quarantine_log = Throttle(self.log, logging.WARNING, "readings quarantined (see quarantine.jsonl)")
        self.metrics.model.info({"name": self.bundle.manifest.name, "version": str(self.bundle.manifest.version),
                                 "sha256": self.bundle.manifest.sha256})
        self.sink = sink or make_sink(config.uplink)
        self.source = source or make_source(config.source, self.outbox.checkpoint(), config.scoring.batch_size)
        self._queue: queue.Queue[Batch] = queue.Queue(maxsize=16)
        self._stop_source = threading.Event()
        self._stop_ingest = threading.Event()
        self._stop_sender = threading.Event()
        self._wake = threading.Event()
        self._source_done = threading.Event()
        self._contexts: dict[tuple[str, ...], int] = {}
        self._swap_lock = threading.Lock()
        self._pending: tuple[Bundle, ScoringStage] | None = None
        self._previous: tuple[Bundle, ScoringStage] | None = None
        self._threshold_override: float | None = None
        self._batch_limit = config.scoring.batch_size
        self.bucket = TokenBucket(config.uplink.rate_messages_per_s)
        self.control = ControlPlane(self)
        self.sender = Sender(self.outbox, self.sink, config.uplink, bucket=self.bucket, metrics=self.metrics,
                             log=self.log, on_connected=self.control.attach, on_dropped=self._count_evicted,
                             on_error=self._set_error)
        self._threads: list[threading.Thread] = []
        self.last_error = ""
        self._emitted = 0  # batches handed over by the source (source thread)
        self._processed = 0  # batches ingested (ingest thread)
        self.fatal: BaseException | None = None
        self._refresh_gauges()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
        for name, target in (("source", self._run_source), ("ingest", self._run_ingest),
                             ("sender", self._run_sender), ("status", self._run_status)):
            t = threading.Thread(target=self._guard(name, target), name=f"edgeflag-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        event(self.log, logging.INFO, "agent started", version=VERSION, model=self.bundle.label,
              source=self.config.source.type, uplink=self.config.uplink.type, config=self.config.redacted(),
              allocator_tuned=self.allocator_tuned)

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        """Run a thread body; an unexpected exception makes the agent exit non-zero (systemd restarts it
        with the outbox intact) instead of leaving a half-dead process that no longer reads or sends."""

        def run() -> None:
            try:
                target()
            except Exception as exc:  # the last line of defence
                self.last_error = f"{name} thread crashed: {type(exc).__name__}: {exc}"
                self.log.exception("thread crashed; the agent will exit so its supervisor restarts it",
                                   extra={"fields": {"thread": name}})
                self.fatal = exc

        return run

    def stop(self, flush_timeout: float = 10.0) -> None:
        """Stop reading, store what was read, try to deliver the outbox for `flush_timeout` s, exit."""
        self._stop_source.set()
        self._stop_ingest.set()
        self._join("edgeflag-source", 5)
        self._join("edgeflag-ingest", 30)
        deadline = time.monotonic() + flush_timeout
        sender = next((t for t in self._threads if t.name == "edgeflag-sender"), None)
        while (time.monotonic() < deadline and self.fatal is None and sender is not None and sender.is_alive()
               and self.outbox.stats().segments and self.sink.connected):
            time.sleep(0.02)
        self._stop_sender.set()
        self._wake.set()
        for t in self._threads:
            t.join(10)
        self.sink.close()
        self.control.close()
        self._refresh_gauges()
        self._evictions_log.flush()
        self._quarantine_log.flush()
        event(self.log, logging.INFO, "agent stopped", **self.status())
        self.outbox.close()
        self.metrics.close()

    def _join(self, name: str, timeout: float) -> None:
        for t in self._threads:
            if t.name == name:
                t.join(timeout)

    def run(self, *, exit_when_drained: bool = False) -> int:
        """Run until SIGTERM/SIGINT (or, with exit_when_drained, until the source ends and all is sent)."""
        done = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            event(self.log, logging.INFO, "signal received, flushing", signal=signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not done.wait(0.1):
            if self.fatal is not None:
                break
            if exit_when_drained and self.drained():
                break
        self.stop()
        return 1 if self.fatal is not None else 0

    def drained(self) -> bool:
        """The source is exhausted, every batch it produced was ingested, and the outbox is empty."""
        return (self._source_done.is_set() and self._processed == self._emitted
                and self.outbox.stats().segments == 0)

    # ---- source ----------------------------------------------------------------------------
    def _emit(self, batch: Batch) -> bool:
        while not self._stop_source.is_set():
            try:
                self._queue.put(batch, timeout=0.1)
                self._emitted += 1
                return True
            except queue.Full:
                continue
        return False

    def _run_source(self) -> None:
        try:
            self.source.run(self._emit, self._stop_source)
        except (AgentError, OSError) as exc:
            self.last_error = f"source: {exc}"
            event(self.log, logging.ERROR, "source failed", error=str(exc))
            self.fatal = exc
        finally:
            self.source.close()
            self._source_done.set()

    # ---- ingest ----------------------------------------------------------------------------
    def _run_ingest(self) -> None:
        while True:
            limit = self._batch_limit
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._stop_ingest.is_set() or (self._source_done.is_set() and self._stop_source.is_set()):
                    return
                continue
            batches, n = [first], len(first)
            while n < limit:
                try:
                    b = self._queue.get_nowait()
                except queue.Empty:
                    break
                batches.append(b)
                n += len(b)
            self._ingest_with_retry(batches)
            self._processed += len(batches)

    def _ingest_with_retry(self, batches: list[Batch]) -> None:
        backoff: Backoff | None = None  # created on the first failure only (seeding a Random is not free)
        while True:
            snapshot = {d: StreamState(s.boot_id, s.last_seq, s.channels) for d, s in self.intake.streams.items()}
            try:
                self.ingest(batches)
                return
            except OutboxError as exc:  # disk full, I/O error: keep the batch, keep trying, never ack
                self.intake.streams = snapshot
                self.last_error = str(exc)
                event(self.log, logging.ERROR, "outbox write failed; retrying", error=str(exc))
                backoff = backoff or Backoff(0.2, 5.0)
                if self._stop_sender.wait(backoff.next_delay()):
                    return

    def ingest(self, batches: list[Batch]) -> None:
        """Validate, score and store one micro-batch; acknowledge its sources once durable."""
        self._maybe_swap()
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
            results = self.stage.score_many([blk for blk, _ in accepted])
            self.metrics.batch_seconds.observe(time.perf_counter() - ts)
            items = [ScoredBlock(blk, res.scores, res.flags, boot, self._context(blk.channels))
                     for (blk, boot), res in zip(accepted, results, strict=True)]
            segments = segments_for_many(items, max_message_bytes=self.config.uplink.max_message_bytes,
                                         stored_at=self.clock())
            flagged = sum(int(r.flags.sum()) for r in results)
            scored = sum(len(blk) for blk, _ in accepted)
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
        self._count_evicted(evicted)
        self._quarantine_log.add(quarantined)
        m.observe_batch(time.perf_counter() - t0)
        self._wake.set()

    def _context(self, channels: tuple[str, ...]) -> int:
        cid = self._contexts.get(channels)
        if cid is None:
            cid = self._contexts[channels] = self.outbox.context_id(context_header(self.lineage(), channels))
        return cid

    # ---- control plane hooks ---------------------------------------------------------------
    def lineage(self) -> ModelLineage:
        """The model lineage every message carries: the bundle's, with the effective threshold."""
        lin = self.bundle.lineage
        return replace(lin, threshold=self.stage.threshold)

    def apply_settings(self, plan: dict[str, Any]) -> None:
        """Apply a validated control-plane plan (see edge_agent.control). Model swaps happen between batches."""
        if "model" in plan and plan["model"] is not None:
            with self._swap_lock:
                self._pending = plan["model"]
        if "threshold" in plan:
            self._threshold_override = plan["threshold"]
            with self._swap_lock:
                if self._pending is None:
                    self._pending = (self.bundle, self.stage)  # same model, new threshold: re-key contexts
        if "batch_size" in plan:
            self._batch_limit = plan["batch_size"]
        if "send_rate" in plan:
            self.bucket.set_rate(plan["send_rate"])
        if "log_level" in plan:
            self.log.setLevel(plan["log_level"].upper())

    def _maybe_swap(self) -> None:
        with self._swap_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        bundle, stage = pending
        if stage is not self.stage:
            stage.adopt_state(self.stage)
            self._previous = (self.bundle, self.stage)
        self.bundle, self.stage = bundle, stage
        self.stage.threshold = (self._threshold_override if self._threshold_override is not None
                                else float(bundle.manifest.threshold))
        self._contexts.clear()
        self.intake.required = bundle.spec.channels
        self.metrics.model.info({"name": bundle.manifest.name, "version": str(bundle.manifest.version),
                                 "sha256": bundle.manifest.sha256})
        event(self.log, logging.INFO, "model in use", model=bundle.label, threshold=self.stage.threshold)
        self.control.request_report()  # report what is now in effect

    def rollback_model(self) -> Bundle:
        """Go back to the model used before the last swap (between batches)."""
        with self._swap_lock:
            if self._previous is None:
                raise RolloutError("no previous model to roll back to")
            self._pending, self._previous = self._previous, None
            return self._pending[0]

    def flush_now(self) -> None:
        """Send what is pending without waiting for the token bucket to refill."""
        self.bucket.fill()
        self._wake.set()

    # ---- sender ----------------------------------------------------------------------------
    def _run_sender(self) -> None:
        self.sender.run(self._stop_sender, self._wake)

    def _set_error(self, error: str) -> None:
        self.last_error = error

    def _count_evicted(self, evicted: dict[str, int]) -> None:
        for reason, n in evicted.items():
            self.metrics.dropped.labels(reason=reason).inc(n)
        self._evictions_log.add(evicted)

    # ---- status ----------------------------------------------------------------------------
    def _refresh_gauges(self) -> None:
        st = self.outbox.stats()
        m = self.metrics
        m.outbox_segments.set(st.segments)
        m.outbox_readings.set(st.readings)
        m.outbox_bytes.set(st.bytes)
        m.oldest_age.set(max(0.0, self.clock() - st.oldest_ts) if st.oldest_ts is not None else 0.0)

    def _run_status(self) -> None:
        interval = self.config.agent.status_interval_s
        last = time.monotonic()
        while not self._stop_sender.wait(0.5):
            self._refresh_gauges()
            if time.monotonic() - last >= interval:
                last = time.monotonic()
                event(self.log, logging.INFO, "status", **self.status())
                if self.sink.connected:
                    self.control.request_report()

    def status(self) -> dict[str, Any]:
        """What `get_status` reports: agent version, model, counters, outbox, last error."""
        m = self.bundle.manifest
        snap = self.metrics.snapshot()
        snap["dropped_total"] = self.outbox.drops()
        return {"agent_version": VERSION,
                "model": {"name": m.name, "version": m.version, "sha256": m.sha256,
                          "threshold": self.stage.threshold},
                "config": {"batch_size": self._batch_limit, "send_rate": self.bucket.rate,
                           "log_level": logging.getLevelName(self.log.level).lower(),
                           "threshold": self.stage.threshold},
                "last_error": self.last_error,
                "outbox_disk_full": bool(getattr(self.outbox, "disk_full", False)), **snap}
