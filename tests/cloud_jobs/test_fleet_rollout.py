"""End to end: real agents -> the hub -> bronze -> the aggregation job -> silver -> the retraining job ->
a canary rollout through the twins back to the agents; a canary whose alert rate explodes is rolled back."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cloud_jobs.config import AggregateConfig, InputConfig, RetrainConfig, RolloutConfig, Trigger, WindowSpec

pytestmark = [pytest.mark.broker, pytest.mark.spark, pytest.mark.slow]

AGENTS = ("gw-1", "gw-2")


def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def test_a_retrained_model_reaches_the_agents_through_a_canary_and_a_bad_one_is_rolled_back(
        spark: Any, tmp_path: Path) -> None:
    from cloud_jobs.fleet.job import main as aggregate
    from cloud_jobs.retrain.job import main as retrain
    from cloud_jobs.retrain.job import silver_canary_stats, silver_control_stats
    from cloud_jobs.retrain.rollout import HubControl, RolloutPlan, execute, model_spec
    from edge_agent.agent import Agent
    from edge_agent.config import build_config
    from hub.hub import Hub, HubConfig
    from hub.mosquitto import free_loopback_address
    from models.bundle import load_bundle
    from models.registry import Registry
    from models.training.pipeline import build_bundle, publish
    from models.training.trainer import TrainConfig, feature_table, fit_spec
    from simulators import Fleet, FleetConfig

    registry = Registry(tmp_path / "registry")
    old = Fleet(FleetConfig(devices=3, seed=40, anomaly_rate=0.0)).generate(800)
    tc = TrainConfig(name="pump", n_estimators=30)
    spec = fit_spec(old, tc)
    v1, _ = build_bundle(feature_table(old, spec), spec, tc, registry)
    registry.set_champion("pump", 1)

    host = free_loopback_address(8883)  # the SDK's port is fixed: a loopback address of our own
    hub = Hub(HubConfig(state=tmp_path / "hub", bronze=tmp_path / "bronze", start_broker=True, broker_port=0,
                        broker_persistence=False, frontend=host, bronze_rotate_s=1.0))
    keys = {a: hub.registry.add(a, tags={"device_type": "pump"}) for a in AGENTS}
    hub.start()
    agents: list[Any] = []
    stop = threading.Event()
    lake = tmp_path / "lake"
    agg_cfg = AggregateConfig(input=InputConfig(path=str(tmp_path / "bronze")), out=str(lake), watermark_s=5,
                              windows=(WindowSpec(60, 60),), trigger=Trigger(False, 1.0))
    runner = threading.Thread(target=lambda: aggregate(agg_cfg, spark=spark, stop=stop, on_batch=lambda s: None),
                              daemon=True)
    try:
        for i, a in enumerate(AGENTS):
            agents.append(Agent(build_config({
                "agent": {"state_dir": str(tmp_path / f"state-{a}"), "status_interval_s": 3600.0},
                "model": {"bundle": str(v1)},
                "source": {"type": "simulator", "devices": 2, "rate": 150.0, "readings": 0, "seed": 50 + i,
                           "anomaly_rate": 0.0},
                "scoring": {"batch_size": 64},
                # the real SDK through the hub's TLS front end: every sensor's message under the agent's identity
                "uplink": {"type": "iothub", "ca_file": str(hub.ca_file), "rate_messages_per_s": 0.0,
                           "connection_string": f"HostName=edgeflag-hub.local;DeviceId={a};"
                                                f"SharedAccessKey={keys[a]};GatewayHostName={host}"},
                "log": {"level": "warning"},
            }, environ={})))
            agents[-1].start()
        runner.start()
        silver = lake / "silver"
        wait_for(lambda: silver.exists() and any(silver.glob("batch_id=*"))
                 and spark.read.parquet(str(silver)).count() >= 5000, 120, "5,000 readings in silver")

        # retrain over what the agents sent; the winner goes to gw-1 (canary), then gw-2
        rollout = RolloutConfig(canary_fraction=0.5, min_canary_readings=150, max_canary_alert_rate=0.05,
                                report_timeout_s=30, watch_timeout_s=60, poll_s=1.0)
        cfg = RetrainConfig(silver=str(silver), registry=str(registry.root), out=str(tmp_path / "retrain"),
                            min_rows=1000, n_estimators=40, rollout=rollout)
        lines: list[str] = []
        report = retrain(cfg, spark=spark, say=lines.append, control=HubControl.running(hub))
        assert set(report["types"]) == {"pump"}, lines
        pump = report["types"]["pump"]
        assert pump["status"] == "promoted" and pump["version"] == 2, (pump, lines)
        assert pump["rollout"]["status"] == "rolled_out", pump["rollout"]
        assert pump["rollout"]["canaries"] == ["gw-1"] and pump["rollout"]["rest"] == ["gw-2"]
        assert pump["rollout"]["canary_readings"] >= 150 and pump["rollout"]["canary_alert_rate"] <= 0.05
        assert pump["rollout"]["control_readings"] > 0, pump["rollout"]  # gw-2 on v1 over the same time
        for a in AGENTS:
            rep = hub.twins.twin(a)["reported"]
            assert rep["model"]["version"] == 2 and rep["model_rollout"]["status"] == "ok", (a, rep)
        v2 = load_bundle(registry.path("pump", 2)).manifest
        stats = silver_canary_stats(spark, cfg)
        wait_for(lambda: sum(n for n, _ in stats(["gw-2"], v2.sha256, 2, 0).values()) > 0, 30,
                 "gw-2's readings scored by v2 in silver")

        # a bundle that flags everything: the canary's alert rate explodes, it goes back to v2, gw-2 never sees v3
        bad = publish(replace(_candidate(registry, 2), manifest=replace(v2, threshold=-1e9)), registry)
        bad_spec = model_spec(bad, 3, load_bundle(bad).manifest.sha256, None)
        plan = RolloutPlan("pump", bad_spec, model_spec(registry.path("pump", 2), 2, v2.sha256, None),
                           ("gw-1",), ("gw-2",))
        control = HubControl(tmp_path / "hub", f"127.0.0.1:{hub.port}")  # the job's own control client
        try:
            outcome = execute(plan, control, stats, rollout, control_stats=silver_control_stats(spark, cfg))
        finally:
            control.close()
        assert outcome.status == "rolled_back" and "canary alert rate" in outcome.reason, outcome
        assert outcome.control_readings > 0 and "above the control's" in outcome.reason, outcome
        assert outcome.over == sorted(outcome.canary_devices) and outcome.over, outcome  # every device behind gw-1
        assert outcome.canary_alert_rate is not None and outcome.canary_alert_rate > 0.9
        hub.twins.wait_reported("gw-1", lambda r: r.get("model", {}).get("version") == 2, 20)
        assert hub.twins.twin("gw-2")["reported"]["model"]["version"] == 2
        assert hub.twins.twin("gw-2")["desired"]["model"]["version"] == 2
    finally:
        for ag in agents:
            ag.stop()
        stop.set()
        runner.join(60)
        hub.stop()


def _candidate(registry: Any, version: int) -> Any:
    from models.bundle import load_bundle
    from models.training.pipeline import Candidate

    b = load_bundle(registry.path("pump", version))
    return Candidate(b.model_bytes, b.manifest, 0.0)
