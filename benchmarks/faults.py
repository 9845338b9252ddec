"""The fault suite: real agent processes, a real Mosquitto, a small fault proxy; every reading counted.

Each fault runs one workload (simulated devices with a fixed number of readings) through
``edgeflag agent run`` processes into a persistent Mosquitto, with a persistent-session collector
in this process counting every reading by its dedup key ``(device, boot, seq)``. At the end the
outbox of the last agent run is opened for its persisted drop counts. Per fault:

    produced   = devices x readings (what the simulator source emits, each exactly once)
    delivered  = distinct dedup keys the collector received
    duplicates = keys received more than once
    dropped    = readings the outbox evicted or refused, by its own persisted counts
    lost       = produced - delivered - dropped   (must be 0)

Faults: ``agent_kill`` (SIGKILL at random moments, restarted each time), ``broker_kill`` (SIGKILL
of Mosquitto, restarted from its persistence file), ``lost_pubacks`` (the proxy swallows the
broker's PUBACKs for a while, then cuts the link, over and over), ``flapping_link`` (the proxy
cuts every connection at random intervals and refuses new ones for a moment), ``outage_at_capacity``
(broker down for the whole stream, 1 MB outbox: the drop policy applies, so dropped must equal
produced - delivered), ``bit_flip`` (the agent is killed with a backlog, bytes of outbox rows are
flipped on disk, the restarted agent must skip and count them, never send them).
The full-disk fault needs a tmpfs mount and runs as `tests/edge_agent/test_accounting.py` (root).

Prints a table, then one JSON line per fault. ``--short`` is the form `make test` runs.
Traffic stays on 127.0.0.1; every wait has a deadline and every process is stopped at the end.

usage: python benchmarks/faults.py [--short] [--kills 100] [--bundle DIR] [--only FAULT ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hub.mosquitto import Broker, free_port  # noqa: E402

FAULTS = ("agent_kill", "broker_kill", "lost_pubacks", "flapping_link", "outage_at_capacity", "bit_flip")


# -- the collector: every reading by its dedup key --------------------------------------------------
class Collector:
    """A persistent-session QoS 1 subscriber to all telemetry, in a thread of this process."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.seen: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()
        ready = threading.Event()
        c = self.client = mqtt.Client(client_id=f"faults-collector-{os.getpid()}", clean_session=False)
        c.on_connect = lambda cl, _u, _f, _rc: cl.subscribe("devices/+/messages/events/#", qos=1)
        c.on_subscribe = lambda *_a: ready.set()
        c.on_message = self._on_message
        c.max_inflight_messages_set(1000)
        c.reconnect_delay_set(0.1, 1.0)
        c.connect_async("127.0.0.1", port, 30)
        c.loop_start()
        if not ready.wait(10):
            raise RuntimeError("collector cannot subscribe")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        m = json.loads(msg.payload)
        with self._lock:
            for r in m["readings"]:
                k = (m["device_id"], m["boot_id"], r["seq"])
                self.seen[k] = self.seen.get(k, 0) + 1

    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    def stop(self) -> tuple[set[tuple[str, str, int]], int]:
        """(distinct keys, duplicates)."""
        self.client.disconnect()
        self.client.loop_stop()
        with self._lock:
            return set(self.seen), sum(n - 1 for n in self.seen.values())


