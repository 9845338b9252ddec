"""The aggregation job on local Spark: exact counts under duplicates, replays, late data, scheduled runs
and restarts; one incident per fleet fault. Every reading is counted by its dedup key."""

from __future__ import annotations

import base64
import json
import shutil
import time
from datetime import timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import land

from cloud_jobs.config import AggregateConfig, IncidentConfig, InputConfig, WindowSpec
from cloud_jobs.fleet.incidents import read_incidents
from cloud_jobs.fleet.job import main
from hub.bronze import BronzeWriter, Landed
from simulators import Fleet, FleetConfig
from simulators.faults import FleetFault
from simulators.telemetry import oracle_messages
from simulators.types import pick_types

pytestmark = [pytest.mark.spark, pytest.mark.slow]
MINUTES = 15


@pytest.fixture(scope="module")
def fleet() -> tuple[Fleet, list[list[dict[str, Any]]], dict[str, str]]:
    """12 devices of 3 types, 15 minutes at 1 Hz; a fleet fault hits 4 pumps from minute 5 for 150 s.
    Messages come per simulated minute (a list per minute), flagged by an oracle scorer."""
    cfg = FleetConfig(devices=12, seed=3, anomaly_rate=0.0005, device_types=pick_types("pump,compressor,chiller"),
                      fleet_faults=(FleetFault.parse("pump:4:300:level_shift:150"),))
    f = Fleet(cfg)
    boots: dict[str, str] = {}
    minutes = [list(oracle_messages(blocks, per_message=30, boot_ids=boots)) for blocks in f.blocks(MINUTES * 60, 60)]
    return f, minutes, cfg.device_types_by_id()


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def config(tmp: Path, **kw: Any) -> AggregateConfig:
    base: dict[str, Any] = {"input": InputConfig(path=str(tmp / "bronze"), max_files_per_trigger=2),
                            "out": str(tmp / "out"), "watermark_s": 120, "windows": (WindowSpec(60, 60),),
                            "incidents": IncidentConfig(min_devices=3)}
    return AggregateConfig(**{**base, **kw})


def silver_keys(spark: Any, out: Path) -> list[tuple[str, str, int]]:
    rows = spark.read.parquet(str(out / "silver")).select("device_id", "boot_id", "seq").collect()
    return [(r[0], r[1], r[2]) for r in rows]


def keys_of(messages: list[dict[str, Any]]) -> set[tuple[str, str, int]]:
    return {(m["device_id"], m["boot_id"], r["seq"]) for m in messages for r in m["readings"]}


def test_duplicates_replays_and_a_restart_count_every_reading_once_and_raise_one_incident(
        spark: Any, tmp_path: Path, fleet: Any) -> None:
    f, minutes, types = fleet
    every = [m for ms in minutes for m in ms]
    land(tmp_path / "bronze", every, types=types)
    land(tmp_path / "bronze", [m for ms in minutes[3:6] for m in ms], types=types)  # the hub landed these twice
    w = BronzeWriter(tmp_path / "bronze")
    w.write([Landed("pump-0001", {}, b"\x1f\x8b\x08 truncated gzip", every[0]["readings"][0]["ts"] / 1000)])
    w.close()
    cfg = config(tmp_path)
    report = main(cfg, spark=spark)
    keys = silver_keys(spark, tmp_path / "out")
    assert len(keys) == len(set(keys)) == len(keys_of(every)) == 12 * MINUTES * 60
    assert set(keys) == keys_of(every)
    assert report.total("readings", "silver") == len(keys) and report.total("quarantined", "silver") == 1
    q = spark.read.parquet(str(tmp_path / "out" / "quarantine")).collect()
    assert len(q) == 1 and "gzip" in q[0]["reason"] and q[0]["source_device"] == "pump-0001"  # the hub's sender

    events = read_incidents(tmp_path / "out" / "incidents.jsonl")
    opened = [e for e in events if e["event"] == "open"]
    plan = f.plan[0]
    print(f"\nincident test: {len(keys):,} readings, {len(events)} events, "
          f"opened {[e['incident_id'] for e in opened]}, devices {opened[0]['devices'] if opened else None}, "
          f"truth {plan.device_ids}")
    assert len(opened) == 1 and opened[0]["device_type"] == "pump", events
    assert set(opened[0]["devices"]) <= set(plan.device_ids) and len(opened[0]["devices"]) >= 3
    assert {e["incident_id"] for e in events} == {opened[0]["incident_id"]}
    assert events[-1]["event"] == "close"
    assert len(spark.read.parquet(str(tmp_path / "out" / "incidents")).collect()) == len(events)

    # a crash after the last batch wrote its output but before Spark committed it: the batch replays
    gold = spark.read.parquet(str(tmp_path / "out" / "gold_device_1m")).drop("batch_id").collect()
    commits = sorted((p for p in (Path(cfg.checkpoint_root) / "silver" / "commits").iterdir() if p.name.isdigit()),
                     key=lambda p: int(p.name))
    commits[-1].unlink()
    (commits[-1].parent / f".{commits[-1].name}.crc").unlink(missing_ok=True)
    main(cfg, spark=spark)
    assert sorted(silver_keys(spark, tmp_path / "out")) == sorted(keys)
    assert read_incidents(tmp_path / "out" / "incidents.jsonl") == events
    again = spark.read.parquet(str(tmp_path / "out" / "gold_device_1m")).drop("batch_id").collect()
    assert sorted(again) == sorted(gold)


