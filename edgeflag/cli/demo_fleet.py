"""The demo's edge fleet: gateway agents as real ``edgeflag agent run`` processes, and what they report.

One simulated fleet (`FleetPlan`: every device type, one seed, one fleet fault) is split between the
gateways: per device type one gateway over the ``iothub`` uplink (the azure-iot-device SDK) and one over
``mqtt`` (paho in IoT Hub's MQTT dialect), both through the hub's TLS front end. Every gateway simulates
the same fleet and emits its share of it, so device ids are unique, a fleet fault spans both gateways
of its type in the same minutes, and the demo can regenerate every reading's ground truth afterwards.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TYPES = ("pump", "compressor", "chiller")
UPLINKS = ("iothub", "mqtt")


@dataclass(frozen=True)
class FleetPlan:
    """The simulated fleet of a demo run and its timeline in simulated seconds.

    `speed`: readings per device per wall-clock second (each reading is one simulated second, so the
    demo runs `speed` x faster than real time); the fleet fault hits `fault_devices` devices of
    `fault_type` from `fault_start_s` for `fault_span` readings (two minutes: the features stop flagging
    a level shift after ~70 readings, docs/detection.md, so a much longer fault would read as two
    incidents).
    """

    devices: int
    seed: int
    speed: float
    anomaly_rate: float
    fault_type: str
    fault_devices: int
    fault_start_s: int
    fault_span: int

    @classmethod
    def for_run(cls, devices: int, seed: int, minutes: float, speed: float = 20.0) -> FleetPlan:
        per_type = devices // len(TYPES)
        sim_s = minutes * 60 * speed
        return cls(devices=devices, seed=seed, speed=speed, anomaly_rate=0.0004, fault_type=TYPES[0],
                   fault_devices=max(2, math.ceil(0.6 * per_type)), fault_start_s=int(0.15 * sim_s),
                   fault_span=120)

    @property
    def fleet_fault(self) -> str:
        return f"{self.fault_type}:{self.fault_devices}:{self.fault_start_s}:level_shift:{self.fault_span}"

    def source(self) -> dict[str, Any]:
        """The simulator keys every gateway shares (`edge_agent.sources.simulator`)."""
        return {"type": "simulator", "devices": self.devices, "seed": self.seed, "anomaly_rate": self.anomaly_rate,
                "device_types": list(TYPES), "fleet_faults": [self.fleet_fault], "readings": 0}

    def source_config(self, **pick: Any) -> Any:
        """The shared keys as a checked `SimulatorSourceConfig`; `pick`: only_type / shard / shards."""
        from edge_agent.sources.simulator import SimulatorSourceConfig

        return SimulatorSourceConfig(devices=self.devices, seed=self.seed, anomaly_rate=self.anomaly_rate,
                                     device_types=TYPES, fleet_faults=(self.fleet_fault,), **pick)

    def fleet_config(self) -> Any:
        return self.source_config().fleet_config()


@dataclass
class Gateway:
    """One agent process: a hub device (`name`) serving `devices` of one type over one uplink."""

    name: str
    device_type: str
    uplink: str
    shard: int
    devices: tuple[str, ...]
    metrics_port: int
    state: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None


def plan_gateways(plan: FleetPlan, workdir: Path) -> list[Gateway]:
    ids = plan.fleet_config().device_ids()
    out = []
    for t in TYPES:
        for shard, uplink in enumerate(UPLINKS):
            picked = plan.source_config(only_type=t, shard=shard, shards=len(UPLINKS)).selected()
            name = f"gw-{t}-{uplink}"
            out.append(Gateway(name, t, uplink, shard, tuple(ids[i] for i in picked), free_port(),
                               workdir / "agents" / name, workdir / "agents" / f"{name}.toml",
                               workdir / "agents" / f"{name}.log"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def agent_config(gw: Gateway, plan: FleetPlan, *, bundle: Path, host: str, ca_file: Path, hub_name: str,
                 key: str) -> dict[str, dict[str, Any]]:
    """The agent's TOML tables: its share of the fleet, its model, its uplink through the front end."""
    backoff = {"rate_messages_per_s": 0.0, "backoff_initial_s": 0.2, "backoff_max_s": 2.0}
    uplink: dict[str, Any]
    if gw.uplink == "iothub":
        uplink = {"type": "iothub", "ca_file": str(ca_file),
                  "connection_string": f"HostName={hub_name};DeviceId={gw.name};SharedAccessKey={key};"
                                       f"GatewayHostName={host}"}
    else:
        uplink = {"type": "mqtt", "host": host, "port": 8883, "ca_file": str(ca_file), "client_id": gw.name,
                  "device_id": gw.name, "username": f"{hub_name}/{gw.name}/?api-version=2021-04-12",
                  "sas_key": key, "iothub_hostname": hub_name, "dialect": "iothub"}
    return {
        "agent": {"device_id": gw.name, "state_dir": str(gw.state), "status_interval_s": 2.0},
        "model": {"bundle": str(bundle)},
        "source": {**plan.source(), "rate": plan.speed * len(gw.devices), "only_type": gw.device_type,
                   "shard": gw.shard, "shards": len(UPLINKS)},
        "scoring": {"batch_size": 64},
        "uplink": {**uplink, **backoff},
        "metrics": {"port": gw.metrics_port},
        "log": {"level": "warning"},
    }


