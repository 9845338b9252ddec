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
    """Append one micro-batch to a table exactly once; False if this batch had already landed."""
    if fmt is TableFormat.DELTA:
        df.write.format("delta").mode("append").options(**delta_write_options(app_id, batch_id)).save(path)
        return True
    final = Path(path) / f"batch_id={batch_id}"
    if final.exists():
        return False
    staging = Path(path) / "_staging" / f"{batch_id}-{uuid.uuid4().hex[:8]}"
    df.write.mode("overwrite").parquet(str(staging))
    for junk in staging.glob("_*"):  # _SUCCESS: the rename below is the commit
        junk.unlink()
    for crc in staging.glob(".*.crc"):
        crc.unlink()
    os.rename(staging, final)
    with contextlib.suppress(OSError):
        staging.parent.rmdir()  # only when no other batch is being staged
    return True
