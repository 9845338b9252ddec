"""Retraining throughput and gate figures on local Spark. Prints one JSON line.

A labelled simulated fleet (`--devices` across pump, compressor, chiller; `--hours` of 1 Hz readings,
oracle-scored telemetry landed by the hub's BronzeWriter) is aggregated into silver (not timed); an old
model per type (the first 30 minutes, 20 trees) is the champion. Then `edgeflag cloud retrain` is timed
over all of silver (`wall_s`): features per device, a model per type, holdout figures, MLflow,
registration. For comparison, the same work without Spark in this one process (`single_process_wall_s`):
per type, the feature spec, features per device, fit -> ONNX export -> parity on the same training
split, and the holdout scored — what `edgeflag model train` would do per type.

    python benchmarks/retrain.py [--devices 30] [--hours 20]   # 2.16 million readings
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud_jobs.config import AggregateConfig, InputConfig, RetrainConfig, WindowSpec
from hub.bronze import BronzeWriter, Landed
from simulators import Fleet, FleetConfig
from simulators.telemetry import oracle_messages
from simulators.types import pick_types
from simulators.writers import JsonlWriter

TYPES = "pump,compressor,chiller"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=30)
    ap.add_argument("--hours", type=float, default=20.0)
    ap.add_argument("--trees", type=int, default=100)
    args = ap.parse_args()
    from cloud_jobs.fleet.job import main as aggregate
    from cloud_jobs.retrain.job import main as retrain
    from cloud_jobs.spark import get_spark
    from models.registry import Registry
    from models.training.pipeline import build_bundle, make_candidate
    from models.training.trainer import TrainConfig, clean_rows, feature_table, fit_spec

    work = Path(tempfile.mkdtemp(prefix="edgeflag-retrain-bench-"))
    cfg = FleetConfig(devices=args.devices, seed=8, device_types=pick_types(TYPES))
    blocks = Fleet(cfg).generate(int(args.hours * 3600))
    types = cfg.device_types_by_id()
    with (work / "labels.jsonl").open("w") as fh:
        JsonlWriter(fh).write(list(blocks.values()))
    w = BronzeWriter(work / "bronze", tags=lambda d: {"device_type": types[d]} if d in types else {})
    w.write([Landed(m["device_id"], {}, json.dumps(m, separators=(",", ":")).encode(),
                    m["readings"][-1]["ts"] / 1000 + 1) for m in oracle_messages(blocks.values())])
    w.close()
    spark = get_spark("edgeflag-retrain-bench", master="local[2]")
    aggregate(AggregateConfig(input=InputConfig(path=str(work / "bronze")), out=str(work / "lake"),
                              windows=(WindowSpec(60, 60),)), spark=spark, on_batch=lambda s: None)
    for dtype in TYPES.split(","):
        old = {d: b.slice(0, 1800) for d, b in blocks.items() if types[d] == dtype}
        tc = TrainConfig(name=dtype, n_estimators=20)
        spec = fit_spec(old, tc)
        build_bundle(feature_table(old, spec), spec, tc, Registry(work / "registry"),
                     clean=clean_rows(old, spec.clean_horizon))
    t = time.perf_counter()
    report = retrain(RetrainConfig(silver=str(work / "lake" / "silver"), registry=str(work / "registry"),
                                   out=str(work / "retrain"), labels=str(work / "labels.jsonl"),
                                   incidents=str(work / "lake" / "incidents.jsonl"), n_estimators=args.trees),
                     spark=spark, say=lambda m: print(m, file=sys.stderr))
    seconds = time.perf_counter() - t
    readings = sum(len(b) for b in blocks.values())
    t = time.perf_counter()
    single_rows = 0
    for dtype in TYPES.split(","):  # the same work in one process, no Spark
        mine = {d: b for d, b in blocks.items() if types[d] == dtype}
        t0 = min(float(b.ts[0]) for b in mine.values())
        t1 = max(float(b.ts[-1]) for b in mine.values())
        split = t0 + 0.8 * (t1 - t0)
        train = {d: b.slice(0, int((b.ts < split).sum())) for d, b in mine.items()}
        tc = TrainConfig(name=dtype, n_estimators=args.trees)
        spec = fit_spec(train, tc)
        table = feature_table(mine, spec)
        in_train = np.concatenate([b.ts < split for b in mine.values()])
        train_table = replace(table, x=table.x[in_train], faults=None,
                              labels=None if table.labels is None else table.labels[in_train],
                              devices=[d for d, m in zip(table.devices, in_train, strict=True) if m])
        cand = make_candidate(train_table, spec, tc, clean=clean_rows(mine, spec.clean_horizon)[in_train])
        cand.scores(table.x[~in_train])
        single_rows += len(table.x)
    single_s = time.perf_counter() - t
    per_type = {}
    for dtype, e in sorted(report["types"].items()):
        c, ch = e["figures"]["candidate"], e["figures"].get("champion", {})
        per_type[dtype] = {"status": e["status"], "train_rows": e["figures"]["train_rows"],
                           "fit_rows": e["figures"]["fit_rows"], "holdout_rows": e["figures"]["holdout_rows"],
                           "f1": round(c["f1"], 3), "event_recall": round(c["event_recall"], 3),
                           "pr_auc": round(c["pr_auc"], 3), "champion_f1": round(ch.get("f1", 0.0), 3),
                           "champion_event_recall": round(ch.get("event_recall", 0.0), 3)}
    print(json.dumps({"bench": "retrain", "spark": spark.version, "master": "local[2]", "readings": readings,
                      "devices": args.devices, "device_types": len(per_type), "trees": args.trees,
                      "wall_s": round(seconds, 1), "readings_per_s": round(readings / seconds),
                      "single_process_wall_s": round(single_s, 1),
                      "single_process_readings_per_s": round(single_rows / single_s), "types": per_type}))
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