def test_scheduled_runs_emit_every_window_exactly_once(spark: Any, tmp_path: Path, fleet: Any) -> None:
    from pyspark.sql import functions as F

    from cloud_jobs.fleet.transforms import device_windows, fleet_windows

    _f, minutes, types = fleet
    cfg = config(tmp_path, windows=(WindowSpec(60, 60), WindowSpec(300, 60)))
    for part in (minutes[:5], minutes[5:11], minutes[11:]):  # three scheduled runs, new data before each
        land(tmp_path / "bronze", [m for ms in part for m in ms], types=types)
        main(cfg, spark=spark)
    silver = spark.read.parquet(str(tmp_path / "out" / "silver"))
    watermark = silver.agg(F.max("event_time")).first()[0].timestamp() - cfg.watermark_s
    for spec in cfg.windows:
        gold = spark.read.parquet(str(tmp_path / "out" / f"gold_device_{spec.name}")).drop("batch_id")
        key = ["window_start", "device_id", "channel", "model_version"]
        assert gold.count() == gold.dropDuplicates(key).count(), f"{spec.name}: a window emitted twice"
        want = device_windows(silver, spec, cfg.watermark_s).where(
            F.unix_timestamp("window_end") <= F.lit(watermark))
        cols = [*key, "readings", "anomalies", "max_score"]
        assert sorted(gold.select(*cols).collect()) == sorted(want.select(*cols).collect()), spec.name
        assert gold.count() > 0
    fleet_rows = spark.read.parquet(str(tmp_path / "out" / "gold_fleet_1m")).drop("batch_id").collect()
    assert {r["device_type"] for r in fleet_rows} == {"pump", "compressor", "chiller"}
    assert all(r["devices_reporting"] == 4 for r in fleet_rows)
    # built on the driver from each batch's gold_device files (Parquet): what Spark builds from all of them
    gold_1m = spark.read.parquet(str(tmp_path / "out" / "gold_device_1m")).drop("batch_id")
    assert sorted(fleet_rows) == sorted(fleet_windows(gold_1m, cfg.incidents.device_anomaly_rate).collect())


def test_streaming_silver_and_quarantine_carry_every_field_as_parsed(spark: Any, tmp_path: Path, fleet: Any) -> None:
    """The dedup operator reads a few columns and carries the rest as JSON text (`transforms.PASSENGERS`):
    the streaming job's silver and quarantine rows must equal the batch path's (parse, no operator) field for
    field, with awkward values: a threshold with 17 significant digits, non-ASCII names, a sensor behind a
    gateway, messages quarantined as undecodable or invalid."""
    from pyspark.sql import functions as F

    from cloud_jobs import io
    from cloud_jobs.fleet import transforms as T
    from cloud_jobs.fleet.parse import Envelope

    _f, minutes, types = fleet
    model = {"name": "m-ü", "version": 7, "sha256": "ab" * 32, "feature_hash": "f" * 16, "threshold": 0.1 + 0.2}
    odd = [{**m, "model": model, "device_id": "sensor:7.b" if i % 2 else m["device_id"]}
           for i, m in enumerate(minutes[0][:4])]
    land(tmp_path / "bronze", minutes[0][4:] + odd[::2], types=types)
    land(tmp_path / "bronze", odd[1::2], types=types, source="gw-1")
    w = BronzeWriter(tmp_path / "bronze")
    w.write([Landed("dev-x", {}, b"\xff not json", minutes[0][-1]["readings"][-1]["ts"] / 1000)])
    w.close()
    cfg = config(tmp_path)
    main(cfg, spark=spark)

    parsed = T.dedup(T.parse(io.read_input(spark, cfg.input, streaming=False), Envelope.BRONZE), cfg.watermark_s)
    for table, status, cols in (("silver", "ok", T.SILVER_COLUMNS), ("quarantine", "quarantined",
                                                                      T.QUARANTINE_COLUMNS)):
        got = spark.read.parquet(str(tmp_path / "out" / table)).select(*cols).collect()
        want = parsed.where(F.col("status") == status).select(*cols).collect()
        assert len(got) == len(want) > 0 and sorted(got) == sorted(want), table
    silver = spark.read.parquet(str(tmp_path / "out" / "silver"))
    assert silver.where((F.col("threshold") == 0.1 + 0.2) & (F.col("model_name") == "m-ü")
                        & (F.col("source_device") == "gw-1") & (F.col("device_id") == "sensor:7.b")).count() == 60


