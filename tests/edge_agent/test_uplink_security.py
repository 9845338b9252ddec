"""Security over both uplinks: wrong keys are refused, devices are isolated, secrets stay out of logs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from helpers import expected_keys, wait_for

from edge_agent.agent import Agent
from edge_agent.config import build_config
from hub.bronze import read_bronze
from hub.hub import Hub, HubConfig
from hub.mosquitto import free_loopback_address
from hub.twins import HUB_USER

pytestmark = [pytest.mark.broker, pytest.mark.slow]
HUB = "edgeflag-hub.local"


class SecureHub:
    """The hub with its backend Mosquitto (ACLs), TLS front end and bronze ingest, restartable like a real hub."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.host = free_loopback_address(8883)
        self.hub = Hub(HubConfig(state=tmp / "hub", bronze=tmp / "bronze", start_broker=True, broker_port=0,
                                 broker_auth=False, frontend=self.host))
        self.keys = {d: self.hub.registry.add(d) for d in ("gw-1", "gw-2")}
        self.hub.start()
        assert self.hub.broker is not None
        self.broker, self.ca = self.hub.broker, self.hub.ca_file
        self.server_cert, self.server_key = self.hub.pki / "server.pem", self.hub.pki / "server.key"

    @property
    def front(self):  # type: ignore[no-untyped-def]
        return self.hub.front

    def stop_all(self) -> None:
        self.hub.stop_frontend()
        self.hub.stop_ingest()

    def start_all(self) -> None:
        self.hub.start_frontend()
        self.hub.start_ingest()

    def keys_landed(self) -> set[tuple[str, str, int]]:
        return {(r["body"]["device_id"], r["body"]["boot_id"], x["seq"])
                for r in read_bronze(self.tmp / "bronze") if "body" in r for x in r["body"]["readings"]}


@pytest.fixture
def hub(tmp_path: Path):  # type: ignore[no-untyped-def]
    h = SecureHub(tmp_path)
    yield h
    h.hub.stop()


def agent_cfg(tmp: Path, bundle: Path, uplink: dict[str, Any], readings: int, rate: float = 0.0) -> Any:
    return build_config({
        "agent": {"state_dir": str(tmp / "state"), "status_interval_s": 3600.0},
        "model": {"bundle": str(bundle)},
        "source": {"type": "simulator", "devices": 2, "readings": readings, "rate": rate, "seed": 5},
        "uplink": {**uplink, "rate_messages_per_s": 0.0, "backoff_initial_s": 0.1, "backoff_max_s": 0.5},
        "log": {"level": "info"},
    }, environ={})


def sdk_uplink(hub: SecureHub, key: str) -> dict[str, Any]:
    cs = f"HostName={HUB};DeviceId=gw-1;SharedAccessKey={key};GatewayHostName={hub.host}"
    return {"type": "iothub", "connection_string": cs, "ca_file": str(hub.ca)}


def mqtt_uplink(hub: SecureHub, key: str) -> dict[str, Any]:
    return {"type": "mqtt", "host": hub.host, "port": 8883, "ca_file": str(hub.ca), "client_id": "gw-1",
            "device_id": "gw-1", "username": f"{HUB}/gw-1/?api-version=2021-04-12", "sas_key": key,
            "iothub_hostname": HUB, "dialect": "iothub"}


@pytest.mark.parametrize("kind", ["iothub", "mqtt"])
def test_a_wrong_key_is_refused_nothing_is_lost_and_no_secret_is_logged(tmp_path: Path, hub: SecureHub, trained_small,
                                                                       kind: str, capfd) -> None:  # type: ignore[no-untyped-def]
    make = sdk_uplink if kind == "iothub" else mqtt_uplink
    agent = Agent(agent_cfg(tmp_path, trained_small[0], make(hub, hub.keys["gw-2"]), readings=100))
    agent.start()
    wait_for(lambda: agent.metrics.snapshot()["uplink_errors"] >= 2 and agent.pump.done.is_set()
             and agent._processed == agent.pump.emitted, 30, "refused connections and every reading stored")
    assert agent.outbox.stats().readings == 200 and not agent.sink.connected
    assert "SAS signature does not match the device key" in hub.front.stats.refused  # type: ignore[union-attr]
    agent.stop(flush_timeout=0.2)
    out, err = capfd.readouterr()
    for secret in hub.keys.values():
        assert secret not in out + err + agent.last_error


