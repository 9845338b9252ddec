"""`mqtt` uplink: paho-mqtt to any MQTT broker, IoT Hub topic layout, QoS 1.

One paho client per connection: paho's own reconnect is off (`reconnect_on_failure=False`)
and a dropped client is discarded with whatever it had in flight, so the outbox stays the
single source of truth and the agent's backoff owns retry.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from contracts.mqtt import MqttSettings
from edge_agent.errors import UplinkError
from edge_agent.packing import Message
from edge_agent.sinks.base import Sink, register


@register("mqtt")
class MqttSink(Sink):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._up = threading.Event()
        self._acked: deque[int] = deque()
        self._tokens: dict[int, int] = {}
        self.last_error = ""

    def settings(self) -> MqttSettings:
        c = self.config
        return MqttSettings(host=c.host, port=c.port, client_id=c.client_id, username=c.username or None,
                            password=c.password or None, ca_file=Path(c.ca_file) if c.ca_file else None,
                            cert_file=Path(c.cert_file) if c.cert_file else None,
                            key_file=Path(c.key_file) if c.key_file else None, keepalive=c.keepalive_s)

    def connect(self, timeout: float) -> None:
        self.close()
        s = self.settings()
        client = mqtt.Client(client_id=s.client_id, clean_session=True, protocol=mqtt.MQTTv311,
                             reconnect_on_failure=False)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.ca_file is not None:
            client.tls_set(ca_certs=str(s.ca_file), certfile=str(s.cert_file) if s.cert_file else None,
                           keyfile=str(s.key_file) if s.key_file else None)
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

        client.on_connect, client.on_disconnect, client.on_publish = on_connect, on_disconnect, on_publish
        self._tokens = {}
        acked.clear()
        try:
            client.connect(s.host, s.port, s.keepalive)
        except (OSError, ValueError) as exc:
            self.last_error = f"cannot reach {s.host}:{s.port}: {exc}"
            raise UplinkError(self.last_error) from None
        client.loop_start()
        self._client = client
        if not connack.wait(timeout) or result.get("rc") != 0:
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
        info = self._client.publish(message.topic, message.payload, qos=self.config.qos)
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
        self._up.clear()
        if client is not None:
            try:
                client.disconnect()
            finally:
                client.loop_stop()
