"""Windows built from panes equal Spark's own event-time windows over the same silver rows, for any
split of the data into micro-batches and any spec whose slide divides its duration."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from typing import Any

import pytest

from cloud_jobs.config import WindowSpec
from cloud_jobs.fleet import panes as P
from cloud_jobs.fleet.transforms import SILVER_DDL, device_windows

pytestmark = [pytest.mark.spark]

SPECS = (WindowSpec(60, 60), WindowSpec(90, 30), WindowSpec(300, 60))
#: the job's defaults: the tumbling spec is one pane long, so its windows are the panes themselves
ONE_PANE_SPECS = (WindowSpec(60, 60), WindowSpec(300, 60))


def silver_rows(n: int, seed: int) -> list[tuple[Any, ...]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        dev = f"dev-{rnd.randrange(4)}"
        ts = datetime.fromtimestamp(1_780_000_000 + rnd.uniform(0, 900), tz=timezone.utc)
        chans = ["a", "b"] if dev != "dev-3" else ["a"]
        vals = [rnd.gauss(0, 1) if rnd.random() > 0.05 else None for _ in chans]
        score = rnd.random()
        source = rnd.choice(["gw-a", "gw-b", dev])  # two gateways serving same-named sensors, and the device
        rows.append((source, dev, "pump" if dev < "dev-2" else "fan", "boot", i, ts, score, score > 0.9, chans,
                     vals, "m", rnd.choice([1, 2]), "sha", "fh", 0.9, ts, 0))
    return rows


def test_granule_tiles_every_spec() -> None:
    assert P.granule_s(SPECS) == 30
    assert P.granule_s([WindowSpec(60, 60)]) == 60


@pytest.mark.parametrize("specs", [SPECS, ONE_PANE_SPECS], ids=["granule-30", "granule-60"])
def test_windows_from_panes_merged_over_batches_equal_sparks_windows(spark: Any, specs: Any) -> None:
    from pyspark.sql import functions as F

    df = spark.createDataFrame(silver_rows(3000, seed=1), SILVER_DDL).drop("batch_id")
    granule = P.granule_s(specs)
    # three micro-batches, panes merged batch after batch as the job keeps them: the job merges a
    # batch's single readings straight into the kept panes; merging a batch's own panes gives the same
    parts = df.randomSplit([1.0, 1.0, 1.0], seed=7)
    kept = spark.createDataFrame([], P.PANE_DDL)
    for i, part in enumerate(parts):
        new = P.readings_as_panes(part, granule)
        if i % 2:  # this batch's panes aggregated first, then merged
            new = P.merge(new)
        kept = P.merge(kept.unionByName(new))
    end = int(df.agg(F.max(F.unix_millis("event_time"))).first()[0])
    cut = end - 400_000
    key = ["window_start", "window_end", "device_id", "channel", "model_version"]
    for spec in specs:
        want = {tuple(r[k] for k in key): r for r in device_windows(df, spec, 0).collect()}
        # emitted in two steps (up to a watermark, then the rest): each window once, figures equal
        first = P.windows(kept, spec, None, cut, granule=granule).collect()
        rest = P.windows(kept, spec, cut, end + spec.duration_s * 1000, granule=granule).collect()
        got = {tuple(r[k] for k in key): r for r in first + rest}
        assert len(got) == len(first) + len(rest) == len(want), spec
        assert all(r["window_end"].timestamp() * 1000 <= cut for r in first) and first and rest
        for k, w in want.items():
            g = got[k]
            assert (g["readings"], g["anomalies"], g["max_score"], g["min"], g["max"]) == (
                w["readings"], w["anomalies"], w["max_score"], w["min"], w["max"]), (spec, k)
            if w["mean"] is None:  # every value of the window missing
                assert g["mean"] is None, (spec, k)
            else:
                assert g["mean"] == pytest.approx(w["mean"], rel=1e-12, abs=1e-12), (spec, k)


def test_same_named_sensors_of_two_gateways_are_two_devices(spark: Any) -> None:
    """Gold's device is the stream (sender, sensor): two gateways' sensors "s-1" are counted apart, and a
    device sending its own readings keeps its plain id."""
    from cloud_jobs.fleet.transforms import fleet_windows, type_windows

    t0 = datetime.fromtimestamp(1_780_000_020, tz=timezone.utc)
    rows = [(src, dev, "pump", "boot", i, t0, s, s > 0.9, ["a"], [1.0], "m", 1, "sha", "fh", 0.9, t0, 0)
            for src, dev, s, n in (("gw-a", "s-1", 0.1, 10), ("gw-b", "s-1", 0.95, 6), ("dev-9", "dev-9", 0.1, 4))
            for i in range(n)]
    df = spark.createDataFrame(rows, SILVER_DDL).drop("batch_id")
    spec = WindowSpec(60, 60)
    from_panes = P.windows(P.merge(P.readings_as_panes(df, 60)), spec, None, 10**15)
    for device_rows in (from_panes, device_windows(df, spec, 0)):
        got = {r["device_id"]: (r["readings"], r["anomalies"]) for r in device_rows.collect()}
        assert got == {"gw-a/s-1": (10, 0), "gw-b/s-1": (6, 6), "dev-9": (4, 0)}
        fleet = fleet_windows(device_rows, 0.5).collect()
        assert [(r["devices_reporting"], r["devices_anomalous"]) for r in fleet] == [(3, 1)]
        assert [list(r["anomalous_devices"]) for r in type_windows(device_rows, 0.5).collect()] == [["gw-b/s-1"]]


def test_panes_kept_cover_every_window_not_yet_emitted(spark: Any) -> None:
    df = spark.createDataFrame(silver_rows(2000, seed=2), SILVER_DDL).drop("batch_id")
    kept = P.merge(P.readings_as_panes(df, P.granule_s(SPECS)))
    wm = 1_780_000_000_000 + 500_000
    needed = P.still_needed(kept, SPECS, wm)
    for spec in SPECS:
        later = P.windows(kept, spec, wm, 10**15).collect()
        assert sorted(later) == sorted(P.windows(needed, spec, wm, 10**15).collect())
    assert needed.count() < kept.count()


def test_fleet_windows_count_each_model_version_and_type_windows_judge_a_device_over_all(spark: Any) -> None:
    """During a rollout a device reports under two model versions in one window: gold_fleet has a row per
    version, and the incident tracker judges the device on all its readings (10 anomalies of 20 at rate 0.5:
    anomalous, though its version-1 readings alone are not)."""
    from cloud_jobs.fleet.transforms import fleet_windows, type_windows

    t0 = datetime.fromtimestamp(1_780_000_020, tz=timezone.utc)
    rows = [(dev, dev, "pump", "boot", i, t0, 0.95 if bad else 0.1, bad, ["a", "b"], [1.0, 2.0], "m", version,
             "sha", "fh", 0.9, t0, 0)
            for dev, version, n, anomalies in (("d1", 1, 10, 0), ("d1", 2, 10, 10), ("d2", 1, 4, 1))
            for i in range(n) for bad in [i < anomalies]]
    df = spark.createDataFrame(rows, SILVER_DDL).drop("batch_id")
    device_rows = P.windows(P.merge(P.readings_as_panes(df, 60)), WindowSpec(60, 60), None, 10**15, granule=60)
    fleet = {r["model_version"]: (r["devices_reporting"], r["devices_anomalous"], r["readings"], r["anomalies"])
             for r in fleet_windows(device_rows, 0.5).collect()}
    assert fleet == {1: (2, 0, 14, 1), 2: (1, 1, 10, 10)}
    types = [(r["devices_reporting"], list(r["anomalous_devices"])) for r in type_windows(device_rows, 0.5).collect()]
    assert types == [(2, ["d1"])]


def test_fleet_and_type_windows_from_gold_device_files_equal_sparks(spark: Any, tmp_path: Any) -> None:
    """Where gold is Parquet, the job computes gold_fleet and the incident tracker's type windows on the
    driver from the gold_device files a batch just wrote (`fleet_windows_arrow`, `type_windows_arrow`);
    Spark's `fleet_windows` and `type_windows` are the reference: the same rows, and gold_fleet read back
    by Spark has Spark's schema. Covered: devices on the rate's boundary, devices under two model versions
    in one window, sliding windows, device ids that sort differently by code point and by case."""
    import shutil

    from pyspark.sql import functions as F

    from cloud_jobs import io
    from cloud_jobs.config import TableFormat
    from cloud_jobs.fleet.transforms import (
        GOLD_DEVICE_INPUTS,
        fleet_windows,
        fleet_windows_arrow,
        type_windows,
        type_windows_arrow,
    )

    rnd = random.Random(5)
    names = ["dev-a", "dev-B", "dev-é", "dev-z", "Dev-1", "dev-ä"]
    rows = []
    for i in range(1500):
        dev = rnd.choice(names)
        ts = datetime.fromtimestamp(1_780_000_000 + rnd.uniform(0, 600), tz=timezone.utc)
        bad = rnd.random() < 0.4
        rows.append((dev, dev, "pump" if dev.islower() else "fan", "boot", i, ts, rnd.random(), bad,
                     ["a", "b"], [1.0, 2.0], "m", rnd.choice([1, 2]), "sha", "fh", 0.9, ts, 0))
    df = spark.createDataFrame(rows, SILVER_DDL).drop("batch_id")
    gold, fleet = tmp_path / "gold", tmp_path / "fleet"
    for spec, rates in ((WindowSpec(60, 60), (0.5, 1.0)), (WindowSpec(120, 60), (0.5,))):
        device_rows = device_windows(df, spec, 0).persist()
        io.write_batch(device_rows, str(gold), TableFormat.PARQUET, 3, "t")
        written = io.batch_arrow(str(gold), TableFormat.PARQUET, 3, GOLD_DEVICE_INPUTS)
        for rate in rates:
            want = sorted(((r["start_ms"], r["end_ms"], r["device_type"]), r["devices_reporting"],
                           list(r["anomalous_devices"])) for r in type_windows(device_rows, rate).collect())
            got = sorted(((r["start_ms"], r["end_ms"], r["device_type"]), r["devices_reporting"],
                          r["anomalous_devices"]) for r in type_windows_arrow(written, rate))
            assert got == want, (spec, rate)
            assert rate == 1.0 or any(len(w[2]) > 1 for w in want), (spec, rate)

            reference = fleet_windows(device_rows, rate)
            assert io.write_arrow_batch(fleet_windows_arrow(written, rate), str(fleet), 3)
            assert not io.write_arrow_batch(fleet_windows_arrow(written, rate), str(fleet), 3)  # once
            back = spark.read.parquet(str(fleet / "batch_id=3"))
            assert [(f.name, f.dataType) for f in back.schema] == [(f.name, f.dataType) for f in reference.schema]
            assert sorted(back.collect()) == sorted(reference.collect()), (spec, rate)
            assert back.where(F.col("devices_anomalous") > 0).count() > 0 or rate == 1.0
            shutil.rmtree(fleet / "batch_id=3")
        # devices exactly on the 0.5 boundary exist, so `>=` against `>` is tested
        per_version = device_rows.groupBy("window_start", "device_id", "model_version").agg(
            F.max("readings").alias("r"), F.max("anomalies").alias("a"))
        per_device = per_version.groupBy("window_start", "device_id").agg(F.sum("r").alias("r"), F.sum("a").alias("a"))
        assert per_device.where(F.col("a") * 2 == F.col("r")).count() > 0
        assert per_version.where(F.col("a") * 2 == F.col("r")).count() > 0
        device_rows.unpersist()
        shutil.rmtree(gold / "batch_id=3")
    assert io.batch_arrow(str(gold), TableFormat.DELTA, 3, GOLD_DEVICE_INPUTS) is None
