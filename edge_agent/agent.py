"""The agent: source -> intake -> features + ONNX scoring -> outbox -> uplink, as wiring of its parts.

Threads: the source (its plugin's `run`), ingest (micro-batches: whatever batches arrive within
`scoring.linger_ms` of the first, up to `scoring.batch_size` readings, so throughput is high at high
rates and a slow stream costs little; `edge_agent.ingest.IngestStage`), the sender
(`edge_agent.sender.Sender`: anomalies first, a token bucket, at most `uplink.max_inflight`
unconfirmed), status, and the control plane (`edge_agent.control`, which sees the agent only through
its `Managed` protocol). The model in use lives in a `ModelSlot`; the outbox is the only hand-off
between ingest and sender.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent import sinks as _sinks  # noqa: F401  (register sinks)
from edge_agent import sources as _sources  # noqa: F401  (register sources)
from edge_agent.config import AgentConfig
from edge_agent.control import ControlPlane, SettingsPlan, Unchanged
from edge_agent.errors import ConfigError, OutboxError
from edge_agent.flow import TokenBucket
from edge_agent.ingest import IngestStage
from edge_agent.intake import Intake, Quarantine, StreamState
from edge_agent.logs import Throttle, event, setup_logging
from edge_agent.metrics import AgentMetrics
from edge_agent.model_slot import ModelSlot
from edge_agent.outbox import Outbox, SqliteOutbox
from edge_agent.pump import SourcePump, SourceSlot
from edge_agent.scoring import ScoringStage
from edge_agent.sender import Sender
from edge_agent.sinks.base import Sink, make_sink
from edge_agent.sources.base import Source
from edge_agent.tuning import tune_allocator
from models.bundle import Bundle, load_bundle
from models.errors import BundleError, ModelError
from models.events import EventConfig

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
        bundle = load_model(config)
        self.slot = ModelSlot(bundle, ScoringStage(bundle, threads=config.scoring.threads))
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = outbox or SqliteOutbox(config.state_dir / "outbox.db", config.outbox.max_bytes,
                                             synchronous=config.outbox.synchronous,
                                             reserve_bytes=config.outbox.reserve_bytes)
        self.metrics = AgentMetrics()
        salvaged = getattr(self.outbox, "salvaged", None)
        if salvaged is not None:  # the file was corrupt: moved aside, a fresh one started (see SqliteOutbox)
            event(self.log, logging.ERROR, "outbox was corrupt; moved aside and salvaged", **salvaged)
        self._evictions_log = Throttle(self.log, logging.WARNING, "outbox full: evicted readings")
        self._quarantine_log = Throttle(self.log, logging.WARNING, "readings quarantined (see quarantine.jsonl)")
        self._model_info(bundle)
        intake = Intake(required=bundle.spec.channels, min_value=config.scoring.min_value,
                        max_value=config.scoring.max_value,
                        streams={d: StreamState(b, s) for d, (b, s) in self.outbox.streams().items()})
        self.ingest = IngestStage(self.slot, intake, self.outbox, Quarantine(config.state_dir / "quarantine.jsonl"),
                                  self.metrics, self.log, max_message_bytes=config.uplink.max_message_bytes,
                                  clock=clock, on_model=self._model_in_use, on_dropped=self._count_evicted,
                                  events=EventConfig(config.events.close_after, config.events.release,
                                                     config.events.update_every_s),
                                  on_quarantined=self._quarantine_log.add, on_error=self._set_error)
        state = self.outbox.state()
        unreadable = self.ingest.restore_events(state)
        if unreadable:
            self.ingest.component.error("event_state_unreadable")
            event(self.log, logging.WARNING, "stored anomaly events not continued (state unreadable)",
                  devices=",".join(sorted(unreadable)))
        taken, left = self.ingest.restore_windows(state)
        if taken or left:
            event(self.log, logging.INFO, "rolling windows from the last clean stop", taken_back=taken,
                  left_out=left)
        self.sink = sink or make_sink(config.uplink)
        self.outbox_component = self.metrics.component("buffer", "outbox", type(self.outbox).__name__.lower())
        if source is not None:
            self.pump = SourcePump([SourceSlot(source, source.config.label, "", self.metrics)], self.log,
                                   self._source_failed)
        else:
            self.pump = SourcePump.from_config(config.sources, self.outbox.checkpoint(), config.scoring.batch_size,
                                               self.metrics, self.log, self._source_failed)
        self._stop_ingest = threading.Event()
        self._stop_sender = threading.Event()
        self._wake = threading.Event()
        self._batch_limit = config.scoring.batch_size
        self._linger_s = config.scoring.linger_ms / 1000
        self.bucket = TokenBucket(config.uplink.rate_messages_per_s)
        trusted = Path(config.model.trusted_key) if config.model.trusted_key else None
        self.control = ControlPlane(self, state_dir=config.state_dir, trusted_key=trusted)
        self.sender = Sender(self.outbox, self.sink, config.uplink, bucket=self.bucket, metrics=self.metrics,
                             log=self.log, on_connected=self.control.attach, on_dropped=self._count_evicted,
                             on_error=self._set_error)
        self._threads: list[threading.Thread] = []
        self.last_error = ""
        self._processed = 0  # batches ingested (ingest thread)
        self.fatal: BaseException | None = None
        self._refresh_gauges()

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.metrics.serve(self.config.metrics.host, self.config.metrics.port)
        for name, target in (*self.pump.bodies(), ("ingest", self._run_ingest), ("sender", self._run_sender),
                             ("status", self._run_status)):
            t = threading.Thread(target=self._guard(name, target), name=f"edgeflag-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        event(self.log, logging.INFO, "agent started", version=VERSION, model=self.slot.bundle.label,
              sources=[f"{s.label}:{s.source.name}" for s in self.pump.slots], uplink=self.config.uplink.type,
              config=self.config.redacted(), allocator_tuned=self.allocator_tuned)

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
        self.pump.stop.set()
        self._stop_ingest.set()
        for s in self.pump.slots:
            self._join(f"edgeflag-source-{s.label}", 5)
        self._join("edgeflag-ingest", 30)
        self._save_windows()
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

    def _save_windows(self) -> None:
        """Store the devices' rolling windows once ingest has stopped (a restart then scores as if none was)."""
        if any(t.name == "edgeflag-ingest" and t.is_alive() for t in self._threads):
            return  # ingest is stuck: its windows may be mid-batch
        try:
            n = self.ingest.save_windows()
        except OutboxError as exc:
            self.ingest.component.error("outbox_write")
            event(self.log, logging.WARNING, "rolling windows not stored; they warm up again at start",
                  error=str(exc))
            return
        event(self.log, logging.INFO, "rolling windows stored", devices=n)

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
        return self.pump.done.is_set() and self._processed == self.pump.emitted and self.outbox.stats().segments == 0

    # ---- sources and ingest ----------------------------------------------------------------
    def _source_failed(self, error: str, exc: BaseException) -> None:
        self.last_error = error
        self.fatal = exc

    def _run_ingest(self) -> None:
        pump = self.pump
        idle_s = self.config.events.idle_close_s
        next_idle_check = time.monotonic() + 1.0
        while True:
            if idle_s and time.monotonic() >= next_idle_check:  # between batches: silent devices' open events
                next_idle_check = time.monotonic() + 1.0
                self.ingest.close_idle(idle_s)
            batches = pump.take(self._batch_limit, 0.05, self._linger_s)
            if not batches:
                if self._stop_ingest.is_set() or (pump.done.is_set() and pump.stop.is_set()):
                    return
                continue
            self.ingest.ingest_with_retry(batches, self._stop_sender)
            self._processed += len(batches)
            self._wake.set()

    # ---- control plane hooks ---------------------------------------------------------------
    def _model_info(self, bundle: Bundle) -> None:
        m = bundle.manifest
        self.metrics.model.info({"name": m.name, "version": str(m.version), "sha256": m.sha256})

    def _model_in_use(self, bundle: Bundle) -> None:
        self._model_info(bundle)
        self.control.request_report()  # report what is now in effect

    def apply_settings(self, plan: SettingsPlan) -> None:
        """Apply a validated control-plane plan; model and threshold changes take effect between batches."""
        if not isinstance(plan.model, Unchanged):
            self.slot.offer(*plan.model)
        if not isinstance(plan.threshold, Unchanged):
            self.slot.set_threshold(plan.threshold)
        if not isinstance(plan.batch_size, Unchanged):
            self._batch_limit = plan.batch_size
        if not isinstance(plan.linger_ms, Unchanged):
            self._linger_s = plan.linger_ms / 1000
        if not isinstance(plan.send_rate, Unchanged):
            self.bucket.set_rate(plan.send_rate)
        if not isinstance(plan.log_level, Unchanged):
            self.log.setLevel(plan.log_level.upper())

    def flush_now(self) -> dict[str, int]:
        """Send what is pending without waiting for the token bucket to refill; returns what is pending."""
        self.bucket.fill()
        self._wake.set()
        st = self.outbox.stats()
        return {"pending_readings": st.readings, "pending_segments": st.segments}

    # ---- sender ----------------------------------------------------------------------------
    def _run_sender(self) -> None:
        self.sender.run(self._stop_sender, self._wake)

    def _set_error(self, error: str) -> None:
        self.last_error = error

    def _count_evicted(self, evicted: dict[str, int]) -> None:
        for reason, n in evicted.items():
            self.metrics.dropped.labels(reason=reason).inc(n)
        self.outbox_component.discarded(evicted)
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
        m = self.slot.bundle.manifest
        snap = self.metrics.snapshot()
        snap["dropped_total"] = self.outbox.drops()
        return {"agent_version": VERSION,
                "model": {"name": m.name, "version": m.version, "sha256": m.sha256,
                          "threshold": self.slot.threshold},
                "config": {"batch_size": self._batch_limit, "linger_ms": round(self._linger_s * 1000, 3),
                           "send_rate": self.bucket.rate,
                           "log_level": logging.getLevelName(self.log.level).lower(),
                           "threshold": self.slot.threshold},
                "last_error": self.last_error,
                "outbox_disk_full": bool(getattr(self.outbox, "disk_full", False)), **snap}
