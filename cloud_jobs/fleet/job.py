"""The fleet aggregation job: `main(config)` wires the transforms to the I/O and runs the query.

One streaming query (checkpoint ``<checkpoint>/silver``): input -> parse -> dedup within the watermark
-> foreachBatch, which for each micro-batch

1. writes the silver, quarantine and events tables (one idempotent write; `events` holds the agents'
   anomaly event announcements, `contracts.events`, kind in ``reason`` and the event in ``raw``, and the
   progress line counts the events opened: one per event, not one per flagged reading);
2. turns the batch's silver rows into panes (`cloud_jobs.fleet.panes`), merges them with the panes
   kept from the batches before (``<checkpoint>/panes``), advances the watermark (largest event time
   seen minus ``watermark_s``) and emits every window that the watermark closed: gold_device_<w>,
   gold_fleet_<w>, and for the first spec the incident tracker. With Parquet tables the last two are
   computed on the driver from the gold_device files just written (`transforms.fleet_windows_arrow`,
   `type_windows_arrow`: no Spark job for them); with Delta, in Spark from the closed windows.

A window is emitted by the micro-batch whose data closes it, with no second query re-reading silver
and no extra no-data batch (measured in docs/benchmarks.md; it was two chained streaming stages).

``trigger=available-now`` runs the query to the end of the input and returns (a scheduled job; the
cluster is off in between). ``processing-time=…`` runs it until stopped. Same code, same checkpoint:
a job can switch between the two.

How the last windows of an available-now run close: a window is final when the watermark passes its
end. Windows newer than that stay in the kept panes and are emitted by the next run, once newer data
moves the watermark; no window is emitted twice and none is lost (tests/cloud_jobs/test_fleet_job.py
runs several scheduled runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cloud_jobs import io
from cloud_jobs.config import AggregateConfig, InputFormat, TableFormat, WindowSpec
from cloud_jobs.fleet import panes as P
from cloud_jobs.fleet import transforms as T
from cloud_jobs.fleet.incidents import IncidentLog, TypeWindow
from cloud_jobs.fleet.parse import Envelope

log = logging.getLogger("edgeflag.cloud.fleet")

INCIDENT_DDL = ("incident_id string, event string, status string, device_type string, version int, "
                "opened_at string, last_window_end string, closed_at string, windows int, devices array<string>, "
                "peak_devices_anomalous int, peak_fraction double")
INCIDENT_COLUMNS = [c.split()[0] for c in INCIDENT_DDL.split(", ")]
ENVELOPES = {InputFormat.BRONZE: Envelope.BRONZE, InputFormat.IOTHUB: Envelope.IOTHUB,
             InputFormat.EVENTHUBS: Envelope.RAW}


@dataclass
class BatchStats:
    """What one micro-batch of one stage did (the progress line)."""

    query: str
    batch_id: int
    rows_in: int = 0
    readings: int = 0
    quarantined: int = 0
    late: int = 0            # Spark's numRowsDroppedByWatermark: whole messages behind the watermark
    late_readings: int = 0   # readings of partly late messages, dropped by the dedup operator
    windows: int = 0
    incidents: int = 0
    events: int = 0          # anomaly event announcements (open, update, close) from the agents
    events_opened: int = 0   # of which openings: the events, counted once each
    duration_ms: int = 0

    def line(self) -> str:
        return (f"{self.query:<10} batch {self.batch_id:>4}: {self.rows_in:>9,} rows in, {self.readings:>9,} readings, "
                f"{self.quarantined:>5,} quarantined, {self.late:>5,} late (numRowsDroppedByWatermark)"
                + (f" + {self.late_readings:,} late readings" if self.late_readings else "")
                + f", {self.events_opened:,} anomaly events opened, {self.windows:>6,} windows, "
                f"{self.incidents} incident events ({self.duration_ms / 1000:.1f} s)")


@dataclass
class JobReport:
    """Totals of one `main` call, per stage and overall."""

    batches: list[BatchStats] = field(default_factory=list)
    incident_events: list[dict[str, Any]] = field(default_factory=list)

    def total(self, attr: str, query: str | None = None) -> int:
        return sum(getattr(b, attr) for b in self.batches if query is None or b.query == query)


class _Progress:
    """Joins what foreachBatch counted with Spark's progress (rows in, rows late) into one line per batch."""

    def __init__(self, report: JobReport, emit: Callable[[BatchStats], None]) -> None:
        self.report, self.emit = report, emit
        self.pending: dict[tuple[str, int], BatchStats] = {}
        self.lock = threading.Lock()

    def stats(self, query: str, batch_id: int) -> BatchStats:
        with self.lock:
            return self.pending.setdefault((query, batch_id), BatchStats(query, batch_id))

    def on_progress(self, p: Any) -> None:
        name = p["name"] or "?"
        st = self.stats(name, int(p["batchId"]))
        st.rows_in = int(p.get("numInputRows") or 0)
        st.late = sum(int(op.get("numRowsDroppedByWatermark") or 0) for op in p.get("stateOperators") or [])
        st.duration_ms = int((p.get("durationMs") or {}).get("triggerExecution") or 0)
        with self.lock:
            self.pending.pop((name, st.batch_id), None)
        if st.rows_in or st.windows or st.late or st.late_readings or st.incidents or st.events:
            self.report.batches.append(st)
            self.emit(st)


