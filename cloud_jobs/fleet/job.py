"""The fleet aggregation job: `main(config)` wires the transforms to the I/O and runs the queries.

Two streaming stages, each with its own checkpoint under ``<checkpoint>/``:

1. ``silver``: input -> parse -> dedup within the watermark -> foreachBatch: silver and quarantine
   tables (one idempotent write each per micro-batch).
2. ``gold_<w>`` for every window spec: silver (file stream) -> event-time windows per device and
   channel (append mode: a window is emitted once, when the watermark passes its end) ->
   foreachBatch: gold_device_<w>, gold_fleet_<w>, and for the first spec the incident tracker.

``trigger=available-now`` runs stage 1 to the end of the input, then each gold stage to the end of
silver, and returns (a scheduled job; the cluster is off in between). ``processing-time=…`` runs all
stages together until stopped. Same code, same checkpoints: a job can switch between the two.

How the last windows of an available-now run close: a window is final when the watermark (the
largest event time seen, minus ``watermark_s``) passes its end. Windows newer than that stay in the
checkpointed state and are emitted by the next run, once newer data moves the watermark; no window
is emitted twice and none is lost (tests/cloud_jobs/test_fleet_job.py runs several scheduled runs).
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
from cloud_jobs.config import AggregateConfig, InputFormat
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
    late: int = 0            # Spark's numRowsDroppedByWatermark (silver: whole messages; gold: readings)
    late_readings: int = 0   # readings of partly late messages, dropped by the dedup operator
    windows: int = 0
    incidents: int = 0
    duration_ms: int = 0

    def line(self) -> str:
        return (f"{self.query:<10} batch {self.batch_id:>4}: {self.rows_in:>9,} rows in, {self.readings:>9,} readings, "
                f"{self.quarantined:>5,} quarantined, {self.late:>5,} late (numRowsDroppedByWatermark)"
                + (f" + {self.late_readings:,} late readings" if self.late_readings else "")
                + f", {self.windows:>6,} windows, "
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
        if st.rows_in or st.windows or st.late or st.late_readings or st.incidents:
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


def _silver_query(spark: Any, cfg: AggregateConfig, progress: _Progress) -> Any:
    import pyarrow.compute as pc

    raw = io.read_input(spark, cfg.input, streaming=True)
    deduped = T.dedup(T.parse(raw, ENVELOPES[cfg.input.format]), cfg.watermark_s)

    def write(batch: Any, batch_id: int) -> None:
        import pyarrow.parquet as pq

        st = progress.stats("silver", batch_id)
        cols = list(dict.fromkeys([*T.SILVER_COLUMNS, *T.QUARANTINE_COLUMNS, "late", "status"]))
        written = io.write_split(batch.select(*cols), "status",
                                 {"ok": cfg.table("silver"), "quarantined": cfg.table("quarantine")},
                                 cfg.table_format, batch_id, "silver")
        st.readings = io.parquet_rows(written["ok"]) if "ok" in written else 0
        st.quarantined = io.parquet_rows(written["quarantined"]) if "quarantined" in written else 0
        if "late" in written:
            st.late_readings = sum(int(pc.sum(pq.read_table(f, columns=["late"])["late"]).as_py() or 0)
                                   for f in written["late"].glob("*.parquet"))

    return (deduped.writeStream.queryName("silver").foreachBatch(write)
            .option("checkpointLocation", f"{cfg.checkpoint_root}/silver")
            .trigger(**cfg.trigger.spark_args()).start())


def _gold_query(spark: Any, cfg: AggregateConfig, index: int, progress: _Progress,
                incidents: IncidentLog | None, report: JobReport) -> Any:
    spec = cfg.windows[index]
    name = f"gold_{spec.name}"
    silver_schema = _silver_schema(spark, cfg)
    src = io.read_table(spark, cfg.table("silver"), silver_schema, cfg.table_format, streaming=True)
    windows = T.device_windows(src, spec, cfg.watermark_s)
    rate = cfg.incidents.device_anomaly_rate

    def write(batch: Any, batch_id: int) -> None:
        batch.persist()
        try:
            st = progress.stats(name, batch_id)
            st.windows = batch.count()
            if st.windows:
                io.write_batch(batch, cfg.table(f"gold_device_{spec.name}"), cfg.table_format, batch_id,
                               f"edgeflag-{name}-device")
                io.write_batch(T.fleet_windows(batch, rate), cfg.table(f"gold_fleet_{spec.name}"), cfg.table_format,
                               batch_id, f"edgeflag-{name}-fleet")
            if incidents is not None:
                rows = T.type_windows(batch, rate).collect() if st.windows else []
                def table(events: list[dict[str, Any]]) -> None:
                    df = spark.createDataFrame([{k: ev.get(k) for k in INCIDENT_COLUMNS} for ev in events],
                                               INCIDENT_DDL)
                    io.write_batch(df, cfg.table("incidents"), cfg.table_format, batch_id, "edgeflag-incidents")

                events = incidents.process(batch_id, [
                    TypeWindow(_utc(r["start_ms"]), _utc(r["end_ms"]), r["device_type"], r["devices_reporting"],
                               tuple(d for d in r["anomalous_devices"] if d)) for r in rows], table)
                if events:
                    st.incidents = len(events)
                    report.incident_events.extend(events)
                    for ev in events:
                        log.warning("fleet incident %s %s: %s, %d devices (%s)", ev["incident_id"], ev["event"],
                                    ev["device_type"], len(ev["devices"]), ", ".join(ev["devices"][:8]))
        finally:
            batch.unpersist()

    return (windows.writeStream.queryName(name).outputMode("append").foreachBatch(write)
            .option("checkpointLocation", f"{cfg.checkpoint_root}/{name}")
            .trigger(**cfg.trigger.spark_args()).start())


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _silver_schema(spark: Any, cfg: AggregateConfig) -> Any:
    from pyspark.sql.types import StructType

    return StructType.fromDDL(T.SILVER_DDL)


def main(config: AggregateConfig, *, spark: Any = None, on_batch: Callable[[BatchStats], None] | None = None,
         stop: threading.Event | None = None) -> JobReport:
    """Run the aggregation; returns when an available-now run is done, or when `stop` is set."""
    from cloud_jobs.spark import get_spark

    spark = spark or get_spark()
    report = JobReport()
    progress = _Progress(report, on_batch or (lambda st: log.info("%s", st.line())))
    listener = _listen(spark, progress)
    incidents = IncidentLog(Path(config.out), config.incidents)
    try:
        if config.trigger.available_now:
            _silver_query(spark, config, progress).awaitTermination()
            for i in range(len(config.windows)):
                _gold_query(spark, config, i, progress, incidents if i == 0 else None, report).awaitTermination()
        else:
            queries = [_silver_query(spark, config, progress)] + [
                _gold_query(spark, config, i, progress, incidents if i == 0 else None, report)
                for i in range(len(config.windows))]
            stop = stop or threading.Event()
            while not stop.wait(0.5):
                for q in queries:
                    if not q.isActive:
                        exc = q.exception()
                        stop.set()
                        if exc is not None:
                            raise RuntimeError(f"query {q.name} failed: {exc}")
            for q in queries:
                q.stop()
        time.sleep(0.2)  # the listener's last progress events
    finally:
        spark.streams.removeListener(listener)
    return report
