"""The hub's own backend broker authenticates every identity (hub/backend.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from broker import Broker

from edge_agent.packing import Message
from edge_agent.sinks.mqtt import MqttSink, MqttUplinkConfig
from hub.backend import BackendAuth
from hub.bronze import read_bronze
from hub.mosquitto import free_loopback_address, free_port

ROOT = Path(__file__).resolve().parents[2]
HUB = "edgeflag-hub.local"


def connack(port: int, username: str | None, password: str | None) -> int | None:
    """The CONNACK code a fresh client gets on 127.0.0.1:port (None: no answer)."""
    got: dict[str, int] = {}
    done = threading.Event()
    c = mqtt.Client(client_id=f"probe-{time.monotonic_ns()}")
    if username is not None:
        c.username_pw_set(username, password)

    def on_connect(_c: Any, _u: Any, _f: Any, rc: int) -> None:
        got["rc"] = rc
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port, 10)
    c.loop_start()
    done.wait(10)
    c.disconnect()
    c.loop_stop()
    return got.get("rc")


def test_the_password_file_is_what_mosquitto_checks(tmp_path: Path) -> None:
    auth = BackendAuth(tmp_path / "state")
    auth.write_password_file(["alice", "edgeflag-hub"])
    assert oct(auth.secret_file.stat().st_mode & 0o777) == "0o600"
    assert oct(auth.password_file.stat().st_mode & 0o777) == "0o600"
    b = Broker(tmp_path, password_file=auth.password_file)
    b.start()
    try:
        assert connack(b.port, "alice", auth.password("alice")) == 0
        assert connack(b.port, "alice", auth.password("bob")) == 5
        assert connack(b.port, "bob", auth.password("bob")) == 5, "users not in the file are refused"
        assert connack(b.port, None, None) == 5, "no anonymous access"
    finally:
        b.stop()
    assert BackendAuth(tmp_path / "state").password("alice") == auth.password("alice"), "the secret persists"


@pytest.mark.slow
def test_hub_run_backend_refuses_direct_devices_and_admits_a_device_registered_while_running(tmp_path: Path) -> None:
    host, port = free_loopback_address(8883), free_port()
    state, bronze = tmp_path / "hub-state", tmp_path / "bronze"
    common = ["--state", str(state), "--broker", f"127.0.0.1:{port}"]
    hub = subprocess.Popen([sys.executable, "-m", "edgeflag", "hub", "run", "--start-broker", *common,
                            "--bronze", str(bronze), "--frontend", host, "--seconds", "120"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hub.stdout is not None
        for line in hub.stdout:
            if line.startswith("hub:"):
                break
        else:
            raise AssertionError(f"hub did not start: {hub.stderr.read() if hub.stderr else ''}")
        assert connack(port, "dev-late", None) == 5, "the backend does not trust a bare device username"
        assert connack(port, "edgeflag-hub", None) == 5
        r = subprocess.run([sys.executable, "-m", "edgeflag", "hub", "device", *common, "dev-late"],
                           cwd=ROOT, capture_output=True, text=True, check=True)
        key = r.stdout.strip().split("SharedAccessKey=")[1].split(";")[0]
        sink = MqttSink(MqttUplinkConfig(host=host, port=8883, ca_file=str(state / "pki" / "ca.pem"),
                                      client_id="dev-late", device_id="dev-late", sas_key=key,
                                      username=f"{HUB}/dev-late/?api-version=2021-04-12", iothub_hostname=HUB,
                                      dialect="iothub"))
        sink.connect(timeout=10)
        try:
            payload = b'{"v":1,"device_id":"dev-late","readings":[]}'
            msg = Message(device_id="dev-late", topic="devices/dev-late/messages/events/", payload=payload,
                          properties={}, ids=(1,), readings=0, anomalies=0)
            assert sink.send(msg, 1)
            deadline = time.monotonic() + 10
            while 1 not in sink.confirmed() and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            sink.close()
        deadline = time.monotonic() + 10
        while not list(read_bronze(bronze)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [r["topic_device"] for r in read_bronze(bronze)] == ["dev-late"]
        r = subprocess.run([sys.executable, "-m", "edgeflag", "hub", "twin", "set", *common, "dev-late", "x=1"],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    finally:
        os.kill(hub.pid, signal.SIGTERM)
        hub.wait(30)


def test_the_hubs_broker_caps_what_one_client_can_make_it_hold(tmp_path: Path) -> None:
    """Regression: the backend broker had no queue or packet caps (a subscriber that never read grew it to 2.4 GB)."""
    from hub.mosquitto import BrokerLimits

    b = Broker(tmp_path, limits=BrokerLimits(max_queued_messages=50, max_queued_bytes=1 << 20, max_packet_size=4096))
    b.start()
    try:
        got: list[bytes] = []
        subscribed = threading.Event()
        sub = mqtt.Client(client_id="stays-away", clean_session=False)
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.on_message = lambda _c, _u, m: got.append(m.payload)
        sub.connect("127.0.0.1", b.port)
        sub.loop_start()
        sub.subscribe("devices/#", qos=1)
        assert subscribed.wait(5)
        sub.disconnect()
        sub.loop_stop()
        pub = mqtt.Client(client_id="talker")
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        for i in range(200):
            pub.publish("devices/d/messages/events/", f"{i:06d}".encode(), qos=1).wait_for_publish(5)
        lost = threading.Event()
        pub.on_disconnect = lambda *a: lost.set()
        pub.publish("devices/d/messages/events/", b"x" * 8192, qos=1)
        assert lost.wait(5), "a packet over max_packet_size must cost the connection"
        pub.loop_stop()
        sub.on_connect = lambda *a: None
        sub.reconnect()
        sub.loop_start()
        time.sleep(1.0)
        sub.loop_stop()
        assert 0 < len(got) <= 50 + 20, f"the offline session held {len(got)} of 200 (cap 50 + in-flight)"
    finally:
        b.stop()
