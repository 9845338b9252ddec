"""The hub's MQTT-aware TLS front end: per-device authentication and per-device namespaces.

On IoT Hub every connection has its own ``$iothub/twin/…`` and ``$iothub/methods/…``
namespace; on a plain broker those topics would be shared by every client (a device
subscribed to ``$iothub/twin/res/#`` would see every other device's twin). The front end
sits between devices and a backend Mosquitto and restores IoT Hub's isolation:

* **Authentication** (per connection, before anything reaches the broker): either a TLS
  client certificate signed by the hub CA whose CN equals the MQTT client id (X.509), or a
  SAS token in the password whose `sr` names this device, whose HMAC-SHA256 signature checks
  against the device's key from the registry, and whose expiry `se` is in the future.
  Anything else gets CONNACK 5 (not authorized) and is disconnected. Passwords and keys are
  never logged.
* **Namespaces**: ``$iothub/<rest>`` from device D is rewritten to
  ``edgeflag/iothub/D/<rest>`` on the backend (publish and subscribe), and back on the way
  down; so D can only ever see its own twin and method traffic.
* **Identity pinning**: D may publish only to ``devices/D/…`` and ``$iothub/…``; any other
  topic (another device's telemetry, a wildcard trick) drops the connection. The backend
  sees username D, so Mosquitto `acl_file` patterns with ``%u`` enforce the same rule again.
* **Bounded connections** (`Limits`): a TLS handshake and then a CONNECT must each arrive within
  a few seconds; at most `max_connections` devices at once; a keep-alive of 0 or above IoT Hub's
  1,177 s is held to 1,177 s; a device that stops reading what is sent to it (its twin responses,
  methods) is disconnected after `slow_consumer_s` instead of making the backend buffer for it.
* **Revocation**: once a second the open connections are checked against the registry; a device
  that was removed or re-keyed, or whose SAS token (or certificate) expired, is disconnected,
  as IoT Hub does. Every close and refusal is counted by reason in `stats`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import itertools
import json
import logging
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.mqtt import sas_signature, sas_token
from contracts.reading import validate_device_id
from hub import mqttwire as w
from hub.statefile import write_private

__all__ = ["BACKEND_ACL", "SCOPE", "DeviceRegistry", "FrontEnd", "Limits", "check_sas", "sas_expiry", "sas_token"]

SCOPE = "edgeflag/iothub"
log = logging.getLogger("edgeflag.hub.frontend")

#: Mosquitto ACL for the backend: each identity only its own topics; the hub service sees all.
BACKEND_ACL = """\
pattern write devices/%u/messages/events/#
pattern read devices/%u/messages/devicebound/#
pattern readwrite edgeflag/iothub/%u/#
user edgeflag-hub
topic readwrite #
"""


class DeviceRegistry:
    """Device identities, their symmetric keys and twin tags, in a JSON file.

    Format: ``{"devices": {id: {"key": b64, "tags": {"device_type": "pump", ...}}}}``. Tags are what
    IoT Hub keeps in a twin's ``tags``: set by the operator, never by the device; the ingest copies
    ``device_type`` onto each message as IoT Hub's message enrichment does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._devices: dict[str, dict[str, Any]] = {}
        self._mtime: int | None = None
        self._refresh()

    def _refresh(self) -> None:
        """Re-read the file when it changed (`edgeflag hub device` adds devices to a running hub)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != self._mtime:
            self._devices = json.loads(self.path.read_text()).get("devices", {})
            self._mtime = mtime

    def ids(self) -> list[str]:
        self._refresh()
        return sorted(self._devices)

    def add(self, device_id: str, key: str | None = None, tags: dict[str, str] | None = None) -> str:
        """Register (or re-register) a device; keeps its key and tags unless new ones are given.

        ContractError for an id IoT Hub would refuse (it names MQTT topics: no '/', '+', '#')."""
        validate_device_id(device_id)
        self._refresh()
        old = self._devices.get(device_id, {})
        key = key or old.get("key") or base64.b64encode(secrets.token_bytes(32)).decode()
        entry: dict[str, Any] = {"key": key}
        if tags or old.get("tags"):
            entry["tags"] = {**old.get("tags", {}), **(tags or {})}
        self._devices[device_id] = entry
        write_private(self.path, json.dumps({"devices": self._devices}, indent=2))
        return key

    def tags(self, device_id: str) -> dict[str, str]:
        self._refresh()
        return dict(self._devices.get(device_id, {}).get("tags", {}))

    def key(self, device_id: str) -> str | None:
        self._refresh()
        d = self._devices.get(device_id)
        return d["key"] if d else None

    def keys(self) -> dict[str, str]:
        """Every registered device's key, read at most once (one stat of the file)."""
        self._refresh()
        return {d: v["key"] for d, v in self._devices.items()}

    def remove(self, device_id: str) -> bool:
        """Deregister a device (True if it was registered); a running front end closes its connections."""
        self._refresh()
        if self._devices.pop(device_id, None) is None:
            return False
        write_private(self.path, json.dumps({"devices": self._devices}, indent=2))
        return True


