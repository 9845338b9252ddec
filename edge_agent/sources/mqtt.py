"""`mqtt` source: readings published by local sensors on ``{topic_prefix}/{device_id}``.

Subscribes at QoS 1 with a persistent session (clean_session=False, fixed client id), so
the broker keeps readings while the agent is down. PUBACK is deferred until the agent
has stored the reading: paho-mqtt 1.6 acknowledges right after `on_message`, so the client
here records the message ids instead and sends the PUBACKs when the batch's `ack` runs.
A reading that was stored but not yet acknowledged when the agent died is redelivered by
the broker and then quarantined as a duplicate (its seq is already stored).
Throughput is bounded by the broker's in-flight window per client (Mosquitto's
`max_inflight_messages`, 20 by default) divided by the commit latency.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from contracts.mqtt import MqttSettings, deferred_ack_client_class, make_client
from contracts.topics import sensor_filter
from edge_agent.config import SourceConfig, check
from edge_agent.sources.base import Batch, Emit, Source, register


class MqttSourceConfig(SourceConfig, tag="mqtt", frozen=True, forbid_unknown_fields=True):
    """type = "mqtt": readings on ``{topic_prefix}/{device_id}`` from the broker at `host`:`port`
    (TLS when `ca_file` is set), under the persistent session `client_id` (unique per source)."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "edgeflag/sensors"
    client_id: str = "edgeflag-agent-source"
    ca_file: str = ""
    username: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        check(1 <= self.port <= 65535, "port", "must be a TCP port")
        check(bool(self.client_id), "client_id", "required: the broker keeps readings for this session")
        check(bool(self.topic_prefix) and not any(c in self.topic_prefix for c in "+#"), "topic_prefix",
              "must be a topic without wildcards")


@register("mqtt")
class MqttSource(Source):
    Config = MqttSourceConfig
    config: MqttSourceConfig

    def run(self, emit: Emit, stop: threading.Event) -> None:
        c = self.config
        settings = MqttSettings(host=c.host, port=c.port, client_id=c.client_id, username=c.username or None,
                                password=c.password or None, ca_file=None if not c.ca_file else _path(c.ca_file),
                                clean_session=False)
        client = make_client(settings, client_class=deferred_ack_client_class())
        pending: list[tuple[bytes, int, int]] = []
        lock = threading.Lock()

        def on_connect(cl: Any, _u: Any, _f: Any, rc: int) -> None:
            if rc == 0:
                cl.generation += 1
                cl.subscribe(sensor_filter(c.topic_prefix), qos=1)

        def on_message(cl: Any, _u: Any, msg: Any) -> None:
            with lock:
                pending.append((msg.payload, msg.mid if msg.qos else -1, cl.generation))

        client.on_connect = on_connect
        client.on_message = on_message
        client.reconnect_delay_set(0.5, 10)
        client.connect_async(c.host, c.port, 30)
        client.loop_start()
        try:
            while not stop.is_set():
                time.sleep(0.01)
                with lock:
                    if not pending:
                        continue
                    items, pending[:] = list(pending), []
                mids = [(m, g) for _, m, g in items if m >= 0]

                def ack(d: list[tuple[int, int]] = mids) -> None:
                    client.release(d)

                if not emit(Batch(raw=[p for p, _, _ in items], ack=ack)):
                    return
        finally:
            client.disconnect()
            client.loop_stop()


def _path(p: str) -> Any:
    from pathlib import Path

    return Path(p)
