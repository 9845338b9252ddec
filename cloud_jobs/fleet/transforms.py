"""The aggregation's transforms: pure DataFrame -> DataFrame functions, streaming or batch alike.

bronze input --parse--> messages --dedup--> --readings--> silver / quarantine --windows--> gold per device and channel
                                                        --fleet_windows--> gold per device type and model version
                                                        --type_windows--> what the incident tracker reads
"""

from __future__ import annotations

from typing import Any

from cloud_jobs.config import WindowSpec
from cloud_jobs.fleet.parse import MESSAGE_DDL, READING_ARRAYS_DDL, Envelope, parse_batches, unpack_batches

#: Dedup key of a reading: (k_source, k_device, k_boot, seq), i.e. sender, device, boot, seq. The
#: authenticated sender is part of it, so a device cannot suppress another's readings by naming it
#: in the body; a quarantined message dedups on its payload hash.

SILVER_COLUMNS = ("source_device", "device_id", "device_type", "boot_id", "seq", "event_time", "score", "anomaly",
                  "channels", "values", "model_name", "model_version", "model_sha256", "feature_hash", "threshold",
                  "received_at")
#: The silver table as stored (Parquet: one ``batch_id=<n>`` directory per micro-batch).
SILVER_DDL = ("source_device string, device_id string, device_type string, boot_id string, seq long, "
              "event_time timestamp, score double, anomaly boolean, channels array<string>, `values` array<double>, "
              "model_name string, model_version int, model_sha256 string, feature_hash string, threshold double, "
              "received_at timestamp, batch_id int")
QUARANTINE_COLUMNS = ("source_device", "received_at", "reason", "raw")


#: The columns the streaming dedup operator reads and writes (its keys first)...
OPERATOR_DDL = ("k_source string, k_device string, k_boot string, status string, reason string, raw string, "
                "msg_ms long, n int, readings binary")
OPERATOR_COLUMNS = (*(c.split()[0] for c in OPERATOR_DDL.split(", ")), "msg_time")
#: ... and the message's other columns, which ride through it untouched as one JSON text, `passengers`.
PASSENGERS_DDL = ", ".join(c for c in MESSAGE_DDL.split(", ") if c.split()[0] not in OPERATOR_COLUMNS)
PASSENGERS = tuple(c.split()[0] for c in PASSENGERS_DDL.split(", "))


def stream_id() -> Any:
    """The column naming a reading's device wherever readings are grouped per device (gold windows, fleet
    counts, incidents, retraining): the sender's id for a device's own readings, ``<sender>/<sensor>``
    for a sensor a gateway sends for. Two gateways may serve sensors of one name, and a sender cannot add
    readings to another sender's device by naming it in the body."""
    from pyspark.sql import functions as F

    return (F.when(F.col("source_device") == F.col("device_id"), F.col("device_id"))
            .otherwise(F.concat_ws("/", "source_device", "device_id")))


def parse(inputs: Any, envelope: Envelope) -> Any:
    """INPUT_DDL rows -> one row per message (MESSAGE_DDL) plus `msg_time`: its newest reading's event time,
    or a quarantined message's receive time; and the stream key `k_source`, `k_device`, `k_boot`."""
    from pyspark.sql import functions as F

    messages = inputs.mapInArrow(parse_batches(envelope), MESSAGE_DDL)
    # never the job's clock: a bad message in a backfill would move the watermark past all the older
    # readings after it. A message with no time at all (a torn line) has none and moves nothing.
    msg_ms = F.coalesce("last_ms", "received_ms")
    return messages.select(
        "*", msg_ms.alias("msg_ms"), F.timestamp_millis(msg_ms).alias("msg_time"),
        F.coalesce("source_device", F.lit("")).alias("k_source"),
        F.coalesce("device_id", F.lit("")).alias("k_device"),
        # a row without readings (quarantined, an anomaly event) dedups on its payload
        F.when(F.col("n") > 0, F.col("boot_id"))
        .otherwise(F.concat(F.lit("q:"), F.sha2("raw", 256))).alias("k_boot"),
    )


