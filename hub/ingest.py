"""Hub telemetry ingest: `devices/+/messages/events/#` -> bronze, PUBACK only after fsync.

Subscribes with a persistent session (clean_session=False, fixed client id) at QoS 1, so
telemetry published while the hub is down waits in the broker; a message is acknowledged
only after its bronze line is fsynced, so a hub killed mid-stream loses nothing (it may
land a message twice; silver dedups by device_id, boot_id, seq).

A retained telemetry message is landed once, when it is published (subscribers then get it with the
retain flag clear); the copies the broker replays at every (re)subscribe carry the flag and are
acknowledged without landing (`retained_replays`).

Telemetry over MAX_MESSAGE_BYTES (256 KB, IoT Hub's device-to-cloud limit) is refused: acknowledged,
never landed, counted in `refused` (per device in `refused_by_device`) and logged. Any other payload
lands (undecodable ones as base64 with the error, see hub.bronze), so no message can stop the ingest.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from contracts.errors import ContractError
from contracts.mqtt import MqttSettings, deferred_ack_client_class, make_client, subscribe_on_connect
from contracts.telemetry import MAX_MESSAGE_BYTES
from contracts.topics import TELEMETRY_FILTER, parse_telemetry_topic
from hub.bronze import BronzeFormat, BronzeWriter, Landed
from hub.frontend import DeviceRegistry

log = logging.getLogger("edgeflag.hub.ingest")


class HubIngest:
    def __init__(self, settings: MqttSettings, bronze: Path, *, client_id: str = "edgeflag-hub-ingest",
                 fmt: BronzeFormat = BronzeFormat.HUB, registry: DeviceRegistry | None = None,
                 rotate_s: float = 5.0) -> None:
        self.settings = settings
        self.writer = BronzeWriter(bronze, fmt, registry.tags if registry is not None else None, rotate_s=rotate_s)
        self.client_id = client_id
        self.landed = 0
        self.refused = 0
        self.retained_replays = 0
        self.refused_by_device: dict[str, int] = {}
        self.connected = threading.Event()

    def run(self, stop: threading.Event) -> None:
        s = self.settings
        client = make_client(replace(s, client_id=self.client_id, clean_session=False),
                             client_class=deferred_ack_client_class())
        pending: list[tuple[Landed | None, int, int]] = []  # None: refused, acknowledged unlanded
        lock = threading.Lock()

        def on_disconnect(_cl: Any, _u: Any, _rc: int) -> None:
            self.connected.clear()

        def on_message(cl: Any, _u: Any, msg: Any) -> None:
            try:
                device, props = parse_telemetry_topic(msg.topic)
            except ContractError:
                device, props = "", {"topic": msg.topic}
            if msg.retain:  # a retained message replayed on (re)subscribe: it was landed when it was published
                self.retained_replays += 1
                if msg.qos:
                    with lock:
                        pending.append((None, msg.mid, cl.generation))
                return
            if len(msg.payload) > MAX_MESSAGE_BYTES:
                self.refused += 1
                self.refused_by_device[device] = self.refused_by_device.get(device, 0) + 1
                log.warning("refused a %d byte message from %r (limit %d bytes)", len(msg.payload), device,
                            MAX_MESSAGE_BYTES)
                if msg.qos:
                    with lock:
                        pending.append((None, msg.mid, cl.generation))
                return
            with lock:
                pending.append((Landed(device, props, msg.payload, time.time()), msg.mid if msg.qos else -1,
                                cl.generation))

        def next_generation(cl: Any) -> None:
            cl.generation += 1

        # connected once the broker has the subscription: a retained message published before that
        # would arrive as a replay and not be landed
        subscribe_on_connect(client, [(TELEMETRY_FILTER, 1)], self.connected, on_connect=next_generation)
        client.on_disconnect, client.on_message = on_disconnect, on_message
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(0.2, 5)
        client.connect_async(s.host, s.port, s.keepalive)
        client.loop_start()
        def land() -> None:
            with lock:
                items, pending[:] = list(pending), []
            if items:
                landed = [it for it, _, _ in items if it is not None]
                self.writer.write(landed)
                client.release([(m, g) for _, m, g in items if m >= 0])
                self.landed += len(landed)

        try:
            while not stop.wait(0.02):
                land()
                self.writer.tick()
            land()  # what arrived before the stop is landed and acknowledged too
            time.sleep(0.1)  # let the network thread send those PUBACKs
        finally:
            client.disconnect()
            client.loop_stop()
            self.writer.close()