def toml(doc: Mapping[str, Mapping[str, Any]]) -> str:
    """Tables of scalars and lists of scalars as TOML (what an agent config needs; no nesting)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a TOML basic string
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items()) + "\n"
                   for name, table in doc.items())


def start_agent(gw: Gateway, doc: Mapping[str, Mapping[str, Any]]) -> None:
    gw.config.parent.mkdir(parents=True, exist_ok=True)
    gw.config.write_text(toml(doc))
    with gw.log.open("ab") as log:
        gw.proc = subprocess.Popen([sys.executable, "-m", "edgeflag", "agent", "run", "--config", str(gw.config)],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_agent(gw: Gateway, timeout: float = 60.0) -> int:
    """SIGTERM (the agent stops reading, flushes its outbox while connected, exits); SIGKILL after `timeout`."""
    if gw.proc is None:
        return 0
    if gw.proc.poll() is None:
        gw.proc.send_signal(signal.SIGTERM)
    try:
        gw.exit_code = gw.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.exit_code = gw.proc.wait(10)
    return gw.exit_code


def produced(gw: Gateway) -> int:
    """Readings per device the agent stored (its source checkpoint, from the outbox it left behind)."""
    from edge_agent.outbox.sqlite import SqliteOutbox

    box = SqliteOutbox(gw.state / "outbox.db", 64 * 1024 * 1024, reserve_bytes=0)
    try:
        return int(box.checkpoint().get("simulator.next", "0"))
    finally:
        box.close()


@dataclass
class Sample:
    """What one agent's Prometheus endpoint said at `t` (seconds since the demo's stream began)."""

    t: float
    up: bool
    readings_in: int = 0
    flagged: int = 0
    events: int = 0  # anomaly events opened (one alert per event)
    sent: int = 0
    backlog: int = 0
    connected: bool = False
    model_version: int | None = None


def scrape(port: int, t: float) -> Sample:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1.0) as r:
            text = r.read().decode()
    except OSError:
        return Sample(t, up=False)
    s = Sample(t, up=True)
    for fam in text_string_to_metric_families(text):
        for m in fam.samples:
            if m.name == "edgeflag_readings_in_total":
                s.readings_in = int(m.value)
            elif m.name == "edgeflag_readings_flagged_total":
                s.flagged = int(m.value)
            elif m.name == "edgeflag_anomaly_events_total" and m.labels.get("kind") == "open":
                s.events = int(m.value)
            elif m.name == "edgeflag_readings_sent_total":
                s.sent = int(m.value)
            elif m.name == "edgeflag_outbox_readings":
                s.backlog = int(m.value)
            elif m.name == "edgeflag_uplink_connected":
                s.connected = m.value >= 1
            elif m.name == "edgeflag_model_info" and m.labels.get("version", "").isdigit():
                s.model_version = int(m.labels["version"])
    return s


@dataclass
class Watcher:
    """Scrapes every agent every `every` s in a thread; keeps each one's history (for the view and plots)."""

    gateways: list[Gateway]
    t0: float
    every: float = 0.5
    history: dict[str, list[Sample]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for gw in self.gateways:
                self.history.setdefault(gw.name, []).append(scrape(gw.metrics_port, time.monotonic() - self.t0))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def latest(self, name: str) -> Sample | None:
        h = self.history.get(name)
        return next((s for s in reversed(h) if s.up), None) if h else None

    def rate(self, name: str, over_s: float = 3.0) -> float:
        """Readings per second the agent took in over the last `over_s` seconds."""
        h = [s for s in self.history.get(name, []) if s.up]
        if len(h) < 2:
            return 0.0
        last = h[-1]
        first = next((s for s in h if s.t >= last.t - over_s), h[0])
        return (last.readings_in - first.readings_in) / (last.t - first.t) if last.t > first.t else 0.0
