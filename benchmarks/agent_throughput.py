"""Agent throughput: simulated stream -> features -> fused ONNX -> SQLite outbox (on disk,
synchronous=full) -> live local Mosquitto at QoS 1 -> a collector process counting every
reading by its dedup key. Prints ONE JSON line. Not a test.

usage: python benchmarks/agent_throughput.py [--devices 20] [--readings 10000] [--batch 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cloud_jobs.mosquitto import Broker  # noqa: E402
from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config import build_config  # noqa: E402


def train_bundle(work: Path) -> Path:
    """Train in a subprocess (as a cloud job would), so scikit-learn never loads into the agent process."""
    data, reg = work / "train.jsonl", work / "registry"
    for cmd in (["simulate", "--devices", "5", "--duration", "2400", "--seed", "1", "--out", str(data), "--quiet"],
                ["model", "train", "--data", str(data), "--out", str(reg), "--name", "bench"]):
        subprocess.run([sys.executable, "-m", "edgeflag", *cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return reg / "bench" / "v0001"


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--readings", type=int, default=20_000, help="per device")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--cores", type=int, default=1, help="CPU cores the agent process may use (0 = all)")
    ap.add_argument("--synchronous", default="full", choices=("full", "normal"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeflag-bench-"))
    bundle = train_bundle(work)
    broker = Broker(work)
    broker.start()
    if args.cores:  # the broker and the collector run on the other core(s)
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cpus[: args.cores]))
        os.sched_setaffinity(broker.proc.pid, set(cpus[args.cores :]) or set(cpus))  # type: ignore[union-attr]
    keys_file = work / "keys.json"
    collector = subprocess.Popen([sys.executable, str(ROOT / "tests" / "collector.py"), str(broker.port),
                                  str(keys_file)], stdout=subprocess.PIPE, text=True)
    if args.cores:
        cpus = sorted(os.sched_getaffinity(broker.proc.pid))  # type: ignore[union-attr]
        os.sched_setaffinity(collector.pid, set(cpus))
    assert collector.stdout is not None and collector.stdout.readline().strip() == "ready"
    cfg = build_config({
        "agent": {"state_dir": str(work / "state"), "status_interval_s": 3600.0},
        "model": {"bundle": str(bundle)},
        "source": {"type": "simulator", "devices": args.devices, "readings": args.readings, "seed": 5},
        "scoring": {"batch_size": args.batch},
        "outbox": {"synchronous": args.synchronous},
        "uplink": {"type": "mqtt", "port": broker.port, "rate_messages_per_s": 0.0, "max_inflight": 512},
        "log": {"level": "warning"},
    }, environ={})
    agent = Agent(cfg)
    rss_ready = _rss_mb()
    start = time.perf_counter()
    agent.start()
    rss_max = rss_ready
    while not agent.drained():
        time.sleep(0.01)
        rss_max = max(rss_max, _rss_mb())
    elapsed = time.perf_counter() - start
    snap = agent.metrics.snapshot()
    batch_ms = np.array(agent.metrics.batch_ms)
    agent.stop(flush_timeout=5)
    time.sleep(0.5)
    collector.terminate()
    collector.wait(30)
    got = json.loads(keys_file.read_text())
    keys = {tuple(k[:3]) for k in got["keys"]}
    broker.stop()
    produced = snap["readings_in"]
    out = {
        "bench": "agent_throughput", "devices": args.devices, "batch_size": args.batch,
        "outbox": f"sqlite on disk, synchronous={args.synchronous}", "uplink": "mosquitto QoS 1 (loopback)",
        "readings_per_s": round(produced / elapsed), "elapsed_s": round(elapsed, 3),
        "batch_p50_ms": round(float(np.percentile(batch_ms, 50)), 3),
        "batch_p99_ms": round(float(np.percentile(batch_ms, 99)), 3),
        # RSS sampled every 10 ms while the agent runs (the bundle, onnxruntime, outbox, queues);
        # the process peak also holds this script's own accounting of 400k keys afterwards.
        "peak_rss_mb": round(rss_max, 1), "rss_before_start_mb": round(rss_ready, 1),
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "produced": produced, "scored": snap["scored"], "flagged": snap["flagged"],
        "messages": got["messages"], "delivered": len(keys), "duplicates": got["readings"] - len(keys),
        "lost": produced - len(keys), "quarantined": sum(snap["quarantined"].values()),
        "dropped": sum(snap["dropped"].values()), "agent_cores": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
