"""Helpers for agent tests: a collector process counting readings by dedup key, and configs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


RUNNING: list[subprocess.Popen[str]] = []  # killed after each test by tests/edge_agent/conftest.py


class Collector:
    """tests/collector.py in a subprocess: a persistent-session subscriber to all telemetry."""

    def __init__(self, port: int, workdir: Path, client_id: str = "collector") -> None:
        self.out = workdir / f"{client_id}.json"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "collector.py"), str(port), str(self.out),
                                      client_id], stdout=subprocess.PIPE, text=True)
        RUNNING.append(self.proc)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"collector did not start: {line!r}"

    def received(self) -> int:
        """Readings received so far (the collector rewrites the count every 0.1 s)."""
        try:
            return int(self.out.with_name(self.out.name + ".count").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def finish(self, quiet_s: float = 1.0, timeout: float = 20.0) -> dict[str, Any]:
        """Stop once nothing new has arrived for `quiet_s`: the broker may still be handing over its queue
        for this session (after a broker restart, the collector reconnects up to 1 s late)."""
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.received()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                break
            time.sleep(0.05)
        self.proc.terminate()
        self.proc.wait(30)
        data: dict[str, Any] = json.loads(self.out.read_text())
        keys = [tuple(k[:3]) for k in data["keys"]]
        data["unique"] = set(keys)
        data["anomalous"] = {tuple(k[:3]) for k in data["keys"] if k[3]}
        data["duplicates"] = len(keys) - len(data["unique"])
        return data


def agent_config(state: Path, bundle: Path, port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "agent": {"state_dir": str(state), "status_interval_s": 3600.0},
        "model": {"bundle": str(bundle)},
        "source": {"type": "simulator", "devices": 3, "readings": 2000, "seed": 4},
        "scoring": {"batch_size": 256},
        "uplink": {"type": "mqtt", "port": port, "rate_messages_per_s": 0.0, "backoff_initial_s": 0.05,
                   "backoff_max_s": 0.5},
        "log": {"level": "warning"},
    }
    for k, v in sections.items():
        if "type" in v and v["type"] != cfg.get(k, {}).get("type"):
            cfg[k] = dict(v)  # another plugin: its own keys only
        else:
            cfg.setdefault(k, {}).update(v)
    return cfg


def wait_for(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def expected_keys(streams: dict[str, tuple[str, int]], devices: int, readings: int) -> set[tuple[str, str, int]]:
    """Every (device, boot, seq) a simulator source with `devices` x `readings` should produce."""
    return {(f"dev-{d + 1:04d}", streams[f"dev-{d + 1:04d}"][0], s) for d in range(devices) for s in range(readings)}


def write_toml(path: Path, cfg: dict[str, Any]) -> Path:
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path