def dedup(messages: Any, watermark_s: int) -> Any:
    """Exactly-once by (sender, device, boot, seq). Streaming: `cloud_jobs.fleet.dedup` within the
    watermark (late readings come out as `status = "late"` rows carrying their count in `late`); batch:
    a plain dropDuplicates. Returns reading rows (`readings`) either way."""
    from pyspark.sql import functions as F

    from cloud_jobs.fleet.dedup import STATE_DDL, dedup_group

    if not messages.isStreaming:
        return readings(messages).dropDuplicates(["k_source", "k_device", "k_boot", "seq"])
    # The operator reads only what it decides on; every other column travels through it as one JSON
    # text (`PASSENGERS`) and is unpacked in the JVM afterwards. PySpark converts each group's rows to
    # pandas column by column, so the columns it carries are most of its cost per stream.
    narrow = messages.select(*OPERATOR_COLUMNS, F.to_json(F.struct(*PASSENGERS)).alias("passengers"))
    out_ddl = OPERATOR_DDL + ", passengers string, late long"
    columns = [c.split()[0].strip("`") for c in out_ddl.split(", ")]

    def run(key: tuple[Any, ...], frames: Any, state: Any) -> Any:
        return dedup_group(key, frames, state, columns)

    deduped = (narrow.withWatermark("msg_time", f"{watermark_s} seconds")
               .groupBy("k_source", "k_device", "k_boot")
               .applyInPandasWithState(run, out_ddl, STATE_DDL, "append", "EventTimeTimeout"))
    unpacked = deduped.select("*", F.from_json("passengers", PASSENGERS_DDL).alias("p")).select(
        *(c for c in columns if c != "passengers"), *(F.col(f"p.{c}").alias(c) for c in PASSENGERS))
    return readings(unpacked.withColumn("msg_time", F.timestamp_millis("msg_ms")))


