"""`edgeflag hub …`: the local IoT Hub stand-in.

`run` starts the hub services on a broker (or, with --start-broker, its own Mosquitto with the
hub's ACLs): telemetry ingest into bronze, device twins and direct methods, and the TLS front end
on HOST:8883 that authenticates devices and gives each its own $iothub namespace (--no-frontend
to skip it). The operator commands (`device`, `twin get|set`, `method`, `rollout`) talk to the
same broker and hub state directory.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

from contracts.errors import ContractError
from edgeflag.cli._common import CliError, console, host_port
from hub.hub import HUB_NAME


def register(sub: Any) -> None:
    p = sub.add_parser("hub", help="local IoT Hub stand-in: ingest, twins, methods, rollout, certificates",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hsub = p.add_subparsers(dest="hub_command", metavar="ACTION")
    hsub.required = True
    fmt = argparse.ArgumentDefaultsHelpFormatter

    c = hsub.add_parser("certs", help="create a CA, a server certificate and device certificates", formatter_class=fmt)
    c.add_argument("--out", type=Path, required=True, help="directory for the PEM files")
    c.add_argument("--host", action="append", default=[], help="server host (IP or DNS name); repeatable")
    c.add_argument("--device", action="append", default=[], help="device id to issue a client cert for; repeatable")
    c.set_defaults(handler=certs_cmd)

    def common(x: Any) -> None:
        x.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT of the backend MQTT broker")
        x.add_argument("--state", type=Path, default=Path("hub-state"), help="hub state directory (twins, devices)")

    r = hsub.add_parser("run", help="run ingest, twins/methods and optionally the TLS front end", formatter_class=fmt)
    common(r)
    r.add_argument("--bronze", type=Path, required=True, help="bronze landing directory")
    r.add_argument("--frontend", metavar="HOST", default="127.0.0.1",
                   help="serve devices over TLS on HOST:8883 (the SDK's fixed port)")
    r.add_argument("--no-frontend", action="store_true", help="no device listener (devices use the broker + ACLs)")
    r.add_argument("--pki", type=Path, help="certificates from 'hub certs' (default: <state>/pki, created if missing)")
    r.add_argument("--start-broker", action="store_true",
                   help="start a private Mosquitto on --broker with the hub's ACLs (else use a running one)")
    r.add_argument("--seconds", type=float, default=0, help="stop after this long (0 = until SIGTERM/SIGINT)")
    r.add_argument("--bronze-rotate", type=float, default=5.0, metavar="SECONDS",
                   help="publish each bronze file (make it visible to a streaming reader) after this long")
    r.add_argument("--bronze-format", choices=("hub", "iothub"), default="hub",
                   help="bronze line format: the hub's envelope, or IoT Hub's routing-to-storage JSON")
    r.set_defaults(handler=run_cmd)

    d = hsub.add_parser("device", help="register a device (SAS key) and print its connection string, or --remove it",
                        formatter_class=fmt)
    common(d)
    d.add_argument("device_id")
    d.add_argument("--remove", action="store_true",
                   help="deregister the device; a running hub closes its open connections within a second")
    d.add_argument("--gateway", default="127.0.0.1", help="GatewayHostName for the connection string")
    d.add_argument("--type", dest="device_type", help="twin tag device_type (pump, compressor, chiller, …)")
    d.set_defaults(handler=device_cmd)

    t = hsub.add_parser("twin", help="show a device twin (get) or set desired properties (set)",
                        formatter_class=fmt)
    t.add_argument("action", choices=("get", "set"))
    common(t)
    t.add_argument("device_id")
    t.add_argument("set", nargs="*", metavar="KEY=VALUE", help="with set: desired properties (values parsed as JSON)")
    t.set_defaults(handler=twin_cmd)

    m = hsub.add_parser("method", help="invoke a direct method on a device", formatter_class=fmt)
    common(m)
    m.add_argument("device_id")
    m.add_argument("name", help="get_status, flush, rollback_model, set_log_level")
    m.add_argument("--payload", default="null", help="JSON payload")
    m.add_argument("--timeout", type=float, default=30.0)
    m.set_defaults(handler=method_cmd)

    o = hsub.add_parser("rollout", help="roll a model bundle out to devices", formatter_class=fmt)
    common(o)
    o.add_argument("--bundle", type=Path, required=True, help="bundle directory (or registry: latest)")
    o.add_argument("--devices", required=True, help="comma-separated device ids")
    o.add_argument("--url", help="URL devices fetch the bundle from (default: file:// of --bundle)")
    o.set_defaults(handler=rollout_cmd)


def certs_cmd(args: argparse.Namespace) -> int:
    from hub.certs import make_ca, make_device, make_server

    ca = make_ca(args.out)
    lines = [f"CA      {ca.cert}"]
    if args.host:
        s = make_server(ca, args.out, args.host)
        lines.append(f"server  {s.cert} (SANs: {', '.join(args.host)})")
    for d in args.device:
        lines.append(f"device  {make_device(ca, args.out, d).cert}")
    console.print("\n".join(lines))
    return 0


def _twins(args: argparse.Namespace) -> Any:
    from hub.backend import BackendAuth
    from hub.twins import HUB_USER, TwinService

    host, port = host_port(args.broker)
    auth = BackendAuth(args.state)  # present when the hub runs its own broker (--start-broker)
    svc = TwinService(host, port, args.state, password=auth.password(HUB_USER) if auth.exists else None,
                      serve=False)
    try:
        svc.start()
    except RuntimeError as exc:
        raise CliError(f"{exc} ({host}:{port})") from None
    return svc


def run_cmd(args: argparse.Namespace) -> int:
    from hub.bronze import BronzeFormat
    from hub.hub import Hub, HubConfig, HubError

    host, port = host_port(args.broker)
    hub = Hub(HubConfig(state=args.state, bronze=args.bronze, bronze_format=BronzeFormat(args.bronze_format),
                        bronze_rotate_s=args.bronze_rotate,
                        broker_host=host, broker_port=port, start_broker=args.start_broker,
                        frontend=None if args.no_frontend else args.frontend, pki=args.pki,
                        hub_password=_external_password(args) if not args.start_broker else None))
    created = not (hub.pki / "server.pem").exists() and not args.no_frontend
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        hub.start()
    except HubError as exc:
        raise CliError(str(exc)) from None
    if created:
        console.print(f"created hub certificates in {hub.pki} (devices trust {hub.ca_file})")
    console.print(f"hub: ingest -> {args.bronze} ({args.bronze_format} format), twins/methods in {args.state}"
                  + (f", devices over TLS on {args.frontend}:8883" if hub.front else ""))
    start = time.monotonic()
    dead: list[str] = []
    while not stop.wait(0.2):
        if args.seconds and time.monotonic() - start >= args.seconds:
            stop.set()
        dead = hub.dead_parts()
        if dead:
            stop.set()
    landed = hub.ingest.landed if hub.ingest else 0
    refused = hub.ingest.refused if hub.ingest else 0
    hub.stop()
    if dead:
        raise CliError(f"the hub's {' and '.join(dead)} thread died; the hub stopped (see the log above)", code=1)
    console.print(f"hub stopped; landed {landed:,} messages"
                  + (f", refused {refused:,} over the 256 KB limit" if refused else ""))
    return 0


def _external_password(args: argparse.Namespace) -> str | None:
    from hub.backend import BackendAuth
    from hub.twins import HUB_USER

    auth = BackendAuth(args.state)
    return auth.password(HUB_USER) if auth.exists else None


def device_cmd(args: argparse.Namespace) -> int:
    from hub.frontend import DeviceRegistry

    registry = DeviceRegistry(args.state / "devices.json")
    if args.remove:
        if not registry.remove(args.device_id):
            raise CliError(f"device {args.device_id!r} is not registered in {registry.path}")
        console.print(f"removed {args.device_id}")
        return 0
    tags = {"device_type": args.device_type} if args.device_type else None
    try:
        key = registry.add(args.device_id, tags=tags)
    except ContractError as exc:
        raise CliError(f"device id refused: {exc}") from None
    # plain print: the connection string must stay on one line to be copied
    print(f"HostName={HUB_NAME};DeviceId={args.device_id};SharedAccessKey={key};GatewayHostName={args.gateway}")
    return 0


def twin_cmd(args: argparse.Namespace) -> int:
    if args.action == "set" and not args.set:
        raise CliError("twin set needs at least one KEY=VALUE")
    if args.action == "get" and args.set:
        raise CliError("twin get takes no KEY=VALUE (did you mean 'twin set'?)")
    svc = _twins(args)
    try:
        if args.action == "set":
            patch: dict[str, Any] = {}
            for kv in args.set:
                key, sep, value = kv.partition("=")
                if not sep:
                    raise CliError(f"expected KEY=VALUE, got {kv!r}")
                try:
                    patch[key] = json.loads(value)
                except ValueError:
                    patch[key] = value
            try:
                twin = svc.set_desired(args.device_id, patch)
            except ContractError as exc:
                raise CliError(f"desired patch refused: {exc}") from None
        else:
            twin = svc.twin(args.device_id)
        print(json.dumps(twin, indent=2))
    finally:
        svc.stop()
    return 0


def method_cmd(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError:
        raise CliError("--payload must be JSON") from None
    svc = _twins(args)
    try:
        status, body = svc.invoke(args.device_id, args.name, payload, args.timeout)
    finally:
        svc.stop()
    print(json.dumps({"status": status, "payload": body}, indent=2))
    return 0 if status < 400 else 1


def rollout_cmd(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle
    from models.errors import ModelError
    from models.registry import Registry

    try:
        path = Registry(args.bundle).resolve(args.bundle)
        m = load_bundle(path).manifest
    except ModelError as exc:
        raise CliError(str(exc)) from None
    spec = {"version": m.version, "url": args.url or path.resolve().as_uri(), "sha256": m.sha256}
    svc = _twins(args)
    try:
        for dev in [d for d in args.devices.split(",") if d]:
            svc.set_desired(dev, {"model": spec})
            console.print(f"{dev}: desired model -> {m.name} v{m.version} ({m.sha256[:12]})")
    finally:
        svc.stop()
    return 0
