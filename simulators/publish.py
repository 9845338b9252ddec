"""Publish simulated readings to an MQTT broker at a target rate.

Each reading is one message (the Reading contract's JSON) on
``edgeflag/sensors/{device_id}``. Pacing is by wall clock: the publisher sleeps so
that after k readings at least k / rate seconds have passed, so the achieved rate
never exceeds the target; the report says what was achieved.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from contracts.block import ReadingBlock
from contracts.mqtt import MqttSettings, make_client
from contracts.reading import READING_SCHEMA
from contracts.topics import SENSOR_PREFIX, sensor_topic
from simulators.errors import SimulatorError


@dataclass(frozen=True, slots=True)
class PublishReport:
    """What a publish run did."""

    published: int
    confirmed: int
    elapsed_s: float
    target_rate: float | None

    @property
    def rate(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, float | int | None]:
        return {"published": self.published, "confirmed": self.confirmed,
                "elapsed_s": round(self.elapsed_s, 3), "achieved_rate": round(self.rate, 1),
                "target_rate": self.target_rate}


def block_payloads(block: ReadingBlock) -> list[bytes]:
    """One Reading-contract JSON payload per reading of the block."""
    ts = block.ts_strings()
    vals = block.values.tolist()
    out = []
    for i in range(len(block)):
        obj = {"v": READING_SCHEMA, "device_id": block.device_id, "ts": ts[i], "seq": int(block.seq[i]),
               "values": dict(zip(block.channels, vals[i], strict=True))}
        if block.labels is not None:
            obj["label"] = int(block.labels[i])
            obj["fault"] = (block.faults[i] if block.faults is not None else "") or None
        out.append(json.dumps(obj, separators=(",", ":")).encode())
    return out


def publish_blocks(
    chunks: Iterable[Sequence[ReadingBlock]],
    settings: MqttSettings,
    *,
    rate: float | None = None,
    qos: int = 1,
    prefix: str = SENSOR_PREFIX,
    on_progress: Callable[[int], None] | None = None,
    connect_timeout: float = 10.0,
) -> PublishReport:
    """Publish every reading, interleaved by time across devices; wait for all QoS 1 acks."""
    client = make_client(settings)
    connected = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_connect(_c: object, _u: object, _f: object, rc: int) -> None:
        if rc == 0:
            connected.set()

    def on_publish(_c: object, _u: object, _mid: int) -> None:
        nonlocal acked
        with lock:
            acked += 1

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    try:
        client.connect(settings.host, settings.port, settings.keepalive)
    except OSError as exc:
        raise SimulatorError(f"cannot reach MQTT broker {settings.host}:{settings.port}: {exc}") from exc
    client.loop_start()
    if not connected.wait(connect_timeout):
        client.loop_stop()
        raise SimulatorError(f"MQTT broker {settings.host}:{settings.port} did not accept the connection")
    sent = 0
    start = time.monotonic()
    try:
        for blocks in chunks:
            payloads = [block_payloads(b) for b in blocks]
            n = max(len(p) for p in payloads)
            for i in range(n):
                for b, p in zip(blocks, payloads, strict=True):
                    if i >= len(p):
                        continue
                    client.publish(sensor_topic(b.device_id, prefix), p[i], qos=qos)
                    sent += 1
                    if rate:
                        ahead = sent / rate - (time.monotonic() - start)
                        if ahead > 0.002:
                            time.sleep(ahead)
                if on_progress and i % 100 == 0:
                    on_progress(sent)
        deadline = time.monotonic() + 30.0
        while qos > 0 and acked < sent and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        elapsed = time.monotonic() - start
        client.disconnect()
        client.loop_stop()
    if on_progress:
        on_progress(sent)
    return PublishReport(published=sent, confirmed=acked if qos > 0 else sent, elapsed_s=elapsed,
                         target_rate=rate)
