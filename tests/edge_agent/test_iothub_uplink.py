"""The `iothub` uplink with the real azure-iot-device SDK, over TLS, against Mosquitto + the hub."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from helpers import wait_for

from edge_agent.agent import Agent
from edge_agent.config import build_config
from hub.bronze import read_bronze
from hub.certs import make_ca, make_server
from hub.hub import Hub, HubConfig
from hub.mosquitto import TlsListener, free_loopback_address

pytestmark = [pytest.mark.broker, pytest.mark.slow]

KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def tls_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    host = free_loopback_address(8883)  # the SDK's port is fixed at 8883
    ca = make_ca(tmp_path / "pki")
    server = make_server(ca, tmp_path / "pki", [host, "edgeflag-hub.local"])
    # the SDK reaches Mosquitto directly here (no front end), with IoT Hub usernames: no ACL
    hub = Hub(HubConfig(state=tmp_path / "hub", bronze=tmp_path / "bronze", start_broker=True, broker_port=0,
                        broker_auth=False, broker_acl=False, frontend=None, twins=False,
                        broker_tls=TlsListener(host, 8883, ca.cert, server.cert, server.key)))
    hub.start()
    yield hub, host, ca.cert
    hub.stop()


def test_sdk_telemetry_lands_in_bronze_with_its_properties(tmp_path: Path, tls_broker, trained_small) -> None:  # type: ignore[no-untyped-def]
    hub, host, ca = tls_broker
    conn = f"HostName=edgeflag-hub.local;DeviceId=gw-1;SharedAccessKey={KEY};GatewayHostName={host}"
    cfg = build_config({
        "agent": {"state_dir": str(tmp_path / "state"), "status_interval_s": 3600.0},
        "model": {"bundle": str(trained_small[0])},
        "source": {"type": "simulator", "devices": 2, "readings": 600, "seed": 3},
        "uplink": {"type": "iothub", "connection_string": conn, "ca_file": str(ca), "rate_messages_per_s": 0.0,
                   "max_inflight": 64},
        "log": {"level": "warning"},
    }, environ={})
    assert "SharedAccessKey" not in str(cfg.redacted())
    agent = Agent(cfg)
    agent.start()
    wait_for(agent.drained, 60, "delivery through the SDK")
    snap = agent.metrics.snapshot()
    agent.stop()
    time.sleep(0.5)
    hub.stop()
    records = read_bronze(tmp_path / "bronze")
    keys = {(r["body"]["device_id"], r["body"]["boot_id"], x["seq"]) for r in records for x in r["body"]["readings"]}
    assert snap["sent"] == 1200 and len(keys) == 1200
    assert {r["topic_device"] for r in records} == {"gw-1"}, "the SDK sends under its own identity"
    props = records[0]["properties"]
    assert props["$.ct"] == "application/json" and props["$.ce"] == "utf-8"
    assert props["schema"] == "1" and props["model"].startswith("small:")
    events = [r for r in records if r["body"].get("type") == "anomaly_event"]
    telemetry = [r for r in records if r not in events]
    flagged = [r for r in telemetry if r["body"]["anomalies"]]
    assert all(r["properties"]["anomaly"] == "true" for r in flagged)
    assert all(r["properties"]["anomaly"] == "false" for r in telemetry if not r["body"]["anomalies"])
    # anomaly events: their own messages, routable on their own application property, through the SDK too
    opened = [e for r in events for e in r["body"]["events"] if e["kind"] == "open"]
    assert all(r["properties"]["message"] == "anomaly_event" and "anomaly" not in r["properties"] for r in events)
    assert len(opened) == snap["anomaly_events"].get("open", 0) > 0


def test_a_wrong_ca_is_refused_and_retried_without_leaking_the_key(tmp_path: Path, tls_broker, trained_small,
                                                                  caplog) -> None:  # type: ignore[no-untyped-def]
    _broker, host, _ = tls_broker
    other = make_ca(tmp_path / "other")
    conn = f"HostName=edgeflag-hub.local;DeviceId=gw-1;SharedAccessKey={KEY};GatewayHostName={host}"
    cfg = build_config({
        "agent": {"state_dir": str(tmp_path / "state")}, "model": {"bundle": str(trained_small[0])},
        "source": {"type": "simulator", "devices": 1, "readings": 50},
        "uplink": {"type": "iothub", "connection_string": conn, "ca_file": str(other.cert),
                   "backoff_initial_s": 0.1, "backoff_max_s": 0.2},
        "log": {"level": "warning"},
    }, environ={})
    agent = Agent(cfg)
    agent.start()
    wait_for(lambda: agent.metrics.snapshot()["uplink_errors"] >= 2 and agent.pump.done.is_set()
             and agent._processed == agent.pump.emitted, 30, "refused connections and every reading stored")
    assert agent.outbox.stats().readings == 50, "nothing is lost while the uplink is refused"
    assert KEY not in agent.last_error
    agent.stop(flush_timeout=0.5)
