"""Detection quality: ours against a rolling z-score and River's HalfSpaceTrees, on the simulator's
labelled fleet and on public labelled data. Prints one JSON line per dataset and detector (and, for the
simulator, per fault type), then a table on stderr.

Each dataset is split in time: the detectors learn from the prefix (rows labelled normal only) and set
their threshold there at the same target false-alarm rate; the rest is scored. Ours runs the edge path
(features -> fused ONNX bundle -> onnxruntime). See models/training/detection.py for every figure.

    pip install -e '.[eval]'       # river and aeon: baselines and the public datasets (no download)
    python benchmarks/detection.py [--quick] [--detectors ...]
        [--datasets simulator,simulator-clean,shuttle,daphnet,kdd]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from models.training import detection as D

PUBLIC: dict[str, Callable[[], D.Dataset]] = {"shuttle": D.shuttle, "daphnet": D.daphnet, "kdd": D.kdd_tsad_135}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="simulator,simulator-clean,shuttle,daphnet,kdd")
    ap.add_argument("--detectors", default=",".join(D.DETECTORS))
    ap.add_argument("--device-types", default="pump,compressor,chiller")
    ap.add_argument("--target-fpr", type=float, default=0.001)
    ap.add_argument("--quick", action="store_true", help="a small simulator fleet (what the test runs)")
    args = ap.parse_args()
    detectors = tuple(d for d in args.detectors.split(",") if d)
    if "halfspacetrees" in detectors and not D.river_available():
        sys.exit("halfspacetrees needs River: pip install -e '.[eval]' (or --detectors edgeflag,zscore)")
    loaders: list[tuple[str, Callable[[], D.Dataset]]] = []
    for name in args.datasets.split(","):
        if name in ("simulator", "simulator-clean"):
            for t in args.device_types.split(","):
                loaders.append((f"{name}:{t}", lambda t=t, clean=name != "simulator": D.simulator(
                    t, devices=3 if args.quick else 6, readings=2400 if args.quick else 3600, clean_training=clean)))
        elif name in PUBLIC:
            loaders.append((name, PUBLIC[name]))
        else:
            sys.exit(f"unknown dataset {name!r}; known: simulator, simulator-clean, {', '.join(PUBLIC)}")
    rows = []
    for name, load in loaders:
        t = time.perf_counter()
        try:
            ds = load()
        except FileNotFoundError as exc:
            print(f"{name}: skipped: {exc}", file=sys.stderr)
            continue
        for res in D.run(ds, detectors, args.target_fpr):
            line = {**res.line(), "target_fpr": args.target_fpr}
            rows.append(line)
            print(json.dumps(line), flush=True)
        print(f"{name}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    _table(rows)


def _table(rows: list[dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = ("roc_auc", "pr_auc", "precision", "recall", "f1", "false_alarm_rate", "event_recall",
            "alarms_per_event")
    t = Table("dataset", "detector", *cols, title="detection quality (test part, each detector at its threshold)")
    for r in rows:
        t.add_row(str(r["dataset"]), str(r["detector"]), *("—" if r.get(c) is None else str(r[c]) for c in cols))
    Console(stderr=True).print(t)


if __name__ == "__main__":
    main()
