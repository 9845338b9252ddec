"""`edgeflag demo`: the end-to-end slice that exists so far, with real work at every step.

simulate a training fleet and a held-out fleet -> train + export ONNX -> verify the
bundle (and show that a tampered copy is rejected) -> score the held-out stream the way
the edge agent does -> report detection quality -> run the real agent daemon against a
private Mosquitto broker, stop the broker mid-stream and restart it, and count every
reading that arrives by its dedup key (nothing lost) -> write report/report.html (plots of a few
devices' readings with flagged points and true faults, detection and delivery tables) and
report/summary.json. The last line printed names the report.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from edgeflag.cli._common import console, positive_int


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="end-to-end demo: simulate, train, verify, score, agent through an outage",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", "--workdir", dest="workdir", type=Path, default=Path("demo-output"), metavar="DIR",
                   help="where files and the report go (default: %(default)s)")
    p.add_argument("--devices", type=positive_int, default=10, help="devices per fleet (default: %(default)s)")
    p.add_argument("--minutes", type=positive_int, default=None,
                   help="simulated minutes per device (default: 60; same as --duration 3600)")
    p.add_argument("--duration", type=positive_int, default=3600, help="simulated seconds per device")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated fleets (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=256, help="micro-batch size when scoring")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from contracts.files import load_blocks
    from edge_agent.scoring import ScoringStage
    from edgeflag.cli.main_steps import simulate_file, train_bundle
    from models.bundle import load_bundle
    from models.errors import BundleError
    from models.training.evaluate import metrics

    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    if args.minutes is not None:
        args.duration = args.minutes * 60
    t0 = time.perf_counter()
    train_file, test_file = wd / "train.jsonl", wd / "holdout.jsonl"
    console.rule("1. simulate")
    for path, seed in ((train_file, args.seed), (test_file, args.seed + 1)):
        n = simulate_file(path, devices=args.devices, duration=args.duration, seed=seed)
        console.print(f"  {path}: {n:,} readings (seed {seed})")
    console.rule("2. train, export ONNX, store in the registry")
    registry = wd / "registry"
    bundle_path = train_bundle(train_file, registry, name="demo")
    console.print(f"  bundle: {bundle_path}")
    console.rule("3. verify")
    bundle = load_bundle(bundle_path)
    console.print(f"  OK {bundle.label}: {bundle.manifest.form}, {bundle.manifest.model_bytes:,} bytes")
    bad = wd / "tampered"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(bundle_path, bad)
    raw = bytearray((bad / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (bad / "model.onnx").write_bytes(bytes(raw))
    try:
        load_bundle(bad)
        console.print("  [red]tampered copy was accepted — this is a bug[/red]")
        return 1
    except BundleError as exc:
        console.print(f"  tampered copy (one bit flipped) rejected: {exc.reason}")
    console.rule("4. score the held-out fleet as the edge agent does")
    blocks = load_blocks(test_file)
    stage = ScoringStage(bundle)
    scores: dict[str, list[Any]] = {d: [] for d in blocks}
    n = len(next(iter(blocks.values())))
    start = time.perf_counter()
    for i in range(0, n, args.batch):
        chunk = [b.slice(i, i + args.batch) for b in blocks.values()]
        for b, s in zip(chunk, stage.score_many(chunk), strict=True):
            scores[b.device_id].append(s.scores)
    elapsed = time.perf_counter() - start
    total = sum(len(b) for b in blocks.values())
    all_scores = np.concatenate([np.concatenate(v) for v in scores.values()])
    labels = np.concatenate([b.labels for b in blocks.values() if b.labels is not None])
    m = metrics(labels, all_scores, stage.threshold)
    console.print(f"  scored {total:,} readings in {elapsed:.2f} s = {total / elapsed:,.0f} readings/s "
                  f"(features + onnxruntime, 1 thread, micro-batches of {args.batch} x {len(blocks)} devices)")
    console.print(f"  flagged {m.flagged:,}; labelled anomalous {m.positives:,}: precision {m.precision:.3f}, "
                  f"recall {m.recall:.3f}, F1 {m.f1:.3f}, ROC-AUC {m.roc_auc:.3f}, PR-AUC {m.pr_auc:.3f}")
    console.rule("5. detection quality per fault type (edgeflag model eval)")
    from edgeflag.cli import main as cli_main

    cli_main(["model", "eval", str(bundle_path), "--data", str(test_file)])
    console.rule("6. the edge agent: store-and-forward through a broker outage")
    from edgeflag.cli.demo_agent import run_agent_demo

    delivery = run_agent_demo(wd, bundle_path, devices=args.devices, seed=args.seed)
    console.rule("7. report")
    from edgeflag.cli.report import DeviceTrace, plot_backlog, write_report
    from simulators.channels import DEFAULT_CHANNELS
    from simulators.types import DEVICE_TYPES

    units = {c.name: c.unit for t in DEVICE_TYPES.values() for c in t.channels} | {
        c.name: c.unit for c in DEFAULT_CHANNELS}
    show = list(blocks)[:3]
    traces = [DeviceTrace(d, blocks[d].ts, blocks[d].channels, blocks[d].values, np.concatenate(scores[d]),
                          np.concatenate(scores[d]) >= stage.threshold, blocks[d].faults, units) for d in show]
    detection = {"readings": total, "labelled anomalous": m.positives, "flagged": m.flagged,
                 "precision": round(m.precision, 4), "recall": round(m.recall, 4), "f1": round(m.f1, 4),
                 "roc_auc": round(m.roc_auc or 0.0, 4), "pr_auc": round(m.pr_auc or 0.0, 4)}
    (wd / "report").mkdir(parents=True, exist_ok=True)
    backlog = plot_backlog(delivery.pop("backlog"), delivery.pop("outage_s"), wd / "report" / "outbox-backlog.png")
    summary = {"devices": args.devices, "seed": args.seed,
               **{k: delivery[k] for k in ("produced", "delivered", "duplicates", "lost")},
               "model_versions": [bundle.manifest.version], "incidents": None,
               **{k: detection[k] for k in ("precision", "recall", "f1")}, "detection": detection,
               "delivery": delivery}
    report = write_report(wd / "report", title=f"edgeflag demo: {bundle.label}", traces=traces,
                          threshold=stage.threshold,
                          sections={"Detection on the held-out fleet": detection,
                                    "Delivery through the broker outage": delivery},
                          summary=summary, plots=[backlog])
    console.print(f"demo done in {time.perf_counter() - t0:.1f} s; files in {wd}/")
    print(f"report: {report}", flush=True)  # the last line, unwrapped whatever the terminal width
    return 0 if delivery["lost"] == 0 else 1
