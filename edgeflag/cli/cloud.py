"""`edgeflag cloud …`: the Spark jobs, on local[*] here and unchanged on Databricks.

`aggregate` turns bronze telemetry into exactly-once silver readings, event-time windows per device
and channel and per device type, and fleet incidents. With `--trigger available-now` it processes
what is there and stops (a scheduled run); with `--trigger processing-time=10s` it runs until
SIGINT/SIGTERM. Same code, same checkpoint: switch between the two at will.

`retrain` trains a model per device type from silver, gates each against the type's production model
on a holdout it never saw, registers the winners (file registry + MLflow) and rolls them out through
the hub with a canary (`--dry-run` prints the plan and changes nothing).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from edgeflag.cli._common import CliError, console


def register(sub: Any) -> None:
    p = sub.add_parser("cloud", help="Spark jobs: fleet aggregation, retraining", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = p.add_subparsers(dest="cloud_command", metavar="JOB")
    csub.required = True
    a = csub.add_parser("aggregate", help="bronze -> silver -> gold windows -> fleet incidents",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("--bronze", required=True, help="input directory (hub bronze, or IoT Hub routed storage)")
    a.add_argument("--input-format", choices=("bronze", "iothub"), default="bronze",
                   help="bronze: the hub's landing lines; iothub: IoT Hub's routing-to-storage JSON")
    a.add_argument("--out", required=True, help="output directory (tables, incidents.jsonl, checkpoints)")
    a.add_argument("--trigger", default="available-now", help="available-now, or processing-time=<N>s")
    a.add_argument("--watermark", default="2m", help="how late an event may arrive and still count")
    a.add_argument("--windows", default="1m,5m/1m", help="window specs: tumbling 1m, sliding 5m/1m, …")
    a.add_argument("--max-files-per-trigger", type=int, default=1000, help="bronze files per micro-batch")
    a.add_argument("--table-format", choices=("parquet", "delta"), default="parquet",
                   help="delta needs Databricks (or a Spark with the Delta jars)")
    a.add_argument("--incident-min-devices", type=int, default=3, help="anomalous devices of a type for an incident")
    a.add_argument("--incident-min-fraction", type=float, default=0.3, help="… or this fraction of those reporting")
    a.add_argument("--incident-max-chance", type=float, default=1e-3,
                   help="… and that many anomalous devices at once would come by chance (each at the type's "
                        "learned baseline rate) at most this probability; 1 = the count rule alone")
    a.add_argument("--device-anomaly-rate", type=float, default=0.1,
                   help="a device is anomalous in a window when this share of its readings is flagged")
    a.add_argument("--webhook", help="POST every incident event here (retried; Idempotency-Key header)")
    a.set_defaults(handler=aggregate_cmd)

    r = csub.add_parser("retrain", help="silver -> a gated, signed model per device type -> canary rollout",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--silver", required=True, help="the aggregation's silver table (directory)")
    r.add_argument("--table-format", choices=("parquet", "delta"), default="parquet",
                   help="the silver table's format (delta: on Databricks)")
    r.add_argument("--registry", required=True, help="model registry the agents fetch bundles from")
    r.add_argument("--out", required=True, help="output directory (reports; the local MLflow store)")
    r.add_argument("--since", help="first event time (ISO-8601, inclusive); default: all of silver")
    r.add_argument("--until", help="end event time (ISO-8601, exclusive)")
    r.add_argument("--types", default="", help="comma-separated device types (default: every type in range)")
    r.add_argument("--labels", help="ground truth: the simulator's JSONL readings (label, fault)")
    r.add_argument("--incidents", help="the aggregation's incidents.jsonl: readings inside one are not fitted")
    r.add_argument("--holdout", type=float, default=0.25, help="newest share of the range kept for the gate")
    r.add_argument("--include-flagged", action="store_true", help="fit on readings the edge flagged too")
    r.add_argument("--include-labelled", action="store_true", help="fit on labelled anomalies too")
    r.add_argument("--min-rows", type=int, default=1000, help="skip a type with fewer readings")
    r.add_argument("--trees", type=int, default=100, help="IsolationForest trees")
    from cloud_jobs.config import CHAMPION_ALGO, RETRAIN_ALGOS

    r.add_argument("--features", choices=(CHAMPION_ALGO, *RETRAIN_ALGOS), default=CHAMPION_ALGO,
                   help="feature algorithm of the candidates (models/features.py); champion: each type keeps "
                        "its champion's (the time-series default when there is none or this job cannot fit it)")
    r.add_argument("--no-range-guard", action="store_true",
                   help="score with the forest alone (models/training/guard.py; the guard is on by default)")
    r.add_argument("--target-fpr", type=float, default=0.001, help="share of normal readings above the threshold")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--sign-key", help="Ed25519 private key (from `edgeflag model keygen`) to sign bundles")
    r.add_argument("--mlflow-tracking-uri", help="default: sqlite under --out; 'databricks' on Databricks")
    r.add_argument("--mlflow-registry-uri", help="'databricks-uc' for Unity Catalog")
    r.add_argument("--model-prefix", default="edgeflag-", help="registered model name prefix (UC: cat.schema.)")
    r.add_argument("--max-alert-rate", type=float, default=0.02, help="gate without labels: max holdout alert rate")
    r.add_argument("--max-psi", type=float, default=0.25, help="gate without labels: max score shift (PSI)")
    r.add_argument("--f1-tolerance", type=float, default=0.02, help="gate with labels: F1 may trail the champion's")
    r.add_argument("--hub-state", help="the hub's state directory: roll winners out through its twins")
    r.add_argument("--broker", default="127.0.0.1:1883", help="the hub's backend broker HOST:PORT")
    r.add_argument("--bundle-url", help="base URL agents fetch bundles from (default: file:// of --registry)")
    r.add_argument("--canary-fraction", type=float, default=0.2, help="share of a type's devices canaried first")
    r.add_argument("--max-canary-alert-rate", type=float, default=0.05,
                   help="roll back when most canary devices alert surely above this rate and above the "
                        "rest of the type on the old model")
    r.add_argument("--min-canary-readings", type=int, default=200, help="canary readings in silver before deciding")
    r.add_argument("--watch-timeout", type=float, default=180.0, help="seconds to wait for canary readings")
    r.add_argument("--dry-run", action="store_true", help="train and gate, print the rollout plan; change nothing")
    r.set_defaults(handler=retrain_cmd)


def build_config(args: argparse.Namespace) -> Any:
    from cloud_jobs.config import (
        AggregateConfig,
        IncidentConfig,
        InputConfig,
        InputFormat,
        TableFormat,
        Trigger,
        WindowSpec,
        _seconds,
    )
    from cloud_jobs.errors import ConfigError

    try:
        return AggregateConfig(
            input=InputConfig(format=InputFormat(args.input_format), path=str(args.bronze),
                              max_files_per_trigger=args.max_files_per_trigger),
            out=str(args.out), table_format=TableFormat(args.table_format), trigger=Trigger.parse(args.trigger),
            watermark_s=_seconds(args.watermark, "watermark"),
            windows=tuple(WindowSpec.parse(w) for w in args.windows.split(",") if w.strip()),
            incidents=IncidentConfig(min_devices=args.incident_min_devices, min_fraction=args.incident_min_fraction,
                                     max_chance=args.incident_max_chance,
                                     device_anomaly_rate=args.device_anomaly_rate, webhook_url=args.webhook),
        )
    except ConfigError as exc:
        raise CliError(f"--{exc.key.split('.')[-1].replace('_', '-')}: {str(exc).split(': ', 1)[1]}") from None


def aggregate_cmd(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    if not Path(args.bronze).exists() and "://" not in str(args.bronze):
        raise CliError(f"--bronze: {args.bronze} does not exist")
    from cloud_jobs.fleet.job import main

    stop = threading.Event()
    if not cfg.trigger.available_now:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    console.print(f"aggregating {args.bronze} -> {args.out} ({args.trigger}; windows {args.windows}; "
                  f"watermark {args.watermark}); starting Spark …")
    report = main(cfg, on_batch=lambda st: console.print(st.line()), stop=stop)
    opened = {e["incident_id"] for e in report.incident_events if e["event"] == "open"}
    console.print(
        f"done: {report.total('readings'):,} readings to silver, {report.total('quarantined'):,} quarantined, "
        f"{report.total('late'):,} late rows dropped, {report.total('windows'):,} window rows, "
        f"{len(opened)} incidents opened ({len(report.incident_events)} events) -> {args.out}")
    return 0


def build_retrain_config(args: argparse.Namespace) -> Any:
    from cloud_jobs.config import GateConfig, RetrainConfig, RolloutConfig, TableFormat
    from cloud_jobs.errors import ConfigError

    try:
        return RetrainConfig(
            silver=str(args.silver), table_format=TableFormat(args.table_format), registry=str(args.registry),
            out=str(args.out), since=args.since or None,
            until=args.until or None, device_types=tuple(t for t in args.types.split(",") if t), labels=args.labels,
            incidents=args.incidents, holdout_fraction=args.holdout, exclude_flagged=not args.include_flagged,
            exclude_labelled=not args.include_labelled, min_rows=args.min_rows, n_estimators=args.trees,
            features=args.features, range_guard=not args.no_range_guard,
            target_fpr=args.target_fpr, seed=args.seed, sign_key=args.sign_key,
            mlflow_tracking_uri=args.mlflow_tracking_uri, mlflow_registry_uri=args.mlflow_registry_uri,
            model_name_prefix=args.model_prefix,
            gate=GateConfig(max_alert_rate=args.max_alert_rate, max_psi=args.max_psi, f1_tolerance=args.f1_tolerance),
            rollout=RolloutConfig(hub_state=args.hub_state, broker=args.broker, bundle_url=args.bundle_url,
                                  canary_fraction=args.canary_fraction,
                                  max_canary_alert_rate=args.max_canary_alert_rate,
                                  min_canary_readings=args.min_canary_readings, watch_timeout_s=args.watch_timeout,
                                  dry_run=args.dry_run),
        )
    except ConfigError as exc:
        raise CliError(f"--{exc.key.split('.')[-1].replace('_', '-')}: {str(exc).split(': ', 1)[1]}") from None


def retrain_cmd(args: argparse.Namespace) -> int:
    cfg = build_retrain_config(args)
    for flag, path in (("--silver", args.silver), ("--labels", args.labels), ("--sign-key", args.sign_key),
                       ("--hub-state", args.hub_state)):
        if path and "://" not in str(path) and not Path(path).exists():
            raise CliError(f"{flag}: {path} does not exist")
    try:
        import mlflow  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise CliError(f"retrain needs the 'cloud' and 'train' extras (pip install 'edgeflag[cloud,train]'): {exc}") \
            from None
    from cloud_jobs.errors import CloudJobError
    from cloud_jobs.retrain.job import failed_types, main

    console.print(f"retraining from {args.silver} -> {args.registry}" + (" (dry run)" if args.dry_run else "")
                  + "; starting Spark …")
    try:
        report = main(cfg, say=lambda m: console.print(m, highlight=False))
    except CloudJobError as exc:
        raise CliError(str(exc)) from None
    statuses = {t: e.get("status") for t, e in report["types"].items()}
    console.print("done: " + (", ".join(f"{t} {s}" for t, s in sorted(statuses.items())) or "no device types")
                  + f" in {report['seconds']} s")
    failed = failed_types(report)
    if failed:  # a scheduled job must be seen to fail; the others' results stand (see the report)
        console.print(f"[red]error:[/red] {', '.join(failed)} did not finish: see {report['report_path']}")
        return 1
    return 0
