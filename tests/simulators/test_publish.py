from __future__ import annotations

import json
import threading
import time

import pytest

from contracts.mqtt import MqttSettings, make_client
from contracts.reading import Reading
from simulators import Fleet, FleetConfig, SimulatorError
from simulators.publish import publish_blocks

pytestmark = pytest.mark.broker


def test_published_readings_arrive_at_a_real_broker_at_the_target_rate(broker) -> None:  # type: ignore[no-untyped-def]
    got: list[Reading] = []
    ready = threading.Event()
    sub = make_client(MqttSettings(port=broker.port, client_id="test-sub"))
    sub.on_connect = lambda c, u, f, rc: (c.subscribe("edgeflag/sensors/+", qos=1), ready.set())
    sub.on_message = lambda c, u, m: got.append(Reading.from_dict(json.loads(m.payload)))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    assert ready.wait(5)
    time.sleep(0.2)
    fleet = Fleet(FleetConfig(devices=4, seed=1))
    report = publish_blocks(fleet.blocks(100, chunk=25), MqttSettings(port=broker.port, client_id="sim"),
                            rate=1000.0, qos=1)
    deadline = time.monotonic() + 5
    while len(got) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.loop_stop()
    sub.disconnect()
    assert report.published == report.confirmed == 400
    assert len(got) == 400
    assert {(r.device_id, r.seq) for r in got} == {(f"dev-000{d}", s) for d in range(1, 5) for s in range(100)}
    assert 0.35 <= report.elapsed_s <= 3.0, "1000 readings/s target for 400 readings"
    assert report.rate <= 1100


def test_an_unreachable_broker_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from broker import free_port

    with pytest.raises(SimulatorError, match="cannot reach MQTT broker"):
        publish_blocks(Fleet(FleetConfig(devices=1)).blocks(1), MqttSettings(port=free_port()))
