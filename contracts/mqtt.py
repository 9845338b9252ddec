"""Shared MQTT plumbing: connection settings and a paho client factory.

Used by the simulator publisher, the agent's MQTT source and uplink, and the hub,
so TLS and credentials are configured one way everywhere. Works with paho-mqtt
1.6.x (what azure-iot-device 2.14 pins) and 2.x.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to reach a broker.

    Attributes:
        host / port: broker address.
        client_id: MQTT client id ("" lets the broker pick; not allowed with clean_session=False).
        username / password: optional credentials (the password is never logged).
        ca_file: CA bundle to verify the broker; enables TLS when set.
        cert_file / key_file: client certificate for X.509 authentication.
        keepalive: seconds.
        clean_session: False keeps QoS 1 subscriptions across reconnects.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 30
    clean_session: bool = True

    def __repr__(self) -> str:  # never print the password
        return f"MqttSettings(host={self.host!r}, port={self.port}, client_id={self.client_id!r}, tls={self.tls})"

    @property
    def tls(self) -> bool:
        return self.ca_file is not None


def make_client(settings: MqttSettings, *, client_class: Any = None, password: str | None = None,
                reconnect_on_failure: bool = True) -> Any:
    """A configured, unconnected paho Client (MQTT 3.1.1): every paho client in edgeflag is made here.

    client_class: a paho Client subclass (e.g. `deferred_ack_client_class()`); password: overrides
    settings.password for this connection (a freshly signed SAS token); reconnect_on_failure=False
    leaves retry to the caller (the agent's uplink discards a dropped client with what it had in flight).
    """
    import paho.mqtt.client as mqtt

    kwargs: dict[str, Any] = {"client_id": settings.client_id, "clean_session": settings.clean_session,
                              "protocol": mqtt.MQTTv311, "reconnect_on_failure": reconnect_on_failure}
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt >= 2
        kwargs["callback_api_version"] = mqtt.CallbackAPIVersion.VERSION1
    client = (client_class or mqtt.Client)(**kwargs)
    if settings.username is not None:
        client.username_pw_set(settings.username, password if password is not None else settings.password)
    if settings.ca_file is not None:
        client.tls_set(
            ca_certs=str(settings.ca_file),
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def subscribe_on_connect(client: Any, topics: list[tuple[str, int]], ready: threading.Event, *,
                         on_connect: Callable[[Any], None] | None = None) -> None:
    """Install callbacks that subscribe `client` to `topics` at every successful (re)connect and set
    `ready` once the broker has acknowledged the subscription (SUBACK), not when it was sent: until
    then the broker drops what is published to those topics, or replays a retained message as one.
    `on_connect(client)` runs first at every connect. `ready` is not cleared here (on_disconnect is
    the caller's)."""
    pending: list[int] = []

    def _on_connect(cl: Any, _u: Any, _f: Any, rc: int) -> None:
        if rc == 0:
            if on_connect is not None:
                on_connect(cl)
            pending[:] = [cl.subscribe(topics)[1]]

    def _on_subscribe(_cl: Any, _u: Any, mid: int, _granted: Any) -> None:
        if mid in pending:
            ready.set()

    client.on_connect, client.on_subscribe = _on_connect, _on_subscribe


def deferred_ack_client_class() -> Any:
    """A paho Client subclass whose QoS 1 PUBACKs are sent only when `release` is called.

    paho-mqtt 1.6 acknowledges right after `on_message`; a consumer that must store a
    message before acknowledging it records (mid, generation) in `on_message` and calls
    `release` once the message is durable. Acks for an older connection (`generation`
    changed on reconnect) are dropped: the broker redelivers those messages.
    """
    import paho.mqtt.client as mqtt

    class DeferredAckClient(mqtt.Client):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.generation = 0

        def _send_puback(self, mid: int) -> int:
            return int(mqtt.MQTT_ERR_SUCCESS)  # deferred: the consumer recorded the mid

        def release(self, mids: list[tuple[int, int]]) -> None:
            for mid, generation in mids:
                if generation == self.generation:
                    super()._send_puback(mid)

    return DeferredAckClient


def sas_token(hub_host: str, device_id: str, key_b64: str, ttl_s: float = 3600, now: float | None = None) -> str:
    """A device SAS token exactly as Azure IoT Hub (and the azure-iot-device SDK) builds it:
    ``SharedAccessSignature sr=<url-encoded hub/devices/id>&sig=<HMAC-SHA256, base64>&se=<expiry>``."""
    import time
    import urllib.parse

    uri = urllib.parse.quote(f"{hub_host}/devices/{device_id}", safe="")
    expiry = int((now if now is not None else time.time()) + ttl_s)
    sig = sas_signature(uri, expiry, key_b64)
    return f"SharedAccessSignature sr={uri}&sig={urllib.parse.quote(sig, safe='')}&se={expiry}"


def sas_signature(encoded_uri: str, expiry: int, key_b64: str) -> str:
    """base64(HMAC-SHA256(key, "<url-encoded resource uri>\\n<expiry>")): what signs and checks a SAS token."""
    import base64
    import hashlib
    import hmac

    mac = hmac.new(base64.b64decode(key_b64), f"{encoded_uri}\n{expiry}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()
