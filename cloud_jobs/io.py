"""Every read and write of the Spark jobs; transforms never touch storage.

Inputs come out in one shape, ``INPUT_DDL`` of `cloud_jobs.fleet.parse` (raw bytes, authenticated
device, receive time, properties), so one parser serves them all. `streaming=True` gives a streaming
DataFrame, else a batch one, from the same options.

Writes are per micro-batch and idempotent, so a batch that Spark replays after a crash lands once:
- Parquet (local): the batch is written to a hidden staging directory, then renamed to
  ``<table>/batch_id=<n>/`` in one atomic step; a replayed batch whose directory exists is skipped.
  Readers (and the downstream file-stream sources) see a batch whole or not at all.
- Delta (Databricks): an append with ``txnAppId``/``txnVersion`` (Delta's idempotent writes in
  foreachBatch). The Delta jar is not on this machine: that path is built and unit-tested for its
  options, and runs on Databricks.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cloud_jobs.config import EventHubsConfig, InputConfig, InputFormat, TableFormat

#: Kafka headers IoT Hub puts on each event routed to Event Hubs.
DEVICE_HEADER = "iothub-connection-device-id"


def eventhubs_options(cfg: EventHubsConfig) -> dict[str, str]:
    """Spark Kafka source options for an Event Hubs namespace (Kafka endpoint on port 9093).

    SASL_SSL with the PLAIN mechanism, username ``$ConnectionString`` and the connection string as
    password, as Event Hubs documents; on Databricks the Kafka client is shaded, so the JAAS login
    module is ``kafkashaded.org.apache.kafka…``. Headers are included: IoT Hub sends the device id
    and the application properties as record headers.
    """
    module = "org.apache.kafka.common.security.plain.PlainLoginModule"
    if cfg.databricks:
        module = "kafkashaded." + module
    secret = cfg.connection_string.replace('"', '\\"')
    opts = {
        "kafka.bootstrap.servers": f"{cfg.namespace}.servicebus.windows.net:9093",
        "subscribe": cfg.event_hub,
        "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "PLAIN",
        "kafka.sasl.jaas.config": f'{module} required username="$ConnectionString" password="{secret}";',
        "kafka.group.id": cfg.consumer_group,
        "kafka.request.timeout.ms": "60000",
        "kafka.session.timeout.ms": "30000",
        "startingOffsets": cfg.starting_offsets,
        "failOnDataLoss": "false",
        "includeHeaders": "true",
    }
    if cfg.max_offsets_per_trigger:
        opts["maxOffsetsPerTrigger"] = str(cfg.max_offsets_per_trigger)
    return opts


def delta_write_options(app_id: str, batch_id: int) -> dict[str, str]:
    """Options that make a Delta append in foreachBatch idempotent (a replayed batch is skipped)."""
    return {"txnAppId": app_id, "txnVersion": str(batch_id)}


def read_input(spark: Any, cfg: InputConfig, *, streaming: bool) -> Any:
    """The input as INPUT_DDL columns (streaming or batch)."""
    from pyspark.sql import functions as F

    if cfg.format is InputFormat.EVENTHUBS:
        assert cfg.eventhubs is not None
        reader = spark.readStream if streaming else spark.read
        df = reader.format("kafka").options(**eventhubs_options(cfg.eventhubs)).load()
        headers = F.map_from_entries(F.expr("transform(headers, h -> struct(h.key, cast(h.value as string)))"))
        return df.select(
            F.col("value").alias("raw"),
            headers[DEVICE_HEADER].alias("source_device"),
            (F.unix_millis(F.col("timestamp"))).alias("received_ms"),
            headers.alias("properties"),
        )
    if streaming:
        df = (spark.readStream.format("text").option("maxFilesPerTrigger", cfg.max_files_per_trigger)
              .option("recursiveFileLookup", "true").option("pathGlobFilter", "*.json*").load(cfg.path))
    else:
        df = (spark.read.format("text").option("recursiveFileLookup", "true")
              .option("pathGlobFilter", "*.json*").load(cfg.path))
    return df.select(
        F.col("value").cast("binary").alias("raw"),
        F.lit(None).cast("string").alias("source_device"),
        F.lit(None).cast("long").alias("received_ms"),
        F.lit(None).cast("map<string,string>").alias("properties"),
    )


def read_table(spark: Any, path: str, schema: Any, fmt: TableFormat, *, streaming: bool,
               max_files_per_trigger: int = 1000) -> Any:
    """A table written by `write_batch`, as a stream (new batches as they land) or in full."""
    if fmt is TableFormat.DELTA:
        reader = spark.readStream if streaming else spark.read
        return reader.format("delta").load(path)
    if streaming:
        Path(path).mkdir(parents=True, exist_ok=True)
        return (spark.readStream.schema(schema).option("maxFilesPerTrigger", max_files_per_trigger)
                .parquet(path))
    return spark.read.schema(schema).parquet(path) if _has_data(path) else spark.createDataFrame([], schema)


def _has_data(path: str) -> bool:
    p = Path(path)
    return p.exists() and any(d.name.startswith("batch_id=") for d in p.iterdir())


def write_split(df: Any, column: str, targets: dict[str, str], fmt: TableFormat, batch_id: int,
                app_id: str) -> dict[str, Path]:
    """Write one micro-batch split by `column` into several tables (value -> table path) exactly once.

    Parquet: ONE Spark write partitioned by `column` into a hidden staging directory, then each value's
    directory is renamed to ``<table>/batch_id=<n>/`` (values not in `targets` stay behind in the
    returned directories for the caller to read until the next batch, which deletes them). Delta: one
    idempotent append per target. Returns value -> directory written this time. The tables share one
    schema: each holds every column of `df` but `column`, null where it does not apply.
    """
    from pyspark.sql import functions as F

    if fmt is TableFormat.DELTA:
        for value, path in targets.items():
            write_batch(df.where(F.col(column) == value), path, fmt, batch_id, f"{app_id}-{value}")
        return {}
    import shutil

    staging = Path(next(iter(targets.values()))).parent / "_staging"
    for old in staging.glob(f"{app_id}-*"):  # earlier batches' leftovers (values not in targets)
        shutil.rmtree(old, ignore_errors=True)
    root = staging / f"{app_id}-{batch_id}"
    pending = {v: p for v, p in targets.items() if not (Path(p) / f"batch_id={batch_id}").exists()}
    if not pending:
        return {}
    df.write.partitionBy(column).mode("overwrite").parquet(str(root))
    out: dict[str, Path] = {}
    for part in root.glob(f"{column}=*"):
        value = part.name.split("=", 1)[1]
        for junk in [*part.glob(".*.crc"), *part.glob("_*")]:
            junk.unlink()
        if value in pending:
            final = Path(pending[value]) / f"batch_id={batch_id}"
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(part, final)
            out[value] = final
        elif value not in targets:
            out[value] = part
    return out


def parquet_rows(directory: Path) -> int:
    """Rows in the Parquet files of a directory, from their footers (no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in directory.glob("*.parquet"))


