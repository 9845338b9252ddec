"""The hub, wired in one place: `Hub(HubConfig(...)).start()` / `.stop()`.

Parts, each optional by config: a private Mosquitto with the hub's ACLs (`start_broker`), telemetry
ingest into bronze (always), twins and direct methods (`twins`), and the TLS front end on
``frontend:8883`` (`frontend`, None for no device listener). The CLI (`edgeflag hub run`), the demo
and every test build the hub through this class, so they run the same wiring.

Guarantees: `start()` returns only when every part is up (or raises `HubError` naming the part and
leaves nothing running); `stop()` lands and acknowledges what the ingest already received, then stops
the parts in reverse order and is safe to call twice. Parts can be restarted one by one
(`stop_ingest`/`start_ingest`, `stop_frontend`/`start_frontend`) to test a hub restart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.mqtt import MqttSettings
from hub.bronze import BronzeFormat
from hub.frontend import BACKEND_ACL, DeviceRegistry, FrontEnd, Limits
from hub.ingest import HubIngest
from hub.mosquitto import Broker, BrokerLimits, TlsListener
from hub.twins import HUB_USER, TwinService

HUB_NAME = "edgeflag-hub.local"
DEVICE_PORT = 8883  # the azure-iot-device SDK's fixed MQTT-over-TLS port


class HubError(RuntimeError):
    """Raised when a part of the hub cannot start; the message names the part and the address."""


@dataclass(frozen=True)
class HubConfig:
    """Settings of one hub.

    Attributes:
        state: hub state directory (devices.json, twins/, pki/, backend secret, broker files).
        bronze: bronze landing directory.
        bronze_format: ``hub`` (our envelope) or ``iothub`` (IoT Hub's routing-to-storage JSON).
        bronze_rotate_s: a bronze file is published (visible to a streaming reader) this long after
            its first line at the latest.
        broker_host, broker_port: the backend broker; port 0 picks a free one (with start_broker).
        start_broker: start a private Mosquitto with the hub's ACLs (else use a running broker).
        broker_auth: with start_broker, refuse anonymous clients (per-identity HMAC passwords).
        broker_persistence: with start_broker, keep sessions and queued messages across restarts.
        broker_acl: with start_broker, pin each identity to its own topics (BACKEND_ACL); off only for a
            broker that devices reach straight over `broker_tls` with IoT Hub usernames.
        extra_acl: ACL lines appended to the hub's (e.g. a scoped-dialect device's grants).
        broker_tls: an extra TLS listener on the broker itself (devices straight to Mosquitto).
        hub_password: the hub services' password on an external broker.
        frontend: host of the TLS device listener on port 8883, or None for none.
        pki: certificates for the front end (default ``<state>/pki``, created if missing).
        twins: run the twin and method service.
        frontend_limits: handshake/CONNECT deadlines, connection cap, slow-consumer cut-off.
        broker_limits: with start_broker, Mosquitto's per-client queue and packet caps.
    """

    state: Path
    bronze: Path
    bronze_format: BronzeFormat = BronzeFormat.HUB
    bronze_rotate_s: float = 5.0
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    start_broker: bool = False
    broker_auth: bool = True
    broker_persistence: bool = True
    broker_acl: bool = True
    extra_acl: str = ""
    broker_tls: TlsListener | None = None
    hub_password: str | None = None
    frontend: str | None = "127.0.0.1"
    pki: Path | None = None
    twins: bool = True
    frontend_limits: Limits = field(default_factory=Limits)
    broker_limits: BrokerLimits = field(default_factory=BrokerLimits)


class Hub:
    """One running hub; see the module docstring for what start/stop guarantee."""

    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.registry = DeviceRegistry(config.state / "devices.json")
        self.broker: Broker | None = None
        self.ingest: HubIngest | None = None
        self.twins: TwinService | None = None
        self.front: FrontEnd | None = None
        self._login: Any = None
        self._password = config.hub_password
        self._ingest_stop = threading.Event()
        self._ingest_thread: threading.Thread | None = None
        self.port = config.broker_port

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.pem"

    @property
    def pki(self) -> Path:
        return self.config.pki or self.config.state / "pki"

    @property
    def mqtt(self) -> MqttSettings:
        """How the hub's own services log in to the backend broker."""
        return MqttSettings(host=self.config.broker_host, port=self.port, username=HUB_USER, password=self._password)

    def start(self) -> Hub:
        try:
            if self.config.start_broker:
                self._start_broker()
            self.start_ingest()
            if self.config.twins:
                self.twins = TwinService(self.config.broker_host, self.port, self.config.state, password=self._password)
                try:
                    self.twins.start()
                except RuntimeError as exc:
                    raise HubError(f"twins: {exc} ({self.config.broker_host}:{self.port})") from None
            if self.config.frontend is not None:
                self.start_frontend()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_broker(self) -> None:
        from hub.backend import BackendAuth, sighup

        c = self.config
        c.state.mkdir(parents=True, exist_ok=True)
        acl = c.state / "mosquitto.acl"
        acl.write_text(BACKEND_ACL + c.extra_acl)
        acl_conf = f"acl_file {acl.resolve()}\n" if c.broker_acl else ""
        password_file = None
        if c.broker_auth:
            auth = BackendAuth(c.state)
            auth.write_password_file([HUB_USER, *self.registry.ids()])
            self._password = auth.password(HUB_USER)
            password_file = auth.password_file
        self.broker = Broker(c.state.resolve(), port=c.broker_port or None, host=c.broker_host,
                             persistence=c.broker_persistence, extra_conf=acl_conf,
                             password_file=password_file, tls=c.broker_tls, limits=c.broker_limits)
        try:
            self.broker.start()
        except RuntimeError as exc:
            raise HubError(f"cannot start mosquitto on {c.broker_host}:{c.broker_port}: {exc}") from None
        self.port = self.broker.port
        if c.broker_auth:
            assert self.broker.proc is not None
            self._login = auth.login_for(sighup(self.broker.proc.pid))

    def start_ingest(self) -> None:
        self._ingest_stop = threading.Event()
        self.ingest = HubIngest(self.mqtt, self.config.bronze, fmt=self.config.bronze_format, registry=self.registry,
                                 rotate_s=self.config.bronze_rotate_s)
        self._ingest_thread = threading.Thread(target=self.ingest.run, args=(self._ingest_stop,),
                                               name="edgeflag-hub-ingest", daemon=True)
        self._ingest_thread.start()
        if not self.ingest.connected.wait(10):
            raise HubError(f"ingest cannot reach the broker at {self.config.broker_host}:{self.port}")

    def stop_ingest(self) -> None:
        self._ingest_stop.set()
        if self._ingest_thread is not None:
            self._ingest_thread.join(10)
            self._ingest_thread = None

    def start_frontend(self) -> None:
        from hub.certs import make_ca, make_server

        host = self.config.frontend
        assert host is not None
        if not (self.pki / "server.pem").exists():
            make_server(make_ca(self.pki), self.pki, [host, HUB_NAME])
        self.front = FrontEnd(host, DEVICE_PORT, backend=(self.config.broker_host, self.port),
                              cert=self.pki / "server.pem", key=self.pki / "server.key", ca=self.ca_file,
                              registry=self.registry, backend_login=self._login, limits=self.config.frontend_limits)
        try:
            self.front.start()
        except (OSError, RuntimeError) as exc:
            self.front = None
            raise HubError(f"front end: cannot listen on {host}:{DEVICE_PORT}: {exc}") from None

    def stop_frontend(self) -> None:
        if self.front is not None:
            self.front.stop()
            self.front = None

    def dead_parts(self) -> list[str]:
        """The started parts whose worker thread has died (the CLI then stops the hub and exits non-zero)."""
        dead = []
        if self._ingest_thread is not None and not self._ingest_thread.is_alive():
            dead.append("ingest")
        if self.twins is not None and not self.twins.alive:
            dead.append("twins")
        if self.front is not None and not self.front.alive:
            dead.append("front end")
        return dead

    @property
    def alive(self) -> bool:
        """False once a part's worker thread has died (see `dead_parts`)."""
        return self._ingest_thread is not None and not self.dead_parts()

    def stop(self) -> None:
        self.stop_frontend()
        if self.twins is not None:
            self.twins.stop()
            self.twins = None
        self.stop_ingest()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
