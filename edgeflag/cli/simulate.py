"""`edgeflag simulate`: drive a fleet of virtual devices with labelled faults."""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from contracts.mqtt import MqttSettings
from contracts.reading import parse_ts
from contracts.topics import SENSOR_PREFIX
from edgeflag.cli._common import CliError, console, host_port, positive_float, positive_int
from simulators import ConfigError, Fleet, FleetConfig, SimulatorError
from simulators.channels import CHANNELS_BY_NAME, pick_channels
from simulators.faults import FaultType, FleetFault
from simulators.types import DEVICE_TYPES, pick_types
from simulators.writers import CsvWriter, JsonlWriter

PROGRESS_FROM = 200_000  # show a progress bar for runs at least this many readings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate", help="simulate a fleet of devices with labelled, injected faults",
        description="Simulate N devices x channels with realistic signals and injected, labelled anomalies. "
        "Writes JSONL (Reading contract, one per line) or CSV, or publishes to an MQTT broker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--devices", type=positive_int, default=5, help="number of virtual devices")
    p.add_argument("--duration", type=positive_float, default=600.0, help="simulated seconds per device")
    p.add_argument("--interval", type=positive_float, default=1.0, help="seconds between readings of a device")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same output")
    p.add_argument("--anomaly-rate", type=float, default=0.004,
                   help="chance per reading that a fault starts on a device")
    p.add_argument("--faults", default=",".join(f.value for f in FaultType),
                   help="comma-separated fault types to inject")
    p.add_argument("--channels", default=",".join(CHANNELS_BY_NAME), help="comma-separated channels")
    p.add_argument("--start", default="2026-01-01T00:00:00Z", help="event time of the first reading (UTC)")
    p.add_argument("--prefix", default="dev", help="device id prefix")
    p.add_argument("--types", default=None, metavar="TYPE,…",
                   help=f"device types, assigned round-robin ({', '.join(DEVICE_TYPES)}); each has its own channels "
                   "and ids <type>-NNNN (replaces --channels and --prefix)")
    p.add_argument("--fleet-fault", action="append", default=[], metavar="TYPE:K:START_S[:KIND[:SPAN]]",
                   help="a correlated fault hitting K devices of TYPE about START_S seconds in, labelled "
                   "fleet-<n>-<type> (repeatable; needs --types), e.g. pump:4:300:level_shift:180")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="output file (.jsonl or .csv)")
    out.add_argument("--mqtt", metavar="HOST:PORT", help="publish each reading to this MQTT broker")
    p.add_argument("--rate", type=positive_float, default=None,
                   help="with --mqtt: target readings per second (default: as fast as possible)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1, help="with --mqtt: MQTT QoS")
    p.add_argument("--topic-prefix", default=SENSOR_PREFIX, help="with --mqtt: topic prefix")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> FleetConfig:
    try:
        start = parse_ts(args.start)
    except ValueError as exc:
        raise CliError(f"--start: {exc}") from None
    try:
        types = pick_types(args.types) if args.types else ()
        if args.fleet_fault and not types:
            raise CliError("--fleet-fault: needs --types (a fleet fault hits devices of one type)")
        return FleetConfig(
            devices=args.devices, interval_s=args.interval, seed=args.seed, anomaly_rate=args.anomaly_rate,
            faults=FaultType.parse(args.faults), channels=pick_channels(args.channels.split(",")),
            start=start.astimezone(timezone.utc), prefix=args.prefix, device_types=types,
            fleet_faults=tuple(FleetFault.parse(f, i + 1) for i, f in enumerate(args.fleet_fault)),
        )
    except ConfigError as exc:
        flag = {"device_types": "types", "fleet_faults": "fleet-fault"}.get(exc.key, exc.key.replace("_", "-"))
        raise CliError(f"--{flag}: {str(exc).split(': ', 1)[1]}") from None


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    fleet = Fleet(config)
    per_device = fleet.readings_for(args.duration)
    total = per_device * config.devices
    show = not args.quiet and total >= PROGRESS_FROM
    counts: Counter[str] = Counter()
    started = datetime.now(timezone.utc)

    def chunks() -> Any:
        for blocks in fleet.blocks(per_device):
            for b in blocks:
                if b.faults is not None:
                    counts.update(f for f in b.faults if f)
            yield blocks

    with Progress(TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not show, transient=True) as progress:
        task = progress.add_task("readings", total=total)
        if args.out is not None:
            written = _write_file(args.out, config, chunks(), lambda n: progress.advance(task, n))
            where = str(args.out)
            rate_line = ""
        else:
            from simulators.publish import publish_blocks

            host, port = host_port(args.mqtt)
            settings = MqttSettings(host=host, port=port, client_id=f"edgeflag-sim-{args.seed}")
            last = [0]

            def advance(sent: int) -> None:
                progress.advance(task, sent - last[0])
                last[0] = sent

            try:
                report = publish_blocks(chunks(), settings, rate=args.rate, qos=args.qos,
                                        prefix=args.topic_prefix, on_progress=advance)
            except SimulatorError as exc:
                raise CliError(str(exc)) from None
            written = report.published
            where = f"mqtt://{host}:{port}/{args.topic_prefix}/<device>"
            target = f"{args.rate:.0f}/s target" if args.rate else "no rate limit"
            rate_line = (f"\n  rate: {report.rate:,.0f} readings/s achieved ({target}), "
                         f"{report.confirmed:,} acknowledged at QoS {args.qos}, {report.elapsed_s:.1f} s")
    elapsed = (datetime.now(timezone.utc) - started).total_seconds()
    labelled = sum(counts.values())
    by_type = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    console.print(
        f"simulated {written:,} readings from {config.devices} devices x {per_device:,} "
        f"({_channels_line(config)}) seed {config.seed} -> {where} in {elapsed:.1f} s\n"
        f"  labelled anomalous: {labelled:,} ({labelled / max(written, 1):.1%}): {by_type}{rate_line}"
    )
    return 0


def _channels_line(config: FleetConfig) -> str:
    if not config.device_types:
        return ", ".join(config.channel_names)
    return "; ".join(f"{t.name}: {', '.join(t.channel_names)}" for t in config.device_types)


def _write_file(path: Path, config: FleetConfig, chunks: Any, advance: Any) -> int:
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv", ".ndjson"):
        raise CliError(f"--out: use a .jsonl or .csv file name, got {path.name!r}")
    header = {t.channel_names for t in config.device_types} or {config.channel_names}
    if suffix == ".csv" and len(header) > 1:
        raise CliError("--out: device types with different channels do not fit one CSV header; use .jsonl")
    if path.parent and not path.parent.exists():
        raise CliError(f"--out: directory {path.parent} does not exist")
    tmp = path.with_name(path.name + ".part")
    n = 0
    try:
        with tmp.open("w") as fh:
            writer = CsvWriter(fh, next(iter(header))) if suffix == ".csv" else JsonlWriter(fh)
            for blocks in chunks:
                k = writer.write(blocks)
                n += k
                advance(k)
        tmp.replace(path)
    except SimulatorError as exc:
        raise CliError(str(exc)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