# -- the fault proxy ------------------------------------------------------------------------------
class FaultProxy:
    """TCP proxy 127.0.0.1:port -> broker. `cut()` closes every connection; while `refusing` new
    connections are closed at once; while `swallow_pubacks` the broker's PUBACKs never reach the agent."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port("127.0.0.1")
        self.refusing = False
        self.swallow_pubacks = False
        self.swallowed = 0
        self.acked: set[tuple[str, str, int]] = set()  # readings whose PUBLISH the broker acknowledged
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._srv = socket.create_server(("127.0.0.1", self.port))
        self._srv.settimeout(0.2)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, up]
            pending: dict[int, list[tuple[str, str, int]]] = {}  # packet id -> readings, this connection
            threading.Thread(target=self._pump, args=(client, up, False, pending), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, True, pending), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_broker: bool,
              pending: dict[int, list[tuple[str, str, int]]]) -> None:
        buf = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf += data
                out = bytearray()
                while True:  # whole MQTT packets only, so a PUBACK can be taken out
                    n = _packet_length(buf)
                    if n is None:
                        break
                    packet, buf = buf[:n], buf[n:]
                    kind = packet[0] >> 4
                    if not from_broker:
                        if kind == 3 and packet[0] & 0x06 == 0x02:  # PUBLISH QoS 1: remember its readings
                            pid, keys = _publish_keys(packet)
                            pending[pid] = keys
                    elif kind == 4:
                        if self.swallow_pubacks:
                            self.swallowed += 1
                            continue
                        pid = _body(packet)[0] << 8 | _body(packet)[1]
                        with self._lock:
                            self.acked.update(pending.pop(pid, ()))
                    out += packet
                if out:
                    dst.sendall(bytes(out))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _shut(s)
                s.close()

    def cut(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            _shut(s)

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._srv.close()


def _shut(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)


def _body(packet: bytes) -> bytes:
    i = 1
    while packet[i] & 0x80:
        i += 1
    return packet[i + 1:]


def _publish_keys(packet: bytes) -> tuple[int, list[tuple[str, str, int]]]:
    """(packet id, dedup keys of its readings) of a QoS 1 PUBLISH of the agent's JSON telemetry."""
    body = _body(packet)
    tlen = body[0] << 8 | body[1]
    pid = body[2 + tlen] << 8 | body[3 + tlen]
    if not body[2:2 + tlen].startswith(b"devices/"):
        return pid, []  # twin and method traffic
    m = json.loads(body[4 + tlen:])
    return pid, [(m["device_id"], m["boot_id"], r["seq"]) for r in m["readings"]]


def _packet_length(buf: bytes) -> int | None:
    """Length of the first whole MQTT packet in buf, or None if it is not all there yet."""
    length, mult = 0, 1
    for i in range(1, 5):
        if i >= len(buf):
            return None
        length += (buf[i] & 0x7F) * mult
        if not buf[i] & 0x80:
            total = 1 + i + length
            return total if len(buf) >= total else None
        mult *= 128
    raise ValueError("bad MQTT remaining length")


# -- agent processes --------------------------------------------------------------------------------
@dataclass
class Workload:
    devices: int
    readings: int
    rate: float  # readings/s across the fleet (0 = as fast as possible)
    outbox_bytes: int = 256 << 20
    anomaly_rate: float = 0.0


def write_config(work: Path, bundle: Path, port: int, wl: Workload) -> Path:
    cfg: dict[str, dict[str, Any]] = {
        "agent": {"state_dir": str(work / "state"), "status_interval_s": 3600.0},
        "model": {"bundle": str(bundle)},
        "source": {"type": "simulator", "devices": wl.devices, "readings": wl.readings, "seed": 11,
                   "rate": wl.rate, "anomaly_rate": wl.anomaly_rate},
        "scoring": {"batch_size": 256},
        "outbox": {"max_bytes": wl.outbox_bytes},
        "uplink": {"type": "mqtt", "port": port, "client_id": "faults-agent", "max_inflight": 64,
                   "backoff_initial_s": 0.05, "backoff_max_s": 0.5},
        "log": {"level": "error"},
    }
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = work / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgeflag", "agent", "run", "--config", str(config), *extra]


def drain(config: Path, timeout: float) -> None:
    """Run the agent until its source is done and its outbox empty."""
    done = subprocess.run(agent_cmd(config, "--exit-when-drained"), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"agent exited {done.returncode}: {done.stderr[-1500:]}")


def outbox_drops(work: Path) -> dict[str, int]:
    from edge_agent.outbox import SqliteOutbox

    db = SqliteOutbox(work / "state" / "outbox.db", 1 << 30)
    try:
        return dict(db.drops())
    finally:
        db.close()


@dataclass
class Result:
    """`lost`: readings neither delivered, nor acknowledged by the broker, nor counted as dropped: what
    the agent lost. `lost_after_broker_ack`: readings the broker acknowledged (the proxy saw the
    PUBACK) and never delivered: the broker's loss, not the agent's (Mosquitto acknowledges before it
    persists, so a SIGKILL of the broker can take a few); None where no proxy watched."""

    fault: str
    produced: int
    delivered: int
    duplicates: int
    dropped: int
    lost: int
    drop_policy: bool
    lost_after_broker_ack: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def line(self) -> dict[str, Any]:
        return {"fault": self.fault, "produced": self.produced, "delivered": self.delivered,
                "duplicates": self.duplicates, "dropped": self.dropped, "lost": self.lost,
                "lost_after_broker_ack": self.lost_after_broker_ack, "drop_policy": self.drop_policy, **self.detail}


