"""Control plane and rollout, end to end, over both uplinks.

iothub: the real azure-iot-device SDK -> TLS front end (SAS checked) -> Mosquitto -> hub.
mqtt:   paho, device-scoped dialect, straight to Mosquitto with ACLs (%u) -> hub.
The hub's twin service and bronze ingest are the real ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

from edge_agent.agent import Agent
from edge_agent.config import build_config
from hub.bronze import read_bronze
from hub.frontend import SCOPE
from hub.hub import Hub, HubConfig
from hub.mosquitto import free_loopback_address
from models.bundle import load_bundle
from models.registry import Registry
from models.training.trainer import TrainConfig, export_model, train
from simulators import Fleet, FleetConfig

pytestmark = [pytest.mark.broker, pytest.mark.slow]
HUB = "edgeflag-hub.local"
DEVICE = "gw-1"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two versions of one model (different seeds), as a retraining job would publish them."""
    root = tmp_path_factory.mktemp("registry")
    blocks = Fleet(FleetConfig(devices=4, seed=21)).generate(1200)
    out = []
    for seed in (1, 2):
        model = train(blocks, TrainConfig(n_estimators=30, seed=seed))
        out.append(Registry(root).publish("pump", lambda v, m=model: export_model(m, name="pump", version=v)))
    return out


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.host = free_loopback_address(8883)
        grants = (f"user {DEVICE}\ntopic write devices/+/messages/events/#\n"
                  f"topic readwrite edgeflag/iothub/{DEVICE}/#\n")
        self.hub = Hub(HubConfig(state=tmp / "hub", bronze=tmp / "bronze", start_broker=True, broker_port=0,
                                 broker_auth=False, broker_persistence=False, extra_acl=grants, frontend=self.host))
        self.key = self.hub.registry.add(DEVICE)
        self.hub.start()
        assert self.hub.twins is not None and self.hub.broker is not None
        self.twins, self.broker, self.ca = self.hub.twins, self.hub.broker, self.hub.ca_file
        self.bronze = tmp / "bronze"

    def uplink(self, kind: str) -> dict[str, Any]:
        if kind == "iothub":
            cs = f"HostName={HUB};DeviceId={DEVICE};SharedAccessKey={self.key};GatewayHostName={self.host}"
            return {"type": "iothub", "connection_string": cs, "ca_file": str(self.ca)}
        return {"type": "mqtt", "port": self.broker.port, "username": DEVICE, "client_id": DEVICE,
                "device_id": DEVICE, "dialect": "scoped"}

    def messages(self) -> list[dict[str, Any]]:
        return [r["body"] for r in read_bronze(self.bronze) if "body" in r]

    def close(self) -> None:
        self.hub.stop()


@pytest.mark.parametrize("uplink", ["iothub", "mqtt"])
def test_twin_methods_and_rollout(tmp_path: Path, bundles: list[Path], uplink: str) -> None:
    stack = Stack(tmp_path)
    try:
        _scenario(stack, tmp_path, bundles, uplink)
    finally:
        stack.close()


