"""Agent throughput: simulated stream -> features -> fused ONNX -> SQLite outbox (on disk,
synchronous=full) -> live local Mosquitto at QoS 1 -> a collector process counting every
reading by its dedup key. Prints ONE JSON line. Not a test.

The agent runs in a process of its own pinned to one core (`--cores`), as the daemon would;
the broker, the collector and this script share the other core(s), so nothing of the
benchmark itself runs on the agent's core. Each run gets a fresh outbox and collector; the
line reports the median run by throughput (all runs' rates are listed in `runs_readings_per_s`).
`peak_rss_mb` is the agent process's own high-water mark (VmHWM), start-up included.

`--source jsonl` feeds the same fleet from a Reading-contract JSON-lines file instead (parsing
and validating every line is then part of the measured work).

usage: python benchmarks/agent_throughput.py [--devices 20] [--readings 20000] [--batch 4096] [--runs 3]
                                             [--source simulator|jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_bundle(work: Path, features: str = "auto") -> Path:
    """Train in a subprocess (as a cloud job would), so scikit-learn never loads into an agent process."""
    data, reg = work / "train.jsonl", work / "registry"
    for cmd in (["simulate", "--devices", "5", "--duration", "2400", "--seed", "1", "--out", str(data), "--quiet"],
                ["model", "train", "--data", str(data), "--out", str(reg), "--name", "bench", "--features", features]):
        subprocess.run([sys.executable, "-m", "edgeflag", *cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return reg / "bench" / "v0001"


def _status_kb(pid: int | str, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def child(config_file: str) -> None:
    """One agent run (in the agent's own process): start, wait until drained, print the figures."""
    import numpy as np

    from edge_agent.agent import Agent
    from edge_agent.config import build_config

    cfg = build_config(json.loads(Path(config_file).read_text()), environ={})
    agent = Agent(cfg)
    rss_ready = _status_kb("self", "VmRSS") / 1024
    start = time.perf_counter()
    cpu0 = time.process_time()
    agent.start()
    while not agent.drained():
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    snap = agent.metrics.snapshot()
    batch_ms = np.array(agent.metrics.batch_ms)
    agent.stop(flush_timeout=5)
    print(json.dumps({
        "elapsed_s": elapsed, "cpu_s": cpu, "snap": snap, "rss_ready_mb": rss_ready,
        "peak_rss_mb": _status_kb("self", "VmHWM") / 1024,
        "batch_p50_ms": float(np.percentile(batch_ms, 50)), "batch_p99_ms": float(np.percentile(batch_ms, 99)),
    }), flush=True)


def source_config(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    if args.source == "simulator":
        return {"type": "simulator", "devices": args.devices, "readings": args.readings, "seed": 5}
    path = work / "readings.jsonl"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "edgeflag", "simulate", "--devices", str(args.devices), "--duration",
                        str(args.readings), "--seed", "5", "--out", str(path), "--quiet"],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {"type": "jsonl", "path": str(path)}


def one_run(args: argparse.Namespace, work: Path, bundle: Path, port: int, run: int,
            agent_cpus: set[int], other_cpus: set[int]) -> dict[str, Any]:
    keys_file = work / f"keys-{run}.json"
    collector = subprocess.Popen([sys.executable, str(ROOT / "tests" / "collector.py"), str(port), str(keys_file),
                                  f"bench-collector-{run}"], stdout=subprocess.PIPE, text=True)
    os.sched_setaffinity(collector.pid, other_cpus)
    assert collector.stdout is not None and collector.stdout.readline().strip() == "ready"
    cfg_file = work / f"agent-{run}.json"
    cfg_file.write_text(json.dumps({
        "agent": {"state_dir": str(work / f"state-{run}"), "status_interval_s": 3600.0},
        "model": {"bundle": str(bundle)},
        "source": source_config(args, work),
        "scoring": {"batch_size": args.batch, "linger_ms": args.linger_ms},
        "outbox": {"synchronous": args.synchronous},
        "uplink": {"type": "mqtt", "port": port, "client_id": f"bench-agent-{run}", "rate_messages_per_s": 0.0,
                   "max_inflight": 512},
        "metrics": {"port": 0},
        "log": {"level": "warning"},
    }))
    agent = subprocess.Popen([sys.executable, __file__, "--child", str(cfg_file)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, agent_cpus))
    out, _ = agent.communicate(timeout=600)
    if agent.returncode != 0:
        raise SystemExit(f"agent run {run} failed with exit code {agent.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    time.sleep(0.5)  # the last PUBACKed messages reach the collector
    collector.terminate()
    collector.wait(30)
    got = json.loads(keys_file.read_text())
    keys_file.unlink()
    delivered = len({tuple(k[:3]) for k in got["keys"]})
    snap = res["snap"]
    produced = snap["readings_in"]
    return {
        "readings_per_s": round(produced / res["elapsed_s"]), "elapsed_s": round(res["elapsed_s"], 3),
        "cpu_us_per_reading": round(res["cpu_s"] / produced * 1e6, 2),
        "batch_p50_ms": round(res["batch_p50_ms"], 3), "batch_p99_ms": round(res["batch_p99_ms"], 3),
        "peak_rss_mb": round(res["peak_rss_mb"], 1), "rss_before_start_mb": round(res["rss_ready_mb"], 1),
        "produced": produced, "scored": snap["scored"], "flagged": snap["flagged"],
        "messages": got["messages"], "delivered": delivered, "duplicates": got["readings"] - delivered,
        "lost": produced - delivered, "quarantined": sum(snap["quarantined"].values()),
        "dropped": sum(snap["dropped"].values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--readings", type=int, default=20_000, help="per device")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--linger-ms", type=float, default=200.0, help="[scoring] linger_ms (the agent's default)")
    ap.add_argument("--features", default="auto", help="model train --features (auto: what training picks)")
    ap.add_argument("--runs", type=int, default=3, help="agent runs; the median one is reported")
    ap.add_argument("--cores", type=int, default=1, help="CPU cores the agent process may use (0 = all)")
    ap.add_argument("--synchronous", default="full", choices=("full", "normal"))
    ap.add_argument("--source", default="simulator", choices=("simulator", "jsonl"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    from hub.mosquitto import Broker

    work = Path(tempfile.mkdtemp(prefix="edgeflag-bench-"))
    bundle = train_bundle(work, args.features)
    algo = json.loads((bundle / "manifest.json").read_text())["feature_spec"]["algo"]
    cpus = sorted(os.sched_getaffinity(0))
    agent_cpus = set(cpus[: args.cores]) if args.cores else set(cpus)
    other_cpus = set(cpus[args.cores :]) if args.cores else set(cpus)
    other_cpus = other_cpus or set(cpus)
    os.sched_setaffinity(0, other_cpus)  # this script stays off the agent's core
    broker = Broker(work)
    broker.start()
    try:
        assert broker.proc is not None
        os.sched_setaffinity(broker.proc.pid, other_cpus)
        runs = [one_run(args, work, bundle, broker.port, i, agent_cpus, other_cpus) for i in range(args.runs)]
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    best = sorted(runs, key=lambda r: r["readings_per_s"])[len(runs) // 2]
    print(json.dumps({
        "bench": "agent_throughput", "source": args.source, "devices": args.devices, "batch_size": args.batch,
        "linger_ms": args.linger_ms,
        "features": algo,
        "outbox": f"sqlite on disk, synchronous={args.synchronous}", "uplink": "mosquitto QoS 1 (loopback)",
        "agent_cores": len(agent_cpus), "runs": len(runs),
        "runs_readings_per_s": [r["readings_per_s"] for r in runs],
        **best,
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in runs),
        "lost_total": sum(r["lost"] for r in runs),
        "readings_per_s_spread": round(statistics.pstdev(r["readings_per_s"] for r in runs)),
    }))


if __name__ == "__main__":
    main()