def _sas_fields(token: str) -> dict[str, str]:
    """The `sr`, `sig`, `se` … fields of a ``SharedAccessSignature …`` token (the prefix is optional)."""
    return dict(urllib.parse.parse_qsl(token.removeprefix("SharedAccessSignature "), keep_blank_values=True))


def sas_expiry(token: str) -> float | None:
    """The expiry (`se`, epoch seconds) of a SAS token, None if it has none that parses."""
    fields = _sas_fields(token)
    try:
        return float(int(fields["se"]))
    except (KeyError, ValueError):
        return None


def check_sas(token: str, device_id: str, key_b64: str, now: float | None = None) -> str | None:
    """None if `token` is a valid, unexpired SAS token for device_id under key_b64; else the reason."""
    if not token.startswith("SharedAccessSignature "):
        return "password is not a SAS token"
    fields = _sas_fields(token)
    try:
        sr, sig, se = fields["sr"], fields["sig"], int(fields["se"])
    except (KeyError, ValueError):
        return "SAS token lacks sr, sig or se"
    if not sr.endswith(f"/devices/{device_id}"):
        return "SAS token is for another device"
    if se <= (now if now is not None else time.time()):
        return "SAS token expired"
    want = sas_signature(urllib.parse.quote(sr, safe=""), se, key_b64)
    if not hmac.compare_digest(want, sig):
        return "SAS signature does not match the device key"
    return None


@dataclass(frozen=True)
class Limits:
    """What one device connection may hold of the front end (defaults fit IoT Hub's own).

    Attributes:
        handshake_timeout_s: a TLS handshake must finish within this.
        connect_timeout_s: after the handshake, the MQTT CONNECT must arrive within this.
        max_connections: devices connected at once; beyond it a connection is closed unanswered.
        max_keepalive_s: a keep-alive of 0 (none) or above this is held to this (IoT Hub: 1,177 s);
            a device silent for 1.5 times its keep-alive is disconnected.
        slow_consumer_s: a device that has not read what was sent to it for this long is disconnected.
        sweep_s: how often open connections are checked against the registry and their expiry.
    """

    handshake_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    max_connections: int = 5000
    max_keepalive_s: int = 1177
    slow_consumer_s: float = 10.0
    sweep_s: float = 1.0


@dataclass
class FrontEndStats:
    """Counters; `refused` and `closed` by reason (what a log line says, without secrets)."""

    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)
    dropped: int = 0


@dataclass
class _Session:
    device: str
    key: str | None  # the SAS key it authenticated with (None: X.509)
    expires: float | None  # token or certificate expiry, epoch seconds
    transports: list[asyncio.WriteTransport] = field(default_factory=list)