def _scenario(stack: Stack, tmp_path: Path, bundles: list[Path], uplink: str) -> None:
    twins = stack.twins
    cfg = build_config({
        "agent": {"state_dir": str(tmp_path / "state"), "status_interval_s": 3600.0},
        "model": {"bundle": str(bundles[0])},
        "source": {"type": "simulator", "devices": 2, "rate": 400.0, "readings": 0, "seed": 9},
        "scoring": {"batch_size": 64},
        "uplink": {**stack.uplink(uplink), "rate_messages_per_s": 0.0, "backoff_initial_s": 0.1},
        "log": {"level": "warning"},
    }, environ={})
    agent = Agent(cfg)
    agent.start()
    try:
        rep = twins.wait_reported(DEVICE, lambda r: "agent_version" in r, 20)
        assert rep["model"]["version"] == 1 and rep["config"]["batch_size"] == 64, rep

        # a desired threshold takes effect on the next batch and is reported back
        twins.set_desired(DEVICE, {"threshold": 0.97})
        rep = twins.wait_reported(DEVICE, lambda r: r.get("config", {}).get("threshold") == 0.97, 15)
        assert rep["control"]["status"] == "applied", rep
        wait_for(lambda: any(m["model"]["threshold"] == 0.97 for m in stack.messages()), 15, "new threshold sent")
        after = [r for m in stack.messages() if m["model"]["threshold"] == 0.97 for r in m["readings"]]
        assert all(r["score"] >= 0.97 for r in after if r["anomaly"])
        assert all(r["score"] < 0.97 for r in after if not r["anomaly"])
        twins.set_desired(DEVICE, {"linger_ms": 50})  # micro-batching, from the next batch
        rep = twins.wait_reported(DEVICE, lambda r: r.get("config", {}).get("linger_ms") == 50, 15)
        assert rep["config"]["linger_ms"] == 50.0 and agent._linger_s == 0.05

        # an invalid patch is rejected as a whole and reported; nothing of it is applied
        twins.set_desired(DEVICE, {"threshold": 0.5, "batch_size": -3})
        rep = twins.wait_reported(DEVICE, lambda r: r.get("control", {}).get("status") == "rejected", 15)
        assert "batch_size" in rep["control"]["error"]
        assert rep["config"]["threshold"] == 0.97 and rep["config"]["batch_size"] == 64
        twins.set_desired(DEVICE, {"linger_ms": 60_000})
        rep = twins.wait_reported(DEVICE, lambda r: "linger_ms" in r.get("control", {}).get("error", ""), 15)
        assert rep["config"]["linger_ms"] == 50.0
        twins.set_desired(DEVICE, {"threshold": None, "colour": "red"})
        rep = twins.wait_reported(DEVICE, lambda r: "colour" in r.get("control", {}).get("error", ""), 15)
        assert rep["config"]["threshold"] == 0.97

        # direct methods
        status, body = twins.invoke(DEVICE, "get_status", None, 15)
        assert status == 200 and body["model"]["version"] == 1 and body["readings_in"] > 0
        assert twins.invoke(DEVICE, "set_log_level", {"level": "debug"}, 15) == (200, {"log_level": "debug"})
        twins.wait_reported(DEVICE, lambda r: r.get("config", {}).get("log_level") == "debug", 15)
        status, body = twins.invoke(DEVICE, "flush", None, 15)
        assert status == 200 and "pending_readings" in body
        assert twins.invoke(DEVICE, "rollback_model", None, 15)[0] == 409  # nothing to roll back to yet
        assert twins.invoke(DEVICE, "reboot", None, 15)[0] == 404

        # hostile control input (regression: these killed the agent's control thread, which stayed dead
        # while the value sat in the twin): rejected and reported, and the control plane keeps serving
        deep = {"a": 1}
        for _ in range(100):
            deep = {"a": deep}
        spec = json.dumps({"url": "file:///x", "sha256": "0" * 64})[1:-1]
        hostile = ['{"model": {"version": Infinity, ' + spec + '}, "$version": 900}',
                   '{"model": {"version": 1e300, ' + spec + '}, "$version": 901}',
                   json.dumps({"model": deep, "$version": 902})]
        if uplink == "mqtt":  # (the SDK itself drops a non-object patch, logging it; IoT Hub never sends one)
            hostile.append("[1, 2, 3]")
        for i, raw in enumerate(hostile):
            before = twins.twin(DEVICE)["reported"]["$version"]
            twins.client.publish(f"{SCOPE}/{DEVICE}/twin/PATCH/properties/desired/?$version={900 + i}", raw, qos=1)
            rep = twins.wait_reported(DEVICE, lambda r, b=before: r["$version"] > b
                                      and r.get("control", {}).get("status") == "rejected", 15)
            err = rep["control"]["error"]  # (paho's JSON reader refuses Infinity itself; the SDK's reads it)
            assert any(w in err for w in ("model.version", "nested", "not JSON", "object")), err
            assert rep["model"]["version"] == 1
        status, body = twins.invoke(DEVICE, "set_log_level", deep, 15)
        assert status == 400 and "nested" in body["error"], (status, body)
        twins.set_desired(DEVICE, {"threshold": 0.96})
        rep = twins.wait_reported(DEVICE, lambda r: r.get("config", {}).get("threshold") == 0.96, 15)
        assert rep["control"]["status"] == "applied"

        # rollout to a good bundle: every message after the swap names version 2
        good = load_bundle(bundles[1]).manifest
        twins.set_desired(DEVICE, {"model": {"version": 2, "url": bundles[1].as_uri(), "sha256": good.sha256}})
        rep = twins.wait_reported(DEVICE, lambda r: r.get("model", {}).get("version") == 2, 20)
        assert rep["model_rollout"]["status"] == "ok"
        wait_for(lambda: any(m["model"]["version"] == 2 for m in stack.messages()), 15, "v2 on the wire")

        # a corrupt bundle is refused, reported, and scoring continues on version 2
        bad = tmp_path / "corrupt"
        shutil.copytree(bundles[0], bad)
        manifest = json.loads((bad / "manifest.json").read_text())
        raw = bytearray((bad / "model.onnx").read_bytes())
        raw[len(raw) // 2] ^= 0x01
        (bad / "model.onnx").write_bytes(bytes(raw))
        twins.set_desired(DEVICE, {"model": {"version": 1, "url": bad.as_uri(), "sha256": manifest["sha256"]}})
        rep = twins.wait_reported(DEVICE, lambda r: r.get("model_rollout", {}).get("status") == "refused", 20)
        assert "sha256" in rep["model_rollout"]["reason"] and rep["model"]["version"] == 2
        seen = len(stack.messages())
        wait_for(lambda: len(stack.messages()) > seen + 3, 15, "scoring to continue")
        assert all(m["model"]["version"] == 2 for m in stack.messages()[seen:])

        # rollback returns to version 1
        status, body = twins.invoke(DEVICE, "rollback_model", None, 15)
        assert status == 200 and body["model"]["version"] == 1
        twins.wait_reported(DEVICE, lambda r: r.get("model", {}).get("version") == 1, 15)
        seen = len(stack.messages())
        wait_for(lambda: any(m["model"]["version"] == 1 for m in stack.messages()[seen:]), 15, "v1 again")
    finally:
        agent.stop(flush_timeout=2)
