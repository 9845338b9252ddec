"""`edgeflag hub …`: the local IoT Hub stand-in (so far: certificates and telemetry ingest to bronze)."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Any

from edgeflag.cli._common import CliError, console, host_port


def register(sub: Any) -> None:
    p = sub.add_parser("hub", help="local IoT Hub stand-in: certificates, telemetry ingest to bronze",
                       description="The cloud side on one machine. Twins, direct methods and rollout are not "
                       "built yet (see the IoT Hub issue).")
    hsub = p.add_subparsers(dest="hub_command", metavar="ACTION")
    hsub.required = True
    fmt = argparse.ArgumentDefaultsHelpFormatter
    c = hsub.add_parser("certs", help="create a CA, a server certificate and device certificates", formatter_class=fmt)
    c.add_argument("--out", type=Path, required=True, help="directory for the PEM files")
    c.add_argument("--host", action="append", default=[], help="server host (IP or DNS name); repeatable")
    c.add_argument("--device", action="append", default=[], help="device id to issue a client cert for; repeatable")
    c.set_defaults(handler=certs_cmd)
    r = hsub.add_parser("run", help="ingest telemetry from a broker into append-only bronze files",
                        formatter_class=fmt)
    r.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the MQTT broker")
    r.add_argument("--bronze", type=Path, required=True, help="bronze landing directory")
    r.add_argument("--ca-file", type=Path, help="CA to verify the broker (enables TLS)")
    r.add_argument("--client-id", default="edgeflag-hub-ingest", help="persistent-session client id")
    r.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until SIGTERM/SIGINT)")
    r.set_defaults(handler=run_cmd)


def certs_cmd(args: argparse.Namespace) -> int:
    from cloud_jobs.hub.certs import make_ca, make_device, make_server

    ca = make_ca(args.out)
    lines = [f"CA      {ca.cert}"]
    if args.host:
        s = make_server(ca, args.out, args.host)
        lines.append(f"server  {s.cert} (SANs: {', '.join(args.host)})")
    for d in args.device:
        lines.append(f"device  {make_device(ca, args.out, d).cert}")
    console.print("\n".join(lines))
    return 0


def run_cmd(args: argparse.Namespace) -> int:
    from cloud_jobs.hub.ingest import HubIngest
    from contracts.mqtt import MqttSettings

    host, port = host_port(args.broker)
    if args.ca_file and not args.ca_file.exists():
        raise CliError(f"--ca-file: {args.ca_file} does not exist")
    hub = HubIngest(MqttSettings(host=host, port=port, ca_file=args.ca_file), args.bronze, client_id=args.client_id)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    t = threading.Thread(target=hub.run, args=(stop,), daemon=True)
    t.start()
    if not hub.connected.wait(10):
        stop.set()
        raise CliError(f"cannot reach the broker at {host}:{port}")
    console.print(f"hub ingesting devices/+/messages/events/# from {host}:{port} into {args.bronze}")
    start = time.monotonic()
    while not stop.wait(0.2):
        if args.seconds and time.monotonic() - start >= args.seconds:
            stop.set()
    t.join(10)
    console.print(f"hub stopped; landed {hub.landed:,} messages")
    return 0
