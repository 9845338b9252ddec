"""Demo step: the real agent, a real broker, an outage in the middle, every reading counted."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

from edgeflag.cli._common import console


class _Receiver:
    """A persistent-session subscriber that records every reading's dedup key."""

    def __init__(self, port: int) -> None:
        import orjson

        from contracts.mqtt import MqttSettings, make_client
        from contracts.topics import TELEMETRY_FILTER

        self.keys: set[tuple[str, str, int]] = set()
        self.anomalous: set[tuple[str, str, int]] = set()  # distinct, like keys (a resend is not a new one)
        self.received = 0
        self._lock = threading.Lock()
        ready = threading.Event()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            m = orjson.loads(msg.payload)
            with self._lock:
                for r in m["readings"]:
                    key = (m["device_id"], m["boot_id"], r["seq"])
                    self.keys.add(key)
                    if r["anomaly"]:
                        self.anomalous.add(key)
                self.received += len(m["readings"])

        self.client = make_client(MqttSettings(port=port, client_id="edgeflag-demo-cloud", clean_session=False))
        self.client.on_connect = lambda c, u, f, rc: c.subscribe(TELEMETRY_FILTER, qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = on_message
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        ready.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_agent_demo(workdir: Path, bundle: Path, *, devices: int, readings: int = 3000,
                   rate: float = 20000.0, seed: int = 42) -> dict[str, Any]:
    """Run the agent through a broker outage; returns the delivery figures (lost must be 0), the outbox
    backlog sampled every ~50 ms (`backlog`: seconds, readings) and when the outage began and ended."""
    from edge_agent.agent import Agent
    from edge_agent.config import build_config
    from hub.mosquitto import Broker

    state = workdir / "agent-state"
    shutil.rmtree(state, ignore_errors=True)
    broker = Broker(workdir, persistence=True)
    broker.start()
    receiver = _Receiver(broker.port)
    cfg = build_config({
        "agent": {"state_dir": str(state), "status_interval_s": 3600.0},
        "model": {"bundle": str(bundle)},
        "source": {"type": "simulator", "devices": devices, "readings": readings, "rate": rate, "seed": seed},
        "uplink": {"type": "mqtt", "port": broker.port, "rate_messages_per_s": 0.0, "backoff_initial_s": 0.1,
                   "backoff_max_s": 1.0},
        "log": {"level": "error"},
    }, environ={})
    agent = Agent(cfg)
    total = devices * readings
    console.print(f"  agent: {devices} simulated devices x {readings:,} readings at {rate:,.0f}/s -> "
                  f"mqtt://127.0.0.1:{broker.port} (QoS 1), outbox {state}/outbox.db")
    start = time.perf_counter()
    backlog: list[tuple[float, int]] = []  # (seconds since start, readings waiting in the outbox)
    outage: list[float] = []

    def sample() -> None:
        backlog.append((time.perf_counter() - start, agent.outbox.stats().readings))

    agent.start()
    while agent.metrics.snapshot()["readings_in"] < total // 3:
        sample()
        time.sleep(0.05)
    broker.stop()
    outage.append(time.perf_counter() - start)
    console.print(f"  broker stopped after {agent.metrics.snapshot()['readings_in']:,} readings; "
                  "the agent keeps scoring into its outbox …")
    until = time.perf_counter() + 2.0
    while time.perf_counter() < until:
        sample()
        time.sleep(0.05)
    held = agent.outbox.stats()
    console.print(f"  … outbox now holds {held.readings:,} readings ({held.bytes / 1024:,.0f} KiB); restarting broker")
    outage.append(time.perf_counter() - start)  # the restart begins: the agent reconnects once it is up
    broker.start()
    while not agent.drained():
        sample()
        time.sleep(0.05)
    sample()
    elapsed = time.perf_counter() - start
    snap = agent.metrics.snapshot()
    agent.stop(flush_timeout=5)
    time.sleep(0.5)
    receiver.close()
    broker.stop()
    lost = total - len(receiver.keys)
    console.print(f"  produced {snap['readings_in']:,}, scored {snap['scored']:,}, flagged {snap['flagged']:,}; "
                  f"uplink errors during the outage {snap['uplink_errors']}")
    console.print(f"  cloud side received {len(receiver.keys):,} distinct readings "
                  f"({receiver.received - len(receiver.keys):,} duplicates, {len(receiver.anomalous):,} anomalies) "
                  f"in {elapsed:.1f} s — lost: {lost}")
    if lost:
        console.print("  [red]readings were lost — this is a bug[/red]")
    return {"produced": int(snap["readings_in"]), "scored": int(snap["scored"]), "flagged": int(snap["flagged"]),
            "delivered": len(receiver.keys), "duplicates": receiver.received - len(receiver.keys), "lost": lost,
            "outbox_peak_readings": max(n for _t, n in backlog), "uplink_errors": int(snap["uplink_errors"]),
            "seconds": round(elapsed, 2), "backlog": backlog, "outage_s": outage}
