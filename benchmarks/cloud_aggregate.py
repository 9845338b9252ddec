"""Fleet aggregation throughput and latency on local Spark. Prints one JSON line.

- ``readings_per_s``: the job with ``--trigger available-now`` over a bronze directory of
  ``--readings`` readings (default 5 million; oracle-scored simulator telemetry landed by the hub's
  own BronzeWriter): parse -> dedup -> silver -> 1-minute windows per device and channel -> fleet
  windows and incidents. Wall time from the start of the first query to the end of the last.
- ``plain_batch_readings_per_s``: the same parse -> dedup -> windows as one plain ``spark.read`` batch
  job (the engine's own ceiling for this work here). Both are warmed first (see `warm_up`), then each
  is timed once on the full bronze.
- ``p50_latency_s`` / ``p95_latency_s``: steady simulated load landing a bronze file every 0.5 s with
  event time = now, the job on a 1 s processing-time trigger with 1 s windows and a 1 s watermark.
  A reading's latency = when the gold batch holding its window became visible (the batch directory's
  mtime; it appears by an atomic rename) - the reading's event time; percentiles over all readings.

    python benchmarks/cloud_aggregate.py [--readings 5000000] [--latency-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud_jobs.config import AggregateConfig, IncidentConfig, InputConfig, Trigger, WindowSpec
from hub.bronze import BronzeWriter, Landed
from simulators import Fleet, FleetConfig
from simulators.faults import FleetFault
from simulators.telemetry import oracle_messages
from simulators.types import pick_types

PER_MESSAGE = 40  # readings per telemetry message (a gzip-free ~4 KB IoT Hub message holds ~20-40)


def make_bronze(root: Path, readings: int, devices: int = 200) -> int:
    cfg = FleetConfig(devices=devices, seed=1, device_types=pick_types("pump,compressor,chiller"), anomaly_rate=0.0005,
                      fleet_faults=(FleetFault.parse("pump:20:1800:level_shift:300"),))
    fleet = Fleet(cfg)
    types = cfg.device_types_by_id()
    per_device = readings // devices
    n = 0
    boots: dict[str, str] = {}
    w = BronzeWriter(root, tags=lambda d: {"device_type": types[d]} if d in types else {})
    for blocks in fleet.blocks(per_device, chunk=300):
        items = []
        for m in oracle_messages(blocks, per_message=PER_MESSAGE, boot_ids=boots):
            items.append(Landed(m["device_id"], {"$.ct": "application/json", "$.ce": "utf-8"},
                                json.dumps(m, separators=(",", ":")).encode(), m["readings"][-1]["ts"] / 1000 + 1))
            n += len(m["readings"])
        w.write(items)
        w.close()  # one part file per chunk of simulated time, as hub processes rotate them
        w = BronzeWriter(root, tags=w.tags)
        time.sleep(0.002)
    w.close()
    return n


def _plain(spark: Any, cfg: AggregateConfig, out: Path) -> None:
    """The same parse -> dedup -> windows as one plain batch job."""
    from cloud_jobs import io
    from cloud_jobs.fleet import transforms as T
    from cloud_jobs.fleet.parse import Envelope

    raw = io.read_input(spark, cfg.input, streaming=False)
    deduped = T.dedup(T.parse(raw, Envelope.BRONZE), cfg.watermark_s)
    T.device_windows(T.silver(deduped), cfg.windows[0], cfg.watermark_s).write.mode("overwrite").parquet(str(out))


def _config(bronze: Path, out: Path) -> AggregateConfig:
    return AggregateConfig(input=InputConfig(path=str(bronze), max_files_per_trigger=40), out=str(out),
                           windows=(WindowSpec(60, 60),), incidents=IncidentConfig())


def warm_up(spark: Any, work: Path, bronze: Path) -> None:
    """Warm the JVM (JIT) and the Python workers before timing, so neither timed run pays it alone: the
    streaming job once over 1 million readings of their own, the plain job once over the whole bronze.
    A cold first micro-batch costs ~6-7 s more than a warm one here."""
    from cloud_jobs.fleet.job import main

    make_bronze(work / "warm-bronze", 1_000_000)
    main(_config(work / "warm-bronze", work / "warm-out"), spark=spark, on_batch=lambda st: None)
    _plain(spark, _config(bronze, work / "unused"), work / "warm-plain")


def throughput(spark: Any, bronze: Path, work: Path) -> tuple[float, float, dict[str, Any]]:
    from pyspark.sql import functions as F

    from cloud_jobs.fleet.job import main

    cfg = _config(bronze, work / "out")
    t = time.perf_counter()
    report = main(cfg, spark=spark, on_batch=lambda st: print(st.line(), file=sys.stderr))
    stream_s = time.perf_counter() - t
    silver_rows = spark.read.parquet(cfg.table("silver")).count()

    t = time.perf_counter()
    _plain(spark, cfg, work / "plain_gold")
    plain_s = time.perf_counter() - t
    plain_windows = spark.read.parquet(str(work / "plain_gold")).agg(F.count(F.lit(1))).first()[0]
    facts = {"silver_readings": silver_rows, "stream_window_rows": report.total("windows"),
             "plain_window_rows": plain_windows, "quarantined": report.total("quarantined"),
             "incidents_opened": sum(e["event"] == "open" for e in report.incident_events),
             "stream_s": round(stream_s, 2), "plain_s": round(plain_s, 2)}
    return stream_s, plain_s, facts


def latency(spark: Any, work: Path, seconds: float, devices: int = 50) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from cloud_jobs.fleet.job import main

    bronze = work / "live-bronze"
    bronze.mkdir(parents=True)
    cfg = AggregateConfig(input=InputConfig(path=str(bronze)), out=str(work / "live"), watermark_s=1,
                          windows=(WindowSpec(1, 1),), trigger=Trigger(False, 1.0))
    stop = threading.Event()
    fleet = Fleet(FleetConfig(devices=devices, seed=2, anomaly_rate=0.0))
    boots: dict[str, str] = {}
    landed = [0]

    def load() -> None:  # 2 readings per device per 0.5 s tick = 4 readings/s/device, event time = now
        seq = 0
        while not stop.is_set():
            now = time.time()
            blocks = [d.next_block(2) for d in fleet.devices]
            for b in blocks:
                object.__setattr__(b, "ts", np.array([now - 0.25, now]))
            w = BronzeWriter(bronze)
            items = [Landed(m["device_id"], {}, json.dumps(m).encode(), now)
                     for m in oracle_messages(blocks, per_message=2, boot_ids=boots)]
            w.write(items)
            w.close()
            landed[0] += 2 * len(blocks)
            seq += 1
            stop.wait(max(0.0, 0.5 - (time.time() - now)))

    loader = threading.Thread(target=load, daemon=True)
    job_stop = threading.Event()
    runner = threading.Thread(target=lambda: main(cfg, spark=spark, stop=job_stop,
                                                  on_batch=lambda st: print(st.line(), file=sys.stderr)), daemon=True)
    runner.start()
    time.sleep(8)  # queries up, first batches through
    loader.start()
    time.sleep(seconds)
    stop.set()
    loader.join()
    time.sleep(6)
    job_stop.set()
    runner.join(60)
    # when each (device, window) became visible: the mtime of the gold batch directory that holds it
    gold = Path(cfg.table("gold_device_1s"))
    visible: dict[tuple[str, int], float] = {}
    for d in sorted(gold.glob("batch_id=*")):
        at = max(f.stat().st_mtime for f in d.iterdir())
        for row in spark.read.parquet(str(d)).select("device_id", F.unix_millis("window_start").alias("w")).collect():
            visible.setdefault((row["device_id"], row["w"]), at)
    lat = []
    silver = spark.read.parquet(cfg.table("silver")).select("device_id", F.unix_millis("event_time").alias("t"))
    for row in silver.collect():
        at = visible.get((row["device_id"], row["t"] - row["t"] % 1000))
        if at is not None:
            lat.append(at - row["t"] / 1000)
    if not lat:
        return {"p50_latency_s": None, "p95_latency_s": None}
    arr = np.asarray(lat)
    return {"p50_latency_s": round(float(np.percentile(arr, 50)), 2),
            "p95_latency_s": round(float(np.percentile(arr, 95)), 2),
            "latency_load_readings_per_s": devices * 4, "latency_readings": len(lat),
            "latency_readings_landed": landed[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=5_000_000)
    ap.add_argument("--latency-seconds", type=float, default=60.0)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    from cloud_jobs.spark import get_spark

    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgeflag-cloud-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = time.perf_counter()
    readings = make_bronze(work / "bronze", args.readings)
    gen_s = time.perf_counter() - t
    print(f"bronze: {readings:,} readings in {gen_s:.0f} s", file=sys.stderr)
    spark = get_spark("edgeflag-bench", master="local[2]")
    warm_up(spark, work, work / "bronze")
    stream_s, plain_s, facts = throughput(spark, work / "bronze", work)
    lat = latency(spark, work, args.latency_seconds) if args.latency_seconds > 0 else {}
    out = {"bench": "cloud_aggregate", "spark": spark.version, "master": "local[2]", "readings": readings,
           "bronze_files": len(list((work / "bronze").rglob("*.jsonl"))),
           "bronze_mb": round(sum(f.stat().st_size for f in (work / "bronze").rglob("*.jsonl")) / 1e6, 1),
           "readings_per_s": round(readings / stream_s), "plain_batch_readings_per_s": round(readings / plain_s),
           "stream_vs_plain": round(plain_s / stream_s, 3), **facts, **lat}
    print(json.dumps(out))
    spark.stop()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
