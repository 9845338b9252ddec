"""The aggregation's transforms: pure DataFrame -> DataFrame functions, streaming or batch alike.

bronze input --parse--> parsed --dedup--> silver / quarantine --windows--> gold per device and channel
                                                        --fleet_windows--> gold per device type and model version
                                                        --type_windows--> what the incident tracker reads
"""

from __future__ import annotations

from typing import Any

from cloud_jobs.config import WindowSpec
from cloud_jobs.fleet.parse import PARSED_DDL, Envelope, parse_batches

#: Dedup key of a reading. The authenticated sender is part of it, so a device cannot suppress
#: another's readings by naming it in the body; a quarantined message dedups on its payload hash.
DEDUP_KEY = ("source_device", "device_id", "boot_id", "seq")

SILVER_COLUMNS = ("source_device", "device_id", "device_type", "boot_id", "seq", "event_time", "score", "anomaly",
                  "channels", "values", "model_name", "model_version", "model_sha256", "feature_hash", "threshold",
                  "received_at")
QUARANTINE_COLUMNS = ("source_device", "received_at", "reason", "raw")


def parse(inputs: Any, envelope: Envelope) -> Any:
    """INPUT_DDL rows -> one row per reading (or per quarantined message) plus `event_time`
    (a quarantined row's is its receive time)."""
    from pyspark.sql import functions as F

    messages = inputs.mapInArrow(parse_batches(envelope), PARSED_DDL)
    per_message = [c.split()[0].strip("`") for c in PARSED_DDL.split(", ")][:14]
    r = F.explode_outer(F.arrays_zip("seq", "ts_ms", "score", "anomaly", "values")).alias("r")
    parsed = messages.select(*per_message, r).select(
        *per_message, *(F.col(f"r.{c}").alias(c) for c in ("seq", "ts_ms", "score", "anomaly", "values")))
    received = F.coalesce(F.timestamp_millis("received_ms"), F.current_timestamp())
    return parsed.select(
        "*",
        F.when(F.col("status") == "ok", F.timestamp_millis("ts_ms")).otherwise(received).alias("event_time"),
        received.alias("received_at"),
    )


def dedup(parsed: Any, watermark_s: int) -> Any:
    """Exactly-once by DEDUP_KEY within the watermark; rows later than the watermark are dropped
    (and counted by Spark as numRowsDroppedByWatermark)."""
    from pyspark.sql import functions as F

    keyed = parsed.select(
        "*",
        F.coalesce("device_id", F.lit("")).alias("_k_device"),
        F.coalesce("source_device", F.lit("")).alias("_k_source"),
        F.coalesce("boot_id", F.concat(F.lit("q:"), F.sha2("raw", 256))).alias("_k_boot"),
        F.coalesce("seq", F.lit(-1)).alias("_k_seq"),
    )
    if parsed.isStreaming:
        out = keyed.withWatermark("event_time", f"{watermark_s} seconds").dropDuplicatesWithinWatermark(
            ["_k_source", "_k_device", "_k_boot", "_k_seq"])
    else:
        out = keyed.dropDuplicates(["_k_source", "_k_device", "_k_boot", "_k_seq"])
    return out.drop("_k_device", "_k_source", "_k_boot", "_k_seq")


def silver(deduped: Any) -> Any:
    from pyspark.sql import functions as F

    return deduped.where(F.col("status") == "ok").select(*SILVER_COLUMNS)


def quarantine(deduped: Any) -> Any:
    from pyspark.sql import functions as F

    return deduped.where(F.col("status") != "ok").select(*QUARANTINE_COLUMNS)


def device_windows(silver_df: Any, spec: WindowSpec, watermark_s: int) -> Any:
    """Per window, device and channel: readings, anomalies, anomaly_rate, max_score, value mean/min/max."""
    from pyspark.sql import functions as F

    src = silver_df.withWatermark("event_time", f"{watermark_s} seconds") if silver_df.isStreaming else silver_df
    win = F.window("event_time", f"{spec.duration_s} seconds", f"{spec.slide_s} seconds")
    exploded = src.select(win.alias("window"), "device_type", "model_version", "device_id", "anomaly", "score",
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


def _per_device(device_rows: Any, device_anomaly_rate: float, by_version: bool) -> Any:
    from pyspark.sql import functions as F

    keys = ["window_start", "window_end", "device_type", "device_id"] + (["model_version"] if by_version else [])
    # every channel row of a device carries the device's reading counts: take them once per version
    per_version = device_rows.groupBy(*keys, *([] if by_version else ["model_version"])).agg(
        F.max("readings").alias("readings"), F.max("anomalies").alias("anomalies"),
        F.max("max_score").alias("max_score"))
    per_device = per_version.groupBy(*keys).agg(
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
    return d.groupBy(F.unix_millis("window_start").alias("start_ms"), F.unix_millis("window_end").alias("end_ms"),
                     "device_type").agg(
        F.count(F.lit(1)).alias("devices_reporting"),
        F.sort_array(F.collect_list(F.when(F.col("anomalous"), F.col("device_id")))).alias("anomalous_devices"),
    )
