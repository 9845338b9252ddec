"""`edgeflag cloud …`: the Spark jobs, on local[*] here and unchanged on Databricks.

`aggregate` turns bronze telemetry into exactly-once silver readings, event-time windows per device
and channel and per device type, and fleet incidents. With `--trigger available-now` it processes
what is there and stops (a scheduled run); with `--trigger processing-time=10s` it runs until
SIGINT/SIGTERM. Same code, same checkpoint: switch between the two at will.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from edgeflag.cli._common import CliError, console


def register(sub: Any) -> None:
    p = sub.add_parser("cloud", help="Spark jobs: fleet aggregation (retraining next)", description=__doc__,
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
    a.add_argument("--device-anomaly-rate", type=float, default=0.1,
                   help="a device is anomalous in a window when this share of its readings is flagged")
    a.add_argument("--webhook", help="POST every incident event here (retried; Idempotency-Key header)")
    a.set_defaults(handler=aggregate_cmd)


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