class Bench:
    def __init__(self, root: Path, bundle: Path, short: bool, kills: int, seed: int) -> None:
        self.root, self.bundle, self.short, self.kills = root, bundle, short, kills
        self.rng = random.Random(seed)

    def _setup(self, name: str) -> tuple[Path, Broker, Collector]:
        work = self.root / name
        work.mkdir()
        # Mosquitto acknowledges a QoS 1 message before it persists it; saving its state on every change
        # keeps a SIGKILL of the broker from losing acknowledged messages, so a loss here is the agent's.
        broker = Broker(work, persistence=True, extra_conf="autosave_on_changes true\n")
        broker.start()
        return work, broker, Collector(broker.port)

    def _finish(self, name: str, work: Path, broker: Broker, col: Collector, wl: Workload,
                drop_policy: bool = False, proxy: FaultProxy | None = None, **detail: Any) -> Result:
        deadline = time.monotonic() + 10
        produced = wl.devices * wl.readings
        dropped = sum(outbox_drops(work).values())
        while col.count() < produced - dropped and time.monotonic() < deadline:
            time.sleep(0.05)  # the broker's last deliveries to the collector
        keys, dups = col.stop()
        broker.stop()
        if proxy is None:
            return Result(name, produced, len(keys), dups, dropped, produced - len(keys) - dropped, drop_policy,
                          detail=detail)
        confirmed = keys | proxy.acked
        return Result(name, produced, len(keys), dups, dropped, produced - len(confirmed) - dropped, drop_policy,
                      lost_after_broker_ack=len(proxy.acked - keys), detail=detail)

    def agent_kill(self) -> Result:
        wl = Workload(devices=5, readings=1200 if self.short else 6000, rate=2000.0)
        work, broker, col = self._setup("agent_kill")
        config = write_config(work, self.bundle, broker.port, wl)
        for _ in range(self.kills):
            p = subprocess.Popen(agent_cmd(config), cwd=ROOT, stderr=subprocess.DEVNULL)
            time.sleep(self.rng.uniform(0.3, 2.0))
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        drain(config, 120)
        return self._finish("agent_kill", work, broker, col, wl, kills=self.kills)

    def broker_kill(self) -> Result:
        wl = Workload(devices=5, readings=2000 if self.short else 8000, rate=2000.0)
        kills = 1 if self.short else 10

        def fault(broker: Broker) -> None:
            for _ in range(kills):
                time.sleep(self.rng.uniform(0.5, 1.5))
                assert broker.proc is not None
                broker.proc.send_signal(signal.SIGKILL)
                broker.proc.wait(10)
                broker.proc = None
                time.sleep(self.rng.uniform(0.2, 1.0))
                broker.start()

        return self._through_proxy("broker_kill", wl, lambda proxy, broker: fault(broker), kills=kills)

    def _through_proxy(self, name: str, wl: Workload, fault: Callable[[FaultProxy, Broker], None],
                       **detail: Any) -> Result:
        """The agent reaches the broker through a FaultProxy, which also records every PUBACK it passes."""
        work, broker, col = self._setup(name)
        proxy = FaultProxy(broker.port)
        config = write_config(work, self.bundle, proxy.port, wl)
        p = subprocess.Popen(agent_cmd(config, "--exit-when-drained"), cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            fault(proxy, broker)
            p.wait(180)
        finally:
            if p.poll() is None:
                p.kill()
            proxy.close()
        return self._finish(name, work, broker, col, wl, proxy=proxy, swallowed_pubacks=proxy.swallowed, **detail)

    def lost_pubacks(self) -> Result:
        rounds = 3 if self.short else 20

        def fault(proxy: FaultProxy, _broker: Broker) -> None:
            for _ in range(rounds):
                time.sleep(self.rng.uniform(0.3, 0.8))
                proxy.swallow_pubacks = True
                time.sleep(self.rng.uniform(0.2, 0.6))
                proxy.cut()  # the agent never learns these were delivered: it must send them again
                proxy.swallow_pubacks = False

        return self._through_proxy("lost_pubacks", Workload(5, 1500 if self.short else 8000, 2000.0), fault)

    def flapping_link(self) -> Result:
        rounds = 4 if self.short else 30

        def fault(proxy: FaultProxy, _broker: Broker) -> None:
            for _ in range(rounds):
                time.sleep(self.rng.uniform(0.1, 0.7))
                proxy.refusing = True
                proxy.cut()
                time.sleep(self.rng.uniform(0.05, 0.5))
                proxy.refusing = False

        return self._through_proxy("flapping_link", Workload(5, 1500 if self.short else 8000, 2000.0), fault)

    def outage_at_capacity(self) -> Result:
        wl = Workload(devices=3, readings=4000 if self.short else 20000, rate=0.0, outbox_bytes=1 << 20,
                      anomaly_rate=0.01)
        work, broker, col = self._setup("outage_at_capacity")
        config = write_config(work, self.bundle, broker.port, wl)
        broker.stop()  # down for the whole stream: the outbox fills and evicts by policy
        p = subprocess.Popen(agent_cmd(config, "--exit-when-drained"), cwd=ROOT, stderr=subprocess.DEVNULL)
        _wait_for_source_done(work, wl, 120)
        broker.start()
        p.wait(180)
        return self._finish("outage_at_capacity", work, broker, col, wl, drop_policy=True,
                            outbox_bytes=wl.outbox_bytes)

    def bit_flip(self) -> Result:
        wl = Workload(devices=3, readings=1000 if self.short else 5000, rate=0.0)
        work, broker, col = self._setup("bit_flip")
        config = write_config(work, self.bundle, broker.port, wl)
        broker.stop()
        p = subprocess.Popen(agent_cmd(config), cwd=ROOT, stderr=subprocess.DEVNULL)
        _wait_for_source_done(work, wl, 120)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        flipped = _flip_rows(work / "state" / "outbox.db", self.rng, 3 if self.short else 20)
        broker.start()
        drain(config, 120)
        return self._finish("bit_flip", work, broker, col, wl, drop_policy=True, rows_flipped=flipped)


def _wait_for_source_done(work: Path, wl: Workload, timeout: float) -> None:
    """Until the agent has committed the simulator's last reading (its checkpoint says so)."""
    db = work / "state" / "outbox.db"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
                row = con.execute("SELECT value FROM checkpoint WHERE key = 'simulator.next'").fetchone()
            if row and int(row[0]) >= wl.readings:
                return
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the agent did not read its {wl.readings} readings per device in {timeout}s")


def _flip_rows(db: Path, rng: random.Random, n: int) -> int:
    """Flip one bit in the body of n outbox rows, in place, as a bad disk sector would."""
    with sqlite3.connect(db) as con:
        ids = [r[0] for r in con.execute("SELECT id FROM segments ORDER BY id")]
        chosen = rng.sample(ids, min(n, len(ids)))
        for rid in chosen:
            (body,) = con.execute("SELECT body FROM segments WHERE id = ?", (rid,)).fetchone()
            b = bytearray(body)
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
            con.execute("UPDATE segments SET body = ? WHERE id = ?", (bytes(b), rid))
    return len(chosen)


def table(results: list[Result]) -> str:
    head = (f"{'fault':<20} {'produced':>9} {'delivered':>9} {'duplicates':>10} {'dropped':>8} {'lost':>5}"
            f" {'lost after broker ack':>22}")
    rows = [f"{r.fault:<20} {r.produced:>9} {r.delivered:>9} {r.duplicates:>10} {r.dropped:>8} {r.lost:>5}"
            f" {'-' if r.lost_after_broker_ack is None else r.lost_after_broker_ack:>22}" for r in results]
    return "\n".join([head, *rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short", action="store_true", help="small workloads and few repetitions (make test)")
    ap.add_argument("--kills", type=int, help="agent SIGKILLs (default 100; 3 with --short)")
    ap.add_argument("--bundle", type=Path, help="model bundle (default: train one, takes ~20 s)")
    ap.add_argument("--only", nargs="+", choices=FAULTS, help="run only these faults")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    with tempfile.TemporaryDirectory(prefix="edgeflag-faults-") as tmp:
        root = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from agent_throughput import train_bundle  # type: ignore[import-not-found]

            bundle = train_bundle(root)
        kills = args.kills if args.kills is not None else (3 if args.short else 100)
        bench = Bench(root, bundle, args.short, kills, args.seed)
        results = []
        for name in args.only or FAULTS:
            t0 = time.monotonic()
            r = getattr(bench, name)()
            r.detail["seconds"] = round(time.monotonic() - t0, 1)
            print(f"{name}: done in {r.detail['seconds']} s", file=sys.stderr, flush=True)
            results.append(r)
    print(table(results))
    for r in results:
        print(json.dumps(r.line()))
    return 0 if all(r.lost == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
