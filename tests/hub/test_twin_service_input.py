"""The hub's twin and method service against hostile device input, over a real Mosquitto.

Regression: a reported patch that is a JSON array, a ``$rid`` of ``#`` or deep nesting used to raise out
of the service's network thread and stop twins and methods for every device.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from contracts.errors import ContractError
from contracts.mqtt import MqttSettings, make_client
from hub.frontend import SCOPE
from hub.hub import Hub, HubConfig

pytestmark = pytest.mark.broker


class Device:
    """A raw MQTT client speaking the scoped twin/method dialect for one device id."""

    def __init__(self, port: int, device: str) -> None:
        self.base = f"{SCOPE}/{device}"
        self.replies: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.client = make_client(MqttSettings(port=port, client_id=f"raw-{device}"))
        self.client.on_message = lambda _c, _u, m: self.replies.put((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{self.base}/twin/res/#", qos=1)
        self.client.loop_start()
        time.sleep(0.2)

    def send(self, path: str, payload: bytes | str) -> None:
        self.client.publish(f"{self.base}/{path}", payload, qos=1).wait_for_publish(5)

    def reply(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return self.replies.get(timeout=timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_hostile_twin_requests_get_a_400_or_are_dropped_and_the_service_keeps_serving(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    hub = Hub(HubConfig(state=tmp_path / "hub", bronze=tmp_path / "bronze", broker_port=broker.port,
                        frontend=None)).start()
    dev = Device(broker.port, "dev-1")
    try:
        assert hub.twins is not None
        deep = "[" * 2000 + "]" * 2000
        nested: Any = {"a": 1}
        for _ in range(40):
            nested = {"a": nested}
        bad = {"array": "[1, 2]", "deep": deep, "nested": json.dumps(nested), "nan": '{"x": NaN}',
               "big": json.dumps({"x": "y" * 40_000}), "garbage": b"\xff\xfe"}
        for rid, payload in bad.items():
            dev.send(f"twin/PATCH/properties/reported/?$rid={rid}", payload)
            topic, body = dev.reply()
            assert topic == f"{dev.base}/twin/res/400/?$rid={rid}", (rid, topic)
            assert json.loads(body)["error"]
        for rid in ("%23", "%2B", "a%2Fb", "x" * 65, ""):  # '#', '+', 'a/b': a reply there is no valid topic
            dev.send(f"twin/GET/?$rid={rid}", b"")
        with pytest.raises(queue.Empty):
            dev.reply(1.0)
        dev.send("twin/PATCH/properties/reported/?$rid=ok1", '{"fw": "1.2"}')
        assert dev.reply()[0].startswith(f"{dev.base}/twin/res/204/?$rid=ok1&$version=")
        dev.send("twin/GET/?$rid=ok2", b"")
        topic, body = dev.reply()
        assert topic == f"{dev.base}/twin/res/200/?$rid=ok2" and json.loads(body)["reported"]["fw"] == "1.2"
        assert hub.twins.errors >= len(bad) + 5
        assert hub.alive and hub.dead_parts() == []
        with pytest.raises(ContractError):  # an operator's patch obeys the same limits
            hub.twins.set_desired("dev-1", {"x": float("inf")})
        with pytest.raises(ContractError):
            hub.twins.set_desired("dev-1", {"blob": "z" * 40_000})
        assert "x" not in hub.twins.twin("dev-1")["desired"]
    finally:
        dev.close()
        hub.stop()


def test_a_method_reply_counts_only_from_the_device_that_was_asked(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    hub = Hub(HubConfig(state=tmp_path / "hub", bronze=tmp_path / "bronze", broker_port=broker.port,
                        frontend=None)).start()
    spy = make_client(MqttSettings(port=broker.port, client_id="spy"))
    asked: queue.Queue[str] = queue.Queue()
    spy.on_message = lambda _c, _u, m: asked.put(m.topic)
    spy.connect("127.0.0.1", broker.port)
    spy.subscribe(f"{SCOPE}/+/methods/POST/#", qos=1)
    spy.loop_start()
    time.sleep(0.2)
    try:
        assert hub.twins is not None
        result: list[tuple[int, Any]] = []
        t = threading.Thread(target=lambda: result.append(hub.twins.invoke("dev-1", "get_status", None, 10)))  # type: ignore[union-attr]
        t.start()
        topic = asked.get(timeout=5)
        rid = topic.rpartition("$rid=")[2]
        assert len(rid) >= 16, "request ids are not guessable"
        spy.publish(f"{SCOPE}/dev-2/methods/res/200/?$rid={rid}", '{"forged": true}', qos=1).wait_for_publish(5)
        time.sleep(0.3)
        assert t.is_alive(), "a reply from another device must not answer the call"
        spy.publish(f"{SCOPE}/dev-1/methods/res/200/?$rid={rid}", '{"ok": true}', qos=1).wait_for_publish(5)
        t.join(10)
        assert result == [(200, {"ok": True})]
    finally:
        spy.loop_stop()
        spy.disconnect()
        hub.stop()