class FrontEnd:
    """TLS listener on (host, port) relaying authenticated devices to a backend broker."""

    def __init__(self, host: str, port: int, *, backend: tuple[str, int], cert: Path, key: Path, ca: Path,
                 registry: DeviceRegistry, backend_login: Callable[[str], str] | None = None,
                 limits: Limits | None = None) -> None:
        """`backend_login(device)` gives the password to relay a device to the backend with (None: the
        backend takes usernames without passwords); it may block briefly, it runs off the event loop."""
        self.host, self.port, self.backend = host, port, backend
        self.registry = registry
        self.backend_login = backend_login
        self.limits = limits or Limits()
        self._sessions: dict[int, _Session] = {}
        self._ids = itertools.count()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(str(ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL  # X.509 devices present a cert; SAS devices do not
        self.ssl = ctx
        self.stats = FrontEndStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle (a thread with its own event loop, so sync code and tests can use it) --
    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, self.port, ssl=self.ssl,
                                         ssl_handshake_timeout=self.limits.handshake_timeout_s))
            except OSError as exc:  # address in use, no such address …
                failure.append(exc)
                ready.set()
                return
            self._loop = loop
            self._sweeper = loop.create_task(self._sweep())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="edgeflag-hub-frontend", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"front end did not start on {self.host}:{self.port}")
        if failure:
            raise OSError(f"front end cannot listen on {self.host}:{self.port}: {failure[0]}")

    @property
    def alive(self) -> bool:
        """True while the front end's event-loop thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._server is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            # a connection cancelled mid-read ends in CancelledError, which asyncio's stream callback
            # reports as an "exception in callback" with a traceback: expected here, not an error
            default = loop.get_exception_handler()
            loop.set_exception_handler(lambda lp, ctx: None if isinstance(ctx.get("exception"), asyncio.CancelledError)
                                       else (default(lp, ctx) if default else lp.default_exception_handler(ctx)))
            for _ in range(3):  # a cancelled connection may start one last read: cancel that too
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                if not tasks:
                    break
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=1.0)  # never wait long on one that ignores its cancel

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(10)

    @property
    def connections(self) -> int:
        """Device connections open now (authenticated or still sending their CONNECT)."""
        return len(self._sessions)

    # -- revocation ------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        """Once per `sweep_s`: close connections whose device was removed or re-keyed, or whose
        token or certificate expired (IoT Hub disconnects a device at its token's expiry)."""
        while True:
            await asyncio.sleep(self.limits.sweep_s)
            try:
                keys = self.registry.keys()
            except (OSError, ValueError) as exc:  # a half-written registry: keep what is open, retry
                log.warning("device registry unreadable, connections kept: %s", exc)
                continue
            now = time.time()
            for sid, s in list(self._sessions.items()):
                if not s.device:
                    continue  # not authenticated yet
                if s.device not in keys:
                    reason = "device removed"
                elif s.key is not None and keys[s.device] != s.key:
                    reason = "device key changed"
                elif s.expires is not None and s.expires <= now:
                    reason = "credential expired"
                else:
                    continue
                self._close(sid, reason)

    def _close(self, sid: int, reason: str) -> None:
        s = self._sessions.pop(sid, None)
        if s is None:
            return
        self.stats.closed[reason] = self.stats.closed.get(reason, 0) + 1
        log.warning("device %s disconnected: %s", s.device or "?", reason)
        for t in s.transports:
            t.abort()

    # -- one device connection ---------------------------------------------------------------
    def _refuse(self, reason: str) -> None:
        self.stats.refused[reason] = self.stats.refused.get(reason, 0) + 1
        log.warning("connection refused: %s", reason)

    def _authenticate(self, c: w.Connect, peercert: dict | None) -> _Session | None:  # type: ignore[type-arg]
        device = c.client_id
        if peercert:
            cn = next((v for rdn in peercert.get("subject", ()) for k, v in rdn if k == "commonName"), None)
            if cn != device:
                self._refuse("certificate CN is not the client id")
                return None
            if self.registry.key(device) is None:  # a CA-signed certificate alone is not a registration
                self._refuse("unknown device")
                return None
            not_after = peercert.get("notAfter")
            return _Session(device, None, ssl.cert_time_to_seconds(not_after) if not_after else None)
        key = self.registry.key(device)
        if key is None:
            self._refuse("unknown device")
            return None
        token = (c.password or b"").decode("utf-8", "replace")
        reason = check_sas(token, device, key)
        if reason:
            self._refuse(reason)
            return None
        return _Session(device, key, sas_expiry(token))

    def _keepalive(self, asked: int) -> int:
        cap = self.limits.max_keepalive_s
        return cap if asked == 0 or asked > cap else asked

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._sessions) >= self.limits.max_connections:
            self._refuse("too many connections")
            writer.transport.abort()
            return
        sid = next(self._ids)
        self._sessions[sid] = _Session("", None, None, [writer.transport])
        b_writer: asyncio.StreamWriter | None = None
        try:
            first, body = await asyncio.wait_for(w.read_packet(reader), self.limits.connect_timeout_s)
            if first >> 4 != w.CONNECT:
                return
            connect = w.Connect.parse(body)
            session = self._authenticate(connect, writer.get_extra_info("peercert"))
            if session is None:
                writer.write(w.connack(5))
                await writer.drain()
                return
            device = session.device
            session.transports.append(writer.transport)
            self._sessions[sid] = session
            password = None
            if self.backend_login is not None:
                login = self.backend_login
                secret = await asyncio.get_running_loop().run_in_executor(None, login, device)
                password = secret.encode()
            if sid not in self._sessions:  # revoked while the backend login ran
                return
            b_reader, b_writer = await asyncio.open_connection(*self.backend)
            session.transports.append(b_writer.transport)
            keepalive = self._keepalive(connect.keepalive)
            # The front end enforces the device's keep-alive (1.5 x, in `_up`) and counts it; the broker gets
            # twice as long, so a silent device is cut here, with its reason, never first by the broker.
            backend_connect = w.Connect(client_id=connect.client_id, username=device, password=password,
                                        keepalive=min(2 * keepalive, 0xFFFF), clean_session=connect.clean_session,
                                        will=None)
            b_writer.write(backend_connect.encode())
            self.stats.accepted += 1
            await asyncio.gather(self._up(reader, b_writer, device, 1.5 * keepalive), self._down(b_reader, writer, sid))
        except asyncio.TimeoutError:
            self._close(sid, "no CONNECT in time" if b_writer is None else "keep-alive expired")
        except (asyncio.IncompleteReadError, ConnectionError, w.WireError, ssl.SSLError,
                UnicodeDecodeError, IndexError):
            pass
        finally:
            self._sessions.pop(sid, None)
            for wr in (writer, b_writer):
                if wr is not None:
                    with contextlib.suppress(Exception):
                        wr.close()

    def _up_topic(self, device: str, topic: str) -> str | None:
        if topic.startswith("$iothub/"):
            return f"{SCOPE}/{device}/{topic[len('$iothub/'):]}"
        parts = topic.split("/")
        if len(parts) >= 3 and parts[0] == "devices" and parts[1] == device:
            return topic
        return None

    async def _up(self, reader: asyncio.StreamReader, out: asyncio.StreamWriter, device: str,
                  idle_s: float) -> None:
        try:
            while True:
                first, body = await asyncio.wait_for(w.read_packet(reader), idle_s)
                kind = first >> 4
                if kind == w.PUBLISH:
                    packet = w.rewrite_publish(first, body, lambda t: self._up_topic(device, t))
                elif kind == w.SUBSCRIBE:
                    packet = w.rewrite_filters(first, body, lambda t: self._up_topic(device, t), with_qos=True)
                elif kind == w.UNSUBSCRIBE:
                    packet = w.rewrite_filters(first, body, lambda t: self._up_topic(device, t), with_qos=False)
                else:
                    packet = w.frame(first, body)
                if packet is None:
                    self.stats.dropped += 1
                    log.warning("device %s used a topic outside its namespace; disconnected", device)
                    return
                out.write(packet)
                await out.drain()
        finally:
            out.close()

    async def _down(self, reader: asyncio.StreamReader, out: asyncio.StreamWriter, sid: int) -> None:
        """Backend → device; a device that does not read for `slow_consumer_s` is disconnected, so
        the backend never buffers for it (its PUBLISHes are read from the backend as they come)."""
        device = self._sessions[sid].device
        prefix = f"{SCOPE}/{device}/"

        def down(topic: str) -> str:
            return "$iothub/" + topic[len(prefix):] if topic.startswith(prefix) else topic

        try:
            while True:
                first, body = await w.read_packet(reader)
                packet = w.rewrite_publish(first, body, down) if first >> 4 == w.PUBLISH else w.frame(first, body)
                out.write(packet or b"")
                try:
                    await asyncio.wait_for(out.drain(), self.limits.slow_consumer_s)
                except asyncio.TimeoutError:
                    self._close(sid, "slow consumer")
                    return
        finally:
            out.close()