def test_a_backfill_after_bad_messages_loses_nothing(spark: Any, tmp_path: Path, fleet: Any) -> None:
    """A scheduled run over old bronze whose first files hold bad messages: one the contract refuses, one
    the hub landed undecodable, a torn line with no receive time at all. A quarantined message takes the
    hub's receive time when its envelope has one and no time otherwise, never the job's clock, which
    would move the watermark past every older reading after it and drop them all as late."""
    _f, minutes, types = fleet
    first = minutes[0][0]
    at = first["readings"][-1]["ts"] / 1000
    bronze = tmp_path / "bronze"
    bronze.mkdir()
    (bronze / "torn.jsonl").write_text('{"received_at": "2026-01-01T00:0')
    time.sleep(0.05)
    w = BronzeWriter(bronze)
    w.write([Landed("dev-x", {}, b"\xff not json", at)])
    w.close()
    time.sleep(0.05)
    land(bronze, [{**first, "device_id": "not valid!"}], types=types, received=at, source=first["device_id"])
    time.sleep(0.05)
    good = [m for ms in minutes[:4] for m in ms]
    land(bronze, good, types=types)
    cfg = config(tmp_path, input=InputConfig(path=str(bronze), max_files_per_trigger=1))
    report = main(cfg, spark=spark)
    assert report.total("late") == 0 and report.total("late_readings") == 0
    assert sorted(silver_keys(spark, tmp_path / "out")) == sorted(keys_of(good))
    q = {r["reason"].split(":")[0]: r for r in spark.read.parquet(str(tmp_path / "out" / "quarantine")).collect()}
    assert set(q) == {"landed undecodable", "device_id", "payload is not JSON"}, q
    for reason, sender in (("landed undecodable", "dev-x"), ("device_id", first["device_id"])):
        assert q[reason]["source_device"] == sender, reason  # sender and time from the hub's envelope
        assert abs(q[reason]["received_at"].replace(tzinfo=timezone.utc).timestamp() - at) < 1, reason
    assert q["payload is not JSON"]["source_device"] is None and q["payload is not JSON"]["received_at"] is not None


def test_late_rows_within_the_watermark_count_and_later_ones_are_dropped_and_counted(
        spark: Any, tmp_path: Path, fleet: Any) -> None:
    _f, minutes, types = fleet
    cfg = config(tmp_path, watermark_s=60)
    land(tmp_path / "bronze", [m for ms in minutes[:10] for m in ms], types=types)
    main(cfg, spark=spark)

    def other_boot(ms: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**m, "boot_id": "late-" + m["boot_id"][:8]} for m in ms if m["device_id"] == "pump-0002"]

    too_late = other_boot(minutes[2])       # 8 minutes behind: beyond the 60 s watermark
    in_time = other_boot(minutes[9][-4:])   # the last seconds: within it
    straddling = [{**m, "boot_id": "edge", "readings": m["readings"][-5:] + n["readings"][:5],
                   "seq_first": m["readings"][-5]["seq"], "seq_last": n["readings"][4]["seq"]}
                  for m, n in zip(other_boot(minutes[8]), other_boot(minutes[9]), strict=True)][-1:]
    land(tmp_path / "bronze", too_late + in_time + straddling, types=types)
    report = main(cfg, spark=spark)
    keys = set(silver_keys(spark, tmp_path / "out"))
    assert keys_of(in_time) <= keys and not keys_of(too_late) & keys
    assert report.total("late", "silver") == len(too_late), "whole messages behind the watermark"
    # a message straddling the watermark keeps its readings inside it and counts the rest as late readings
    late_part = {k for k in keys_of(straddling) if k not in keys}
    assert len(late_part) == 5 and report.total("late_readings", "silver") == 5