def write_batch(df: Any, path: str, fmt: TableFormat, batch_id: int, app_id: str) -> bool:
    """Append one micro-batch to a table exactly once; False if this batch had already landed. Either
    format gets a ``batch_id`` column (Parquet: the partition directory; Delta: a column)."""
    if fmt is TableFormat.DELTA:
        from pyspark.sql import functions as F

        (df.withColumn("batch_id", F.lit(batch_id)).write.format("delta").mode("append")
         .options(**delta_write_options(app_id, batch_id)).save(path))
        return True

    def spark_write(staging: Path) -> None:
        df.write.mode("overwrite").parquet(str(staging))
        for junk in staging.glob("_*"):  # _SUCCESS: the rename is the commit
            junk.unlink()
        for crc in staging.glob(".*.crc"):
            crc.unlink()

    return _staged(path, batch_id, spark_write)


def write_arrow_batch(table: Any, path: str, batch_id: int) -> bool:
    """`write_batch` for a pyarrow Table written on the driver (Parquet only): one file, exactly once;
    False if this batch had already landed."""
    import pyarrow.parquet as pq

    def arrow_write(staging: Path) -> None:
        staging.mkdir(parents=True)
        pq.write_table(table, staging / f"part-00000-{uuid.uuid4()}.parquet", compression="snappy")

    return _staged(path, batch_id, arrow_write)


def _staged(path: str, batch_id: int, write: Callable[[Path], None]) -> bool:
    """The Parquet commit of one micro-batch: `write` fills a hidden staging directory, which is renamed
    to ``<path>/batch_id=<n>/`` (the rename is the commit); False, writing nothing, if it is there already."""
    final = Path(path) / f"batch_id={batch_id}"
    if final.exists():
        return False
    staging = Path(path) / "_staging" / f"{batch_id}-{uuid.uuid4().hex[:8]}"
    write(staging)
    os.rename(staging, final)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # only when no other batch is being staged
    return True