@pytest.mark.parametrize("kind", ["iothub", "mqtt"])
def test_the_hub_restarted_mid_stream_loses_nothing(tmp_path: Path, hub: SecureHub, trained_small, kind: str) -> None:  # type: ignore[no-untyped-def]
    make = sdk_uplink if kind == "iothub" else mqtt_uplink
    agent = Agent(agent_cfg(tmp_path, trained_small[0], make(hub, hub.keys["gw-1"]), readings=1500, rate=1000.0))
    agent.start()
    wait_for(lambda: agent.metrics.snapshot()["sent"] > 300, 30, "first deliveries")
    hub.stop_all()  # the whole hub goes away: front end and ingest
    time.sleep(1.0)
    hub.start_all()
    wait_for(agent.drained, 60, "the backlog to drain after the hub came back")
    streams = agent.outbox.streams()
    agent.stop()
    want = expected_keys(streams, 2, 1500)
    wait_for(lambda: hub.keys_landed() >= want, 20, "bronze to hold every reading")
    assert hub.keys_landed() == want
    assert agent.metrics.snapshot()["uplink_errors"] >= 1


def test_mosquitto_acls_isolate_devices_on_the_scoped_mqtt_dialect(tmp_path: Path, hub: SecureHub) -> None:
    """Without the front end (a production broker), %u ACLs keep each device to its own topics."""
    got: dict[str, list[str]] = {"dev-a": [], "hub": []}

    def client(user: str, sink: list[str]) -> mqtt.Client:
        c = mqtt.Client(client_id=user)
        c.username_pw_set(user)
        c.on_message = lambda _c, _u, m: sink.append(m.topic)
        c.connect("127.0.0.1", hub.broker.port)
        c.loop_start()
        return c

    spy = client(HUB_USER, got["hub"])
    spy.subscribe("devices/#", 1)
    a = client("dev-a", got["dev-a"])
    a.subscribe([("edgeflag/iothub/dev-b/#", 1), ("edgeflag/iothub/dev-a/#", 1)])
    time.sleep(0.3)
    a.publish("devices/dev-b/messages/events/", b"forged", qos=1).wait_for_publish(5)
    a.publish("devices/dev-a/messages/events/", b"mine", qos=1).wait_for_publish(5)
    spy.publish("edgeflag/iothub/dev-b/twin/res/200/?$rid=1", b"{}", qos=1)
    spy.publish("edgeflag/iothub/dev-a/twin/res/200/?$rid=2", b"{}", qos=1)
    time.sleep(0.5)
    for c in (a, spy):
        c.loop_stop()
    assert got["hub"] == ["devices/dev-a/messages/events/"], "the forged publish never reaches the hub"
    assert got["dev-a"] == ["edgeflag/iothub/dev-a/twin/res/200/?$rid=2"], "A sees only its own twin"


def test_an_x509_device_sends_through_the_sdk(tmp_path: Path, hub: SecureHub, trained_small) -> None:  # type: ignore[no-untyped-def]
    from hub.certs import make_ca, make_device

    cert = make_device(make_ca(hub.hub.pki), hub.hub.pki, "gw-1")
    uplink = {"type": "iothub", "cert_file": str(cert.cert), "key_file": str(cert.key), "iothub_hostname": HUB,
              "device_id": "gw-1", "gateway_hostname": hub.host, "ca_file": str(hub.ca)}
    agent = Agent(agent_cfg(tmp_path, trained_small[0], uplink, readings=200))
    agent.start()
    wait_for(agent.drained, 60, "X.509 delivery")
    streams = agent.outbox.streams()
    agent.stop()
    want = expected_keys(streams, 2, 200)
    wait_for(lambda: hub.keys_landed() >= want, 20, "bronze")
    assert hub.front is not None and hub.front.stats.accepted >= 1 and not hub.front.stats.refused


def test_an_expired_token_is_refused_on_the_mqtt_uplink(tmp_path: Path, hub: SecureHub, trained_small) -> None:  # type: ignore[no-untyped-def]
    from contracts.mqtt import sas_token

    uplink = {**mqtt_uplink(hub, hub.keys["gw-1"]), "sas_key": "",
              "password": sas_token(HUB, "gw-1", hub.keys["gw-1"], ttl_s=-5)}
    agent = Agent(agent_cfg(tmp_path, trained_small[0], uplink, readings=50))
    agent.start()
    wait_for(lambda: agent.metrics.snapshot()["uplink_errors"] >= 1, 30, "a refused connection")
    assert hub.front is not None and hub.front.stats.refused.get("SAS token expired", 0) >= 1
    assert "not authorised" in agent.last_error.lower() or "refused" in agent.last_error.lower()
    agent.stop(flush_timeout=0.2)