@pytest.mark.broker
def test_readings_from_real_agents_through_the_hub_reach_silver_once(spark: Any, tmp_path: Path,
                                                                      trained_small: Any) -> None:
    from edge_agent.agent import Agent
    from edge_agent.config import build_config
    from hub.bronze import read_bronze
    from hub.hub import Hub, HubConfig

    grants = "user gw-1\ntopic write devices/+/messages/events/#\ntopic readwrite edgeflag/iothub/gw-1/#\n"
    hub = Hub(HubConfig(state=tmp_path / "hub", bronze=tmp_path / "bronze", start_broker=True, broker_port=0,
                        broker_auth=False, extra_acl=grants, frontend=None))
    for dev in ("gw-1", "dev-0001", "dev-0002"):
        hub.registry.add(dev, tags={"device_type": "pump"})
    hub.start()
    try:
        agent = Agent(build_config({
            "agent": {"state_dir": str(tmp_path / "state"), "status_interval_s": 3600.0},
            "model": {"bundle": str(trained_small[0])},
            "source": {"type": "simulator", "devices": 2, "readings": 900, "seed": 5},
            "uplink": {"type": "mqtt", "port": hub.port, "username": "gw-1", "client_id": "gw-1",
                       "device_id": "gw-1", "dialect": "scoped", "rate_messages_per_s": 0.0},
            "log": {"level": "warning"},
        }, environ={}))
        agent.start()
        wait_for(agent.drained, 60, "the agent to deliver everything")
        snap = agent.metrics.snapshot()
        sent, announced = snap["sent"], {k: v for k, v in snap["anomaly_events"].items() if k != "open_now"}
        agent.stop()
        wait_for(lambda: sum(len(r["body"]["readings"]) for r in read_bronze(tmp_path / "bronze")) >= sent, 20,
                 "bronze")
    finally:
        hub.stop()
    landed = {(r["body"]["device_id"], r["body"]["boot_id"], x["seq"]) for r in read_bronze(tmp_path / "bronze")
              for x in r["body"]["readings"]}
    report = main(config(tmp_path), spark=spark)
    keys = silver_keys(spark, tmp_path / "out")
    assert sent == 1800 and len(keys) == len(set(keys)) == 1800 and set(keys) == landed
    assert report.total("quarantined") == 0
    types = {r[0] for r in spark.read.parquet(str(tmp_path / "out" / "silver")).select("device_type").collect()}
    assert types == {"pump"}
    assert spark.read.parquet(str(tmp_path / "out" / "gold_device_1m")).count() > 0
    # the agent's anomaly events: their own messages (routing property), counted once each by the job
    event_msgs = [r for r in read_bronze(tmp_path / "bronze") if r["body"].get("type") == "anomaly_event"]
    assert event_msgs and all(r["properties"]["message"] == "anomaly_event" for r in event_msgs)
    kinds = dict(spark.read.parquet(str(tmp_path / "out" / "events")).groupBy("reason").count().collect())
    assert announced.get("open", 0) > 0 and kinds == announced, (kinds, announced)
    assert report.total("events_opened") == announced["open"]


def test_the_cli_runs_a_scheduled_aggregation(tmp_path: Path, fleet: Any, capsys: Any) -> None:
    from edgeflag.cli import main as cli

    _f, minutes, types = fleet
    land(tmp_path / "bronze", [m for ms in minutes[:6] for m in ms], types=types)
    assert cli(["cloud", "aggregate", "--bronze", str(tmp_path / "bronze"), "--out", str(tmp_path / "out"),
                "--windows", "1m"]) == 0
    out = capsys.readouterr().out
    assert "silver" in out and "done: 4,320 readings to silver, 0 quarantined" in out
    assert cli(["cloud", "aggregate", "--bronze", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert cli(["cloud", "aggregate", "--bronze", str(tmp_path / "bronze"), "--out", str(tmp_path / "o"),
                "--trigger", "hourly"]) == 2
    shutil.rmtree(tmp_path / "out")
    assert base64 and json  # imported for the helpers above