def read_batch(spark: Any, path: str, schema: Any, fmt: TableFormat, batch_id: int) -> Any:
    """The rows one micro-batch wrote to a table (empty if it wrote none), without the batch_id column."""
    from pyspark.sql import functions as F

    if fmt is TableFormat.DELTA:
        return spark.read.format("delta").load(path).where(F.col("batch_id") == batch_id).drop("batch_id")
    d = Path(path) / f"batch_id={batch_id}"
    return spark.read.schema(schema).parquet(str(d)) if d.exists() else spark.createDataFrame([], schema)


def batch_max_ms(spark: Any, path: str, fmt: TableFormat, batch_id: int, column: str) -> int | None:
    """The largest value of timestamp `column` in one micro-batch of a table, in epoch ms (None: no rows).
    Parquet: read from the batch's files alone, with no Spark job."""
    if fmt is TableFormat.DELTA:
        from pyspark.sql import functions as F

        rows = (spark.read.format("delta").load(path).where(F.col("batch_id") == batch_id)
                .agg(F.max(F.unix_millis(column))).first())
        return None if rows is None or rows[0] is None else int(rows[0])
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    best: int | None = None
    for f in (Path(path) / f"batch_id={batch_id}").glob("*.parquet"):
        col = pq.read_table(f, columns=[column])[column]
        if len(col) and col.null_count < len(col):
            v = pc.max(pc.cast(col, pa.timestamp("ms"), safe=False)).value  # sub-ms truncated, never an error
            best = v if best is None else max(best, v)
    return best


def batch_rows(spark: Any, path: str, fmt: TableFormat, batch_id: int) -> int:
    """Rows one micro-batch wrote to a table (Parquet: from the file footers, no Spark job)."""
    if fmt is TableFormat.DELTA:
        from pyspark.sql import functions as F

        return int(spark.read.format("delta").load(path).where(F.col("batch_id") == batch_id).count())
    return parquet_rows(Path(path) / f"batch_id={batch_id}")


def batch_arrow(path: str, fmt: TableFormat, batch_id: int, columns: Iterable[str]) -> Any:
    """The given columns of what one micro-batch wrote to a Parquet table, read on the driver as one
    pyarrow Table (no Spark job); None for Delta, whose files only its log can tell apart, and when the
    batch wrote no file."""
    if fmt is TableFormat.DELTA:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((Path(path) / f"batch_id={batch_id}").glob("*.parquet"))
    tables = [pq.read_table(f, columns=list(columns)) for f in files]
    return pa.concat_tables(tables) if tables else None


class PaneStore:
    """The gold stage's state between micro-batches, under the checkpoint: the kept panes of batch N
    (Parquet, ``batch_id=<N>/``, written by `write_batch`) and the largest event time seen up to N
    (``_meta/<N>.json``, written after the panes, so a batch with meta is whole).

    A batch reads the newest state before its own id, so a batch Spark replays after a crash starts
    from the same state as its first attempt and writes the same outputs; states older than that one
    are deleted as new ones land. Always Parquet and JSON: it is the job's checkpoint, not a table.
    """

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.meta = self.root / "_meta"

    def _ids(self) -> list[int]:
        if not self.meta.exists():
            return []
        return sorted(int(p.stem) for p in self.meta.glob("*.json") if p.stem.isdigit())

    def previous(self, batch_id: int) -> tuple[int | None, int | None]:
        """(id, largest event time in epoch ms) of the newest state before `batch_id`, or (None, None)."""
        import json

        ids = [i for i in self._ids() if i < batch_id]
        if not ids:
            return None, None
        return ids[-1], int(json.loads((self.meta / f"{ids[-1]}.json").read_text())["max_event_ms"])

    def read(self, spark: Any, state_id: int | None, schema: Any) -> Any:
        if state_id is None:
            return spark.createDataFrame([], schema)
        return read_batch(spark, str(self.root), schema, TableFormat.PARQUET, state_id)

    def commit(self, panes: Any, batch_id: int, max_event_ms: int, previous_id: int | None) -> None:
        import json
        import shutil

        write_batch(panes, str(self.root), TableFormat.PARQUET, batch_id, "edgeflag-panes")
        self.meta.mkdir(parents=True, exist_ok=True)
        tmp = self.meta / f".{batch_id}.json.tmp"
        tmp.write_text(json.dumps({"max_event_ms": max_event_ms}))
        os.replace(tmp, self.meta / f"{batch_id}.json")
        for old in self._ids():
            if previous_id is not None and old < previous_id:
                shutil.rmtree(self.root / f"batch_id={old}", ignore_errors=True)
                (self.meta / f"{old}.json").unlink(missing_ok=True)
