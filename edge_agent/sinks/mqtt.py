"""`mqtt` uplink: paho-mqtt to any MQTT broker, IoT Hub topic layout, QoS 1.

One paho client per connection: paho's own reconnect is off (`reconnect_on_failure=False`)
and a dropped client is discarded with whatever it had in flight, so the outbox stays the
single source of truth and the agent's backoff owns retry.

Control plane (twin, methods) in IoT Hub's MQTT protocol, in one of two dialects
(`uplink.dialect`): "scoped" (default) uses ``edgeflag/iothub/<device_id>/twin/…`` and
``…/methods/…`` so a plain Mosquitto/EMQX with ACLs (``%u`` = device id) isolates devices;
"iothub" uses ``$iothub/…`` for a real IoT Hub or the local hub's front end.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from contracts.errors import ContractError
from contracts.jsonsafe import MAX_CONTROL_BYTES, loads, loads_object
from contracts.mqtt import MqttSettings, make_client, sas_token
from contracts.topics import (
    DEVICE_CONTROL_FILTERS,
    method_response_topic,
    parse_control_topic,
    reported_patch_topic,
    telemetry_topic,
    twin_get_topic,
    valid_rid,
)
from edge_agent.config import UplinkConfig, check
from edge_agent.errors import UplinkError
from edge_agent.packing import Message
from edge_agent.sinks.base import Controllable, DesiredHandler, MethodHandler, Sink, register
from edge_agent.sinks.netloop import NetworkLoop


class MqttUplinkConfig(UplinkConfig, tag="mqtt", frozen=True, forbid_unknown_fields=True):
    """type = "mqtt": any MQTT broker at `host`:`port`, IoT Hub's topic layout, QoS `qos`.

    TLS when `ca_file` is set; X.509 client authentication with `cert_file` + `key_file`. `sas_key`: sign
    a fresh IoT Hub SAS token per connection as the password (needs `username`, `iothub_hostname` and
    `device_id` or `client_id`). `dialect`: "scoped" (control topics under ``edgeflag/iothub/<device>/``,
    for a plain broker with ACLs) or "iothub" (``$iothub/…``, IoT Hub and the hub's front end).
    """

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str = ""
    password: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    qos: int = 1
    keepalive_s: int = 30
    dialect: str = "scoped"
    device_id: str = ""
    iothub_hostname: str = ""
    sas_key: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.port <= 65535, "port", "must be a TCP port")
        check(self.qos in (0, 1), "qos", "must be 0 or 1")
        check(self.dialect in ("scoped", "iothub"), "dialect", "must be scoped or iothub")
        check(bool(self.cert_file) == bool(self.key_file), "cert_file", "cert_file and key_file go together")
        if self.sas_key:
            check(bool(self.username), "username", "required with sas_key (the token is the password)")
            check(bool(self.iothub_hostname), "iothub_hostname", "required with sas_key (the token names it)")
            check(bool(self.device_id or self.client_id), "device_id", "required with sas_key")
            check(not self.password, "password", "set sas_key or password, not both")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


@register("mqtt")
class MqttSink(Sink, Controllable):
    Config = MqttUplinkConfig
    config: MqttUplinkConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._net: NetworkLoop | None = None
        self._up = threading.Event()
        self._acked: deque[int] = deque()
        self._tokens: dict[int, int] = {}
        self.last_error = ""
        self._on_desired: DesiredHandler | None = None
        self._on_method: MethodHandler | None = None
        self._rid = 0
        self._replies: dict[str, tuple[threading.Event, dict[str, Any]]] = {}

    @property
    def _identity(self) -> str:
        c = self.config
        return c.device_id or c.client_id

    @property
    def control_prefix(self) -> str:
        c = self.config
        device = c.device_id or c.username or c.client_id
        return "$iothub/" if c.dialect == "iothub" else f"edgeflag/iothub/{device}/"

    def set_control_handlers(self, on_desired: DesiredHandler, on_method: MethodHandler) -> None:
        self._on_desired, self._on_method = on_desired, on_method

    def _request(self, topic: Callable[[str], str], payload: bytes, timeout: float) -> tuple[int, bytes]:
        """Publish a twin request (its topic built for a fresh $rid) and wait for the twin/res reply."""
        if not self.connected:
            raise UplinkError("not connected")
        self._rid += 1
        rid = f"r{self._rid}"
        waiter: tuple[threading.Event, dict[str, Any]] = (threading.Event(), {})
        self._replies[rid] = waiter
        try:
            self._client.publish(self.control_prefix + topic(rid), payload, qos=1)
            if not waiter[0].wait(timeout):
                raise UplinkError(f"no twin response within {timeout:g}s")
            return int(waiter[1]["status"]), bytes(waiter[1]["payload"])
        finally:
            self._replies.pop(rid, None)

    def get_twin(self, timeout: float) -> dict[str, Any]:
        status, body = self._request(twin_get_topic, b"", timeout)
        if status != 200:
            raise UplinkError(f"twin GET answered {status}")
        try:
            twin = loads_object(body, what="twin", max_bytes=4 * MAX_CONTROL_BYTES)
        except ContractError as exc:
            raise UplinkError(f"twin GET answered an unusable twin: {exc}") from None
        return twin

    def patch_reported(self, patch: dict[str, Any], timeout: float) -> None:
        status, _ = self._request(reported_patch_topic, json.dumps(patch).encode(), timeout)
        if status not in (200, 204):
            raise UplinkError(f"reported patch answered {status}")

    def _on_control(self, client: Any, msg: Any) -> None:
        prefix = self.control_prefix
        topic = parse_control_topic(msg.topic[len(prefix):])
        if topic.kind == "twin_res":
            waiter = self._replies.get(topic.rid)
            if waiter:
                waiter[1].update(status=int(topic.arg), payload=msg.payload)
                waiter[0].set()
        elif topic.kind == "desired" and self._on_desired:
            try:
                patch: dict[str, Any] = loads_object(msg.payload or b"{}", what="desired patch")
            except ContractError as exc:
                patch = {"$invalid": str(exc)}  # the control plane rejects and reports it
            self._on_desired(patch)
        elif topic.kind == "method" and self._on_method:
            rid, name = topic.rid, topic.arg
            if not valid_rid(rid):
                self.last_error = f"method request with an unusable $rid {rid[:40]!r} ignored"
                return
            try:
                payload = loads(msg.payload, what="method payload") if msg.payload else None
            except ContractError as exc:
                status, body = 400, {"error": str(exc)}
            else:
                status, body = self._on_method(name, payload)
            client.publish(prefix + method_response_topic(status, rid), json.dumps(body), qos=1)

    def settings(self) -> MqttSettings:
        c = self.config
        return MqttSettings(host=c.host, port=c.port, client_id=c.client_id, username=c.username or None,
                            password=c.password or None, ca_file=Path(c.ca_file) if c.ca_file else None,
                            cert_file=Path(c.cert_file) if c.cert_file else None,
                            key_file=Path(c.key_file) if c.key_file else None, keepalive=c.keepalive_s)

    def _password(self) -> str | None:
        """The configured password, or a fresh SAS token when uplink.sas_key is set (valid 1 h)."""
        c = self.config
        if not c.sas_key:
            return c.password or None
        return sas_token(c.iothub_hostname, c.device_id or c.client_id, c.sas_key)

    def connect(self, timeout: float) -> None:
        self.close()
        s = self.settings()
        client = make_client(s, password=self._password(), reconnect_on_failure=False)
        client.max_inflight_messages_set(max(20, self.config.max_inflight))
        client.max_queued_messages_set(0)
        result: dict[str, int] = {}
        connack = threading.Event()
        acked, up = self._acked, self._up

        def on_connect(_c: Any, _u: Any, _f: Any, rc: int) -> None:
            result["rc"] = rc
            if rc == 0:
                up.set()
            connack.set()

        def on_disconnect(_c: Any, _u: Any, rc: int) -> None:
            up.clear()

        def on_publish(_c: Any, _u: Any, mid: int) -> None:
            acked.append(mid)

        prefix = self.control_prefix

        def on_message(cl: Any, _u: Any, msg: Any) -> None:
            if msg.topic.startswith(prefix):
                try:
                    self._on_control(cl, msg)
                except Exception as exc:  # the network thread must survive any control message
                    self.last_error = f"bad control message on {msg.topic[:200]}: {type(exc).__name__}: {exc}"

        client.on_connect, client.on_disconnect, client.on_publish = on_connect, on_disconnect, on_publish
        client.on_message = on_message
        self._tokens = {}
        acked.clear()
        net = NetworkLoop(client)
        try:
            client.connect(s.host, s.port, s.keepalive)
        except (OSError, ValueError) as exc:
            net.stop()
            self.last_error = f"cannot reach {s.host}:{s.port}: {exc}"
            raise UplinkError(self.last_error) from None
        net.start()
        self._client, self._net = client, net
        if connack.wait(timeout) and result.get("rc") == 0:
            client.subscribe([(prefix + f, 1) for f in DEVICE_CONTROL_FILTERS])
        if not connack.is_set() or result.get("rc") != 0:
            rc = result.get("rc")
            self.close()
            self.last_error = (f"broker {s.host}:{s.port} refused the connection: {mqtt.connack_string(rc)}"
                               if rc else f"no CONNACK from {s.host}:{s.port} within {timeout}s")
            raise UplinkError(self.last_error)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._up.is_set()

    def send(self, message: Message, token: int) -> bool:
        if not self.connected:
            return False
        topic = message.topic
        if self.config.dialect == "iothub" and message.device_id != self._identity:
            # IoT Hub (and the hub's front end) let a connection publish only as itself: an
            # identity-translation gateway sends under its own id; the payload names the sensor.
            topic = telemetry_topic(self._identity, message.properties)
        info = self._client.publish(topic, message.payload, qos=self.config.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._up.clear()
            self.last_error = f"publish failed: {mqtt.error_string(info.rc)}"
            return False
        if self.config.qos == 0:
            self._acked.append(info.mid)
        self._tokens[info.mid] = token
        return True

    def confirmed(self) -> list[int]:
        out = []
        while self._acked:
            mid = self._acked.popleft()
            tok = self._tokens.pop(mid, None)
            if tok is not None:
                out.append(tok)
        return out

    def close(self) -> None:
        client, self._client = self._client, None
        net, self._net = self._net, None
        self._up.clear()
        if client is not None:
            try:
                client.disconnect()
            finally:
                if net is not None:
                    net.stop()