def _listen(spark: Any, progress: _Progress) -> Any:
    import json

    from pyspark.sql.streaming.listener import StreamingQueryListener

    class Listener(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            pass

        def onQueryProgress(self, event: Any) -> None:
            progress.on_progress(json.loads(event.progress.json))

        def onQueryIdle(self, event: Any) -> None:
            pass

        def onQueryTerminated(self, event: Any) -> None:
            pass

    listener = Listener()
    spark.streams.addListener(listener)
    return listener


def _query(spark: Any, cfg: AggregateConfig, progress: _Progress, incidents: IncidentLog,
           report: JobReport) -> Any:
    import pyarrow.compute as pc

    raw = io.read_input(spark, cfg.input, streaming=True)
    deduped = T.dedup(T.parse(raw, ENVELOPES[cfg.input.format]), cfg.watermark_s)
    gold = _Gold(spark, cfg, incidents, report)

    def write(batch: Any, batch_id: int) -> None:
        import pyarrow.parquet as pq

        st = progress.stats("silver", batch_id)
        cols = list(dict.fromkeys([*T.SILVER_COLUMNS, *T.QUARANTINE_COLUMNS, "late", "status"]))
        written = io.write_split(batch.select(*cols), "status",
                                 {"ok": cfg.table("silver"), "quarantined": cfg.table("quarantine"),
                                  "event": cfg.table("events")},
                                 cfg.table_format, batch_id, "silver")
        st.readings = io.parquet_rows(written["ok"]) if "ok" in written else 0
        st.quarantined = io.parquet_rows(written["quarantined"]) if "quarantined" in written else 0
        if "event" in written:  # the agents' anomaly events: counted as events, not as flagged readings
            kinds = [pq.read_table(f, columns=["reason"])["reason"] for f in written["event"].glob("*.parquet")]
            st.events = sum(len(k) for k in kinds)
            st.events_opened = sum(int(pc.sum(pc.equal(k, "open")).as_py() or 0) for k in kinds)
        if "late" in written:
            st.late_readings = sum(int(pc.sum(pq.read_table(f, columns=["late"])["late"]).as_py() or 0)
                                   for f in written["late"].glob("*.parquet"))
        gold.step(batch_id, st)

    return (deduped.writeStream.queryName("silver").foreachBatch(write)
            .option("checkpointLocation", f"{cfg.checkpoint_root}/silver")
            .trigger(**cfg.trigger.spark_args()).start())


class _Gold:
    """The gold stage of one micro-batch: panes in, closed windows out (see the module docstring)."""

    def __init__(self, spark: Any, cfg: AggregateConfig, incidents: IncidentLog, report: JobReport) -> None:
        from pyspark.sql.types import StructType

        self.spark, self.cfg, self.incidents, self.report = spark, cfg, incidents, report
        self.store = io.PaneStore(f"{cfg.checkpoint_root}/panes")
        self.granule = P.granule_s(cfg.windows)
        self.silver_schema = StructType.fromDDL(T.SILVER_DDL.removesuffix(", batch_id int"))
        self.pane_schema = StructType.fromDDL(P.PANE_DDL)

    def step(self, batch_id: int, st: BatchStats) -> None:
        cfg = self.cfg
        newest = io.batch_max_ms(self.spark, cfg.table("silver"), cfg.table_format, batch_id, "event_time")
        if newest is None:
            return  # no readings: the watermark stays, nothing closes
        silver = io.read_batch(self.spark, cfg.table("silver"), self.silver_schema, cfg.table_format, batch_id)
        prev_id, prev_max = self.store.previous(batch_id)
        max_ms = newest if prev_max is None else max(prev_max, newest)
        kept = self.store.read(self.spark, prev_id, self.pane_schema)
        merged = P.merge(kept.unionByName(P.readings_as_panes(silver, self.granule))).persist()
        try:
            before = None if prev_max is None else prev_max - cfg.watermark_s * 1000
            after = max_ms - cfg.watermark_s * 1000
            if before != after:
                for i, spec in enumerate(cfg.windows):
                    closed = P.windows(merged, spec, before, after, granule=self.granule)
                    if cfg.table_format is TableFormat.DELTA:  # read again for the fleet and type windows
                        closed = closed.persist()
                    try:
                        st.windows += self._emit(closed, spec, batch_id, st if i == 0 else None)
                    finally:
                        closed.unpersist()
            self.store.commit(P.still_needed(merged, cfg.windows, after), batch_id, max_ms, prev_id)
        finally:
            merged.unpersist()

    def _emit(self, closed: Any, spec: WindowSpec, batch_id: int, st: BatchStats | None) -> int:
        """Writes the closed windows of one spec (every table, even when empty: one Spark job fewer than
        asking first) and, for the incident spec, feeds the tracker; returns the window rows."""
        cfg, rate = self.cfg, self.cfg.incidents.device_anomaly_rate
        device_table = cfg.table(f"gold_device_{spec.name}")
        io.write_batch(closed, device_table, cfg.table_format, batch_id, f"edgeflag-gold_{spec.name}-device")
        # Parquet: the fleet and type windows from the gold_device files just written, on the driver (two
        # Spark jobs fewer per micro-batch); Delta (`written` None): in Spark, from the closed windows.
        written = io.batch_arrow(device_table, cfg.table_format, batch_id, T.GOLD_DEVICE_INPUTS)
        n = written.num_rows if written is not None else io.batch_rows(self.spark, device_table, cfg.table_format,
                                                                        batch_id)
        fleet_table = cfg.table(f"gold_fleet_{spec.name}")
        if n and written is not None:
            io.write_arrow_batch(T.fleet_windows_arrow(written, rate), fleet_table, batch_id)
        elif n:
            io.write_batch(T.fleet_windows(closed, rate), fleet_table, cfg.table_format, batch_id,
                           f"edgeflag-gold_{spec.name}-fleet")
        if st is None:
            return n
        rows: list[Any] = []
        if n:
            rows = (T.type_windows_arrow(written, rate) if written is not None
                    else T.type_windows(closed, rate).collect())

        def table(events: list[dict[str, Any]]) -> None:
            df = self.spark.createDataFrame([{k: ev.get(k) for k in INCIDENT_COLUMNS} for ev in events],
                                            INCIDENT_DDL)
            io.write_batch(df, cfg.table("incidents"), cfg.table_format, batch_id, "edgeflag-incidents")

        events = self.incidents.process(batch_id, [
            TypeWindow(_utc(r["start_ms"]), _utc(r["end_ms"]), r["device_type"], r["devices_reporting"],
                       tuple(d for d in r["anomalous_devices"] if d)) for r in rows], table)
        if events:
            st.incidents = len(events)
            self.report.incident_events.extend(events)
            for ev in events:
                log.warning("fleet incident %s %s: %s, %d devices (%s)", ev["incident_id"], ev["event"],
                            ev["device_type"], len(ev["devices"]), ", ".join(ev["devices"][:8]))
        return n


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def old_layout(config: AggregateConfig) -> str | None:
    """A warning when the checkpoint holds the two-query layout (gold_<w> queries, before December 2026)
    and no pane state yet: windows open in the old gold state are not carried over."""
    root = Path(config.checkpoint_root)
    old = sorted(p.name for p in root.glob("gold_*") if p.is_dir()) if root.exists() else []
    if not old or (root / "panes" / "_meta").exists():
        return None
    return (f"checkpoint {root} holds the old gold queries' state ({', '.join(old)}): gold windows are now built "
            f"in the silver query from panes, which start empty, so windows that were still open there are "
            f"emitted from new data only, and windows already emitted may be emitted again. Start gold tables "
            f"from a new --out to avoid the seam.")


def _stop_between_batches(query: Any, timeout_s: float = 60.0) -> None:
    """Stop a running query once no micro-batch is in flight (waiting at most `timeout_s`).

    Stopping mid-batch is safe (the batch is replayed from the checkpoint on the next start) but interrupts
    its Python workers, and Spark then logs a StackOverflowError from matching the interrupted worker's
    long error text in the stream thread (seen in the latency benchmark and the demo before December
    2026). A trigger may still start between the check and the stop; that batch is then replayed."""
    deadline = time.monotonic() + timeout_s
    while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
        time.sleep(0.05)
    query.stop()


def main(config: AggregateConfig, *, spark: Any = None, on_batch: Callable[[BatchStats], None] | None = None,
         stop: threading.Event | None = None) -> JobReport:
    """Run the aggregation; returns when an available-now run is done, or when `stop` is set."""
    from cloud_jobs.spark import get_spark

    spark = spark or get_spark()
    report = JobReport()
    progress = _Progress(report, on_batch or (lambda st: log.info("%s", st.line())))
    listener = _listen(spark, progress)
    incidents = IncidentLog(Path(config.out), config.incidents)
    warning = old_layout(config)
    if warning:
        log.warning("%s", warning)
    try:
        query = _query(spark, config, progress, incidents, report)
        if config.trigger.available_now:
            query.awaitTermination()
        else:
            stop = stop or threading.Event()
            while not stop.wait(0.5):
                if not query.isActive:
                    exc = query.exception()
                    stop.set()
                    if exc is not None:
                        raise RuntimeError(f"query {query.name} failed: {exc}")
            _stop_between_batches(query)
        time.sleep(0.2)  # the listener's last progress events
    finally:
        spark.streams.removeListener(listener)
    return report
