"""The MQTT uplink's own network thread (edge_agent/sinks/netloop.py) against a real Mosquitto."""

from __future__ import annotations

import time

from broker import Broker

from edge_agent.packing import Message
from edge_agent.sinks.mqtt import MqttSink, MqttUplinkConfig
from edge_agent.sinks.netloop import NetworkLoop


def message(i: int) -> Message:
    return Message(device_id="dev-1", topic="devices/dev-1/messages/events/", payload=b'{"i":%d}' % i,
                   properties={}, ids=(i,), readings=1, anomalies=0)


def confirm_all(sink: MqttSink, tokens: set[int], timeout: float = 10.0) -> set[int]:
    got: set[int] = set()
    deadline = time.monotonic() + timeout
    while got != tokens and time.monotonic() < deadline:
        got.update(sink.confirmed())
        time.sleep(0.005)
    return got


def test_a_burst_of_publishes_wakes_the_network_thread_a_few_times_and_all_are_acked(broker: Broker,
                                                                                    monkeypatch: object) -> None:
    wakes = 0
    original = NetworkLoop.wake

    def counting(self: NetworkLoop) -> None:
        nonlocal wakes
        wakes += 1
        original(self)

    monkeypatch.setattr(NetworkLoop, "wake", counting)  # type: ignore[attr-defined]
    sink = MqttSink(MqttUplinkConfig(port=broker.port, client_id="burst", max_inflight=1000))
    sink.connect(timeout=5)
    try:
        wakes = 0
        assert all(sink.send(message(i), i) for i in range(1, 801))
        assert confirm_all(sink, set(range(1, 801))) == set(range(1, 801))
        assert wakes < 800 / 4, f"{wakes} wake-ups for 800 publishes: writes are not batched"
    finally:
        sink.close()
    assert not sink.connected


def test_keepalive_pings_keep_an_idle_connection_open(broker: Broker) -> None:
    sink = MqttSink(MqttUplinkConfig(port=broker.port, client_id="idle", keepalive_s=1))
    sink.connect(timeout=5)
    seen: list[str] = []
    sink._client.on_log = lambda _c, _u, _level, text: seen.append(text)
    try:
        time.sleep(2.5)
        assert any("PINGRESP" in t for t in seen), f"no keepalive round trip while idle: {seen}"
        assert sink.connected
        assert sink.send(message(1), 1)
        assert confirm_all(sink, {1}) == {1}
    finally:
        sink.close()


def test_a_broker_that_goes_away_is_noticed(broker: Broker) -> None:
    sink = MqttSink(MqttUplinkConfig(port=broker.port, client_id="gone"))
    sink.connect(timeout=5)
    broker.stop()
    deadline = time.monotonic() + 10
    while sink.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sink.connected
    sink.close()