def readings(messages: Any) -> Any:
    """Message rows -> one row per reading (quarantined and late rows stay one row, with null readings),
    with `event_time` (a quarantined row's is its receive time) and `received_at`."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    arrays = ("seq", "ts_ms", "score", "anomaly", "values")
    keep = [c for c in messages.columns if c not in ("n", "readings")]
    arrays_schema = StructType.fromDDL(READING_ARRAYS_DDL)
    assert isinstance(arrays_schema, StructType)
    schema = StructType([f for f in messages.schema.fields if f.name in keep] + arrays_schema.fields)
    messages = messages.mapInArrow(unpack_batches, schema)
    r = F.explode_outer(F.arrays_zip(*arrays)).alias("r")
    exploded = messages.select(*keep, r).select(*keep, *(F.col(f"r.{c}").alias(c) for c in arrays))
    # the job's clock only as a last resort for a table value, never for the watermark (see `parse`)
    received = F.coalesce(F.timestamp_millis(F.coalesce("received_ms", "msg_ms")), F.current_timestamp())
    return exploded.select(
        "*",
        F.when(F.col("status") == "ok", F.timestamp_millis("ts_ms")).otherwise(received).alias("event_time"),
        received.alias("received_at"),
    )


def silver(deduped: Any) -> Any:
    from pyspark.sql import functions as F

    return deduped.where(F.col("status") == "ok").select(*SILVER_COLUMNS)


def quarantine(deduped: Any) -> Any:
    from pyspark.sql import functions as F

    return deduped.where(F.col("status") == "quarantined").select(*QUARANTINE_COLUMNS)


def device_windows(silver_df: Any, spec: WindowSpec, watermark_s: int) -> Any:
    """Per window, device (`stream_id`) and channel: readings, anomalies, anomaly_rate, max_score, value
    mean/min/max."""
    from pyspark.sql import functions as F

    src = silver_df.withWatermark("event_time", f"{watermark_s} seconds") if silver_df.isStreaming else silver_df
    win = F.window("event_time", f"{spec.duration_s} seconds", f"{spec.slide_s} seconds")
    exploded = src.select(win.alias("window"), "device_type", "model_version", stream_id().alias("device_id"),
                          "anomaly", "score",
                          F.explode(F.arrays_zip("channels", "values")).alias("cv"))
    agg = exploded.groupBy("window", "device_type", "model_version", "device_id",
                           F.col("cv.channels").alias("channel")).agg(
        F.count(F.lit(1)).alias("readings"),
        F.sum(F.col("anomaly").cast("long")).alias("anomalies"),
        F.max("score").alias("max_score"),
        F.avg("cv.values").alias("mean"),
        F.min("cv.values").alias("min"),
        F.max("cv.values").alias("max"),
    )
    return agg.select(
        F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
        "device_type", "model_version", "device_id", "channel", "readings", "anomalies",
        (F.col("anomalies") / F.col("readings")).alias("anomaly_rate"), "max_score", "mean", "min", "max",
    )


#: The keys of a type window: every aggregation behind the fleet and type windows groups by these and more.
TYPE_WINDOW = ("window_start", "window_end", "device_type")


def _per_device(device_rows: Any, device_anomaly_rate: float, by_version: bool) -> Any:
    from pyspark.sql import functions as F

    keys = [*TYPE_WINDOW, "device_id"]
    # every channel row of a device carries the device's reading counts: take them once per version. No
    # repartition by the type window first: that saved two shuffles on a small local batch (which now takes
    # the driver path, `fleet_windows_arrow`), but sends all of a type's devices to one task on a cluster,
    # with no map-side partial aggregation.
    per_version = device_rows.groupBy(*keys, "model_version").agg(
        F.max("readings").alias("readings"), F.max("anomalies").alias("anomalies"),
        F.max("max_score").alias("max_score"))
    per_device = per_version if by_version else per_version.groupBy(*keys).agg(
        F.sum("readings").alias("readings"), F.sum("anomalies").alias("anomalies"),
        F.max("max_score").alias("max_score"))
    return per_device.withColumn("anomalous", F.col("anomalies") >= F.col("readings") * F.lit(device_anomaly_rate))


def fleet_windows(device_rows: Any, device_anomaly_rate: float) -> Any:
    """Per window, device type and model version: devices reporting and anomalous, fleet anomaly rates."""
    from pyspark.sql import functions as F

    d = _per_device(device_rows, device_anomaly_rate, by_version=True)
    return d.groupBy("window_start", "window_end", "device_type", "model_version").agg(
        F.count(F.lit(1)).alias("devices_reporting"),
        F.sum(F.col("anomalous").cast("int")).alias("devices_anomalous"),
        F.sum("readings").alias("readings"),
        F.sum("anomalies").alias("anomalies"),
        F.max("max_score").alias("max_score"),
    ).withColumns({
        "anomaly_rate": F.col("anomalies") / F.col("readings"),
        "anomalous_fraction": F.col("devices_anomalous") / F.col("devices_reporting"),
    })


def type_windows(device_rows: Any, device_anomaly_rate: float) -> Any:
    """Per window and device type (all model versions): what the incident tracker decides on.

    Window bounds are epoch milliseconds, so no time zone enters on the way to Python."""
    from pyspark.sql import functions as F

    d = _per_device(device_rows, device_anomaly_rate, by_version=False)
    return d.groupBy(*TYPE_WINDOW).agg(
        F.count(F.lit(1)).alias("devices_reporting"),
        F.sort_array(F.collect_list(F.when(F.col("anomalous"), F.col("device_id")))).alias("anomalous_devices"),
    ).select(F.unix_millis("window_start").alias("start_ms"), F.unix_millis("window_end").alias("end_ms"),
             "device_type", "devices_reporting", "anomalous_devices")


# The fleet and type windows on the driver, for the Parquet tables of a local job: a small micro-batch's
# gold_fleet write and type windows then cost a read of the gold_device files it just wrote, not two Spark
# jobs (docs/benchmarks.md). Spark's `fleet_windows` and `type_windows` stay the reference (Delta uses them);
# tests/cloud_jobs/test_panes.py holds these to the same rows and gold_fleet's schema.

#: The gold_device columns the driver-side versions read.
GOLD_DEVICE_INPUTS = (*TYPE_WINDOW, "device_id", "model_version", "readings", "anomalies", "max_score")
#: gold_fleet's schema, as `fleet_windows` gives it.
FLEET_DDL = ("window_start timestamp, window_end timestamp, device_type string, model_version int, "
             "devices_reporting bigint, devices_anomalous bigint, readings bigint, anomalies bigint, "
             "max_score double, anomaly_rate double, anomalous_fraction double")


def _per_device_arrow(device_rows: Any, device_anomaly_rate: float, by_version: bool) -> Any:
    """`_per_device` over a pyarrow Table of gold_device rows: one row per window, type, device (and
    version), its readings, anomalies and max score, and whether it is anomalous (null counts: null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = [*TYPE_WINDOW, "device_id"]
    t = device_rows.select(list(GOLD_DEVICE_INPUTS)).group_by([*keys, "model_version"], use_threads=False).aggregate(
        [("readings", "max"), ("anomalies", "max"), ("max_score", "max")])
    t = t.rename_columns({"readings_max": "readings", "anomalies_max": "anomalies", "max_score_max": "max_score"})
    if not by_version:
        t = t.group_by(keys, use_threads=False).aggregate(
            [("readings", "sum"), ("anomalies", "sum"), ("max_score", "max")]).rename_columns(
            {"readings_sum": "readings", "anomalies_sum": "anomalies", "max_score_max": "max_score"})
    threshold = pc.multiply(pc.cast(t["readings"], pa.float64()), device_anomaly_rate)
    return t.append_column("anomalous", pc.greater_equal(pc.cast(t["anomalies"], pa.float64()), threshold))


def fleet_windows_arrow(device_rows: Any, device_anomaly_rate: float) -> Any:
    """`fleet_windows` over a pyarrow Table of gold_device rows (at least `GOLD_DEVICE_INPUTS`): a pyarrow
    Table in `FLEET_DDL`'s columns and types."""
    import pyarrow as pa
    import pyarrow.compute as pc

    d = _per_device_arrow(device_rows, device_anomaly_rate, by_version=True)
    d = d.append_column("anomalous_n", pc.cast(d["anomalous"], pa.int64()))
    g = d.group_by([*TYPE_WINDOW, "model_version"], use_threads=False).aggregate([
        ("device_id", "count", pc.CountOptions(mode="all")), ("anomalous_n", "sum"), ("readings", "sum"),
        ("anomalies", "sum"), ("max_score", "max")])
    f64 = pa.float64()
    g = g.rename_columns({"device_id_count": "devices_reporting", "anomalous_n_sum": "devices_anomalous",
                          "readings_sum": "readings", "anomalies_sum": "anomalies", "max_score_max": "max_score"})
    g = g.append_column("anomaly_rate", pc.divide(pc.cast(g["anomalies"], f64), pc.cast(g["readings"], f64)))
    g = g.append_column("anomalous_fraction", pc.divide(pc.cast(g["devices_anomalous"], f64),
                                                        pc.cast(g["devices_reporting"], f64)))
    schema = arrow_schema(FLEET_DDL)
    return g.select(schema.names).cast(schema)


def arrow_schema(ddl: str) -> Any:
    """The pyarrow schema Spark's Parquet reader reads back as `ddl` (timestamps as UTC microseconds)."""
    import pyarrow as pa

    types = {"timestamp": pa.timestamp("us", tz="UTC"), "string": pa.string(), "int": pa.int32(),
             "bigint": pa.int64(), "double": pa.float64(), "boolean": pa.bool_()}
    return pa.schema([pa.field(name, types[kind]) for name, kind in (c.split() for c in ddl.split(", "))])


def type_windows_arrow(device_rows: Any, device_anomaly_rate: float) -> list[dict[str, Any]]:
    """`type_windows` over a pyarrow Table of gold_device rows (at least `GOLD_DEVICE_INPUTS`): the rows
    `type_windows(...).collect()` gives, as dicts, in no particular order."""
    import pyarrow as pa

    d = _per_device_arrow(device_rows, device_anomaly_rate, by_version=False)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    bounds = [d[c].cast(pa.timestamp("ms")).cast(pa.int64()).to_pylist() for c in TYPE_WINDOW[:2]]
    for start, end, dtype, dev, bad in zip(*bounds, d["device_type"].to_pylist(), d["device_id"].to_pylist(),
                                           d["anomalous"].to_pylist(), strict=True):
        row = out.setdefault((start, end, dtype), {"start_ms": start, "end_ms": end, "device_type": dtype,
                                                   "devices_reporting": 0, "anomalous_devices": []})
        row["devices_reporting"] += 1
        if bad:  # null (no anomaly counts) is not anomalous, as in Spark's collect_list of `when`
            row["anomalous_devices"].append(dev)
    for row in out.values():
        row["anomalous_devices"].sort()  # code point order: Spark's sort_array's UTF-8 byte order
    return list(out.values())
