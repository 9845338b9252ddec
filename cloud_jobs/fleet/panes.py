"""Event-time windows from panes: the gold stage of the aggregation, run inside the silver micro-batch.

A *pane* is a tumbling slice of event time, `granule_s` long (the greatest common divisor of every
window spec's duration and slide), holding mergeable partial aggregates per device, channel and model
version: readings, anomalies, max score, value sum / count / min / max. Every window of every spec is
a union of whole panes, so one explode and one aggregation per micro-batch serve all the specs, and a
window's figures are the merge of its panes.

The job merges a batch's readings straight into the kept panes (`readings_as_panes` then `merge`: one
aggregation, not one to build the batch's panes and a second to merge them), and a tumbling spec as long
as a pane (the 1-minute spec of the default ``1m,5m/1m``) takes the merged panes as its windows with no
aggregation at all (`windows(..., granule=)`).

The job keeps the open panes between micro-batches (`cloud_jobs.io.write_batch` under the checkpoint)
with the largest event time seen. After batch N its watermark is ``max event time - watermark_s``; the
windows whose end falls in ``(watermark before N, watermark after N]`` are final and emitted by batch N
itself, not by a later no-data batch. No reading can reach an emitted window afterwards: Spark's own
watermark, which the dedup operator drops late readings against, is computed from the same messages
(and from late or quarantined ones) so it is never behind this one, and every window holding an event
time ends after it.

Pure DataFrame -> DataFrame functions, streaming-free: the job calls them on micro-batches; the tests
check them against `transforms.device_windows` (Spark's own windows) on the same silver rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from math import gcd
from typing import Any

from cloud_jobs.config import WindowSpec
from cloud_jobs.fleet.transforms import stream_id

PANE_DDL = ("pane_ms long, device_type string, model_version int, device_id string, channel string, "
            "readings long, anomalies long, max_score double, value_sum double, value_n long, "
            "min double, max double")
KEYS = ("device_type", "model_version", "device_id", "channel")


def granule_s(specs: Iterable[WindowSpec]) -> int:
    """The pane length: the largest that tiles every window of every spec."""
    return reduce(gcd, [s for spec in specs for s in (spec.duration_s, spec.slide_s)])


def readings_as_panes(silver_df: Any, granule: int) -> Any:
    """Silver readings -> PANE_DDL rows, one per reading and channel, not yet aggregated (a pane of one
    reading). `merge` of these with kept panes builds the panes in one aggregation."""
    from pyspark.sql import functions as F

    ms = granule * 1000
    t = F.unix_millis("event_time")
    exploded = silver_df.select((t - F.pmod(t, F.lit(ms))).alias("pane_ms"), "device_type", "model_version",
                                stream_id().alias("device_id"), "anomaly", "score",
                                F.explode(F.arrays_zip("channels", "values")).alias("cv"))
    value = F.col("cv.values")
    return exploded.select(
        "pane_ms", *KEYS[:3], F.col("cv.channels").alias("channel"),
        F.lit(1).cast("long").alias("readings"),
        F.col("anomaly").cast("long").alias("anomalies"),
        F.col("score").cast("double").alias("max_score"),
        value.cast("double").alias("value_sum"),
        value.isNotNull().cast("long").alias("value_n"),
        value.cast("double").alias("min"),
        value.cast("double").alias("max"),
    )


def merge(pane_rows: Any) -> Any:
    """Rows of the same pane and key (kept panes, a new batch's panes or single readings from
    `readings_as_panes`) -> one row each."""
    from pyspark.sql import functions as F

    return pane_rows.groupBy("pane_ms", *KEYS).agg(
        F.sum("readings").alias("readings"), F.sum("anomalies").alias("anomalies"),
        F.max("max_score").alias("max_score"), F.sum("value_sum").alias("value_sum"),
        F.sum("value_n").alias("value_n"), F.min("min").alias("min"), F.max("max").alias("max"),
    )


def windows(pane_rows: Any, spec: WindowSpec, after_ms: int | None, upto_ms: int, *,
            granule: int | None = None) -> Any:
    """The windows of `spec` ending in ``(after_ms, upto_ms]`` (epoch ms; `after_ms` None: no lower
    bound), per device, channel and model version, in `transforms.device_windows`' columns.

    `pane_rows` are merged panes (one row per pane and key, as `merge` gives). A pane starting at p lies in
    the windows starting at ``floor(p / slide) * slide - i * slide`` for ``i < duration / slide``, the same
    windows as Spark's ``window()`` gives its event times. When `granule` (the panes' length, seconds) is
    given and the spec is tumbling with that length, each window is one pane: its row is taken as it is,
    with no aggregation (the same figures, one shuffle fewer)."""
    from pyspark.sql import functions as F

    slide, dur = spec.slide_s * 1000, spec.duration_s * 1000
    one_pane = granule is not None and spec.duration_s == spec.slide_s == granule
    if one_pane:
        w = pane_rows.withColumns({"start_ms": F.col("pane_ms"), "end_ms": F.col("pane_ms") + dur})
    else:
        first = F.col("pane_ms") - F.pmod("pane_ms", F.lit(slide))
        starts = F.sequence(first - F.lit(dur - slide), first, F.lit(slide))
        w = pane_rows.select("*", F.explode(starts).alias("start_ms")).withColumn("end_ms", F.col("start_ms") + dur)
    w = w.where(F.col("end_ms") <= upto_ms)
    if after_ms is not None:
        w = w.where(F.col("end_ms") > after_ms)
    agg = w if one_pane else w.groupBy("start_ms", "end_ms", *KEYS).agg(
        F.sum("readings").alias("readings"), F.sum("anomalies").alias("anomalies"),
        F.max("max_score").alias("max_score"), F.sum("value_sum").alias("value_sum"),
        F.sum("value_n").alias("value_n"), F.min("min").alias("min"), F.max("max").alias("max"))
    return agg.select(
        F.timestamp_millis("start_ms").alias("window_start"), F.timestamp_millis("end_ms").alias("window_end"),
        "device_type", "model_version", "device_id", "channel", "readings", "anomalies",
        (F.col("anomalies") / F.col("readings")).alias("anomaly_rate"), "max_score",
        (F.col("value_sum") / F.col("value_n")).alias("mean"), "min", "max",
    )


def still_needed(pane_rows: Any, specs: Iterable[WindowSpec], watermark_ms: int) -> Any:
    """The panes a window not yet emitted (one ending after the watermark) may still need."""
    from pyspark.sql import functions as F

    longest = max(spec.duration_s for spec in specs) * 1000
    return pane_rows.where(F.col("pane_ms") > F.lit(watermark_ms - longest))
