"""`iothub` uplink: Azure IoT Hub through the real azure-iot-device SDK (MQTT over TLS).

Identity: a device connection string (SAS; `GatewayHostName=` picks the address to connect
to) or an X.509 device certificate (`cert_file`/`key_file` with `iothub_hostname` and
`device_id`). `ca_file` is the server verification certificate (the CA of a local hub or
an IoT Edge gateway); leave it empty for Azure's public roots.

Messages carry content_type application/json, content_encoding utf-8 or gzip, and custom
properties `anomaly`, `schema`, `model`. The agent sends every reading under this one
identity; the payload's device_id names the sensor (identity-translation gateway).

Retry is owned by the agent, not the SDK: the client is created with
`connection_retry=False`, so a dropped connection is reported (`connected` turns False),
the client is discarded, unconfirmed messages are resent from the outbox and the agent
reconnects with its own backoff. A message is confirmed only when the SDK's
`send_message` completed (PUBACK received).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config import UplinkConfig, check
from edge_agent.errors import UplinkError
from edge_agent.packing import Message
from edge_agent.sinks.base import Controllable, DesiredHandler, MethodHandler, Sink, register


class IoTHubUplinkConfig(UplinkConfig, tag="iothub", frozen=True, forbid_unknown_fields=True):
    """type = "iothub": Azure IoT Hub through the azure-iot-device SDK.

    Identity: `connection_string` (``HostName=…;DeviceId=…;SharedAccessKey=…`` and, behind a gateway,
    ``;GatewayHostName=…``), or X.509: `cert_file` + `key_file` + `iothub_hostname` + `device_id`
    (+ `gateway_hostname`). `ca_file`: the certificate to verify the server with (a gateway's, or the
    local hub's). One of the two identities is required: without it the agent could only retry forever.
    """

    connection_string: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    iothub_hostname: str = ""
    device_id: str = ""
    gateway_hostname: str = ""
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        x509 = (self.cert_file, self.key_file, self.iothub_hostname, self.device_id)
        if self.connection_string:
            fields = self.connection_fields
            missing = [k for k in ("HostName", "DeviceId") if not fields.get(k)]
            check(not missing, "connection_string", f"lacks {', '.join(missing)}")
            check(not any(x509), "cert_file", "set connection_string or the X.509 identity, not both")
        else:
            check(all(x509), "connection_string",
                  "required, or the X.509 identity: cert_file, key_file, iothub_hostname and device_id")
        check(self.keepalive_s >= 1, "keepalive_s", "must be >= 1")

    @property
    def endpoint(self) -> str:
        if self.gateway_hostname:
            return self.gateway_hostname
        if self.connection_string:
            fields = self.connection_fields
            return fields.get("GatewayHostName") or fields.get("HostName", "")
        return self.iothub_hostname

    @property
    def connection_fields(self) -> dict[str, str]:
        """The connection string's ``Key=value`` fields (HostName, DeviceId, SharedAccessKey, GatewayHostName)."""
        return dict(p.split("=", 1) for p in self.connection_string.split(";") if "=" in p)


if TYPE_CHECKING:  # asyncio is imported when an iothub uplink connects: an mqtt agent never pays for it (~1 MB)
    import asyncio
    from concurrent.futures import Future

def _redact(text: str) -> str:
    import re

    return re.sub(r"(SharedAccessKey|sig)=[^;&\s]+", r"\1=***", text)


@register("iothub")
class IoTHubSink(Sink, Controllable):
    Config = IoTHubUplinkConfig
    config: IoTHubUplinkConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._done: deque[int] = deque()
        self._up = False
        self.last_error = ""
        self._on_desired: DesiredHandler | None = None
        self._on_method: MethodHandler | None = None

    def set_control_handlers(self, on_desired: DesiredHandler, on_method: MethodHandler) -> None:
        """Route twin patches and method calls of the SDK client (now and after reconnects) to the agent."""
        self._on_desired, self._on_method = on_desired, on_method
        if self._client is not None:
            try:
                self._install_handlers(self._client)
            except Exception as exc:  # the connection went away meanwhile: the next connect installs them
                self._up = False
                self.last_error = f"iothub: cannot enable twin/methods: {_redact(str(exc))}"

    def _install_handlers(self, client: Any) -> None:
        from azure.iot.device import MethodResponse

        loop = self._ensure_loop()

        def on_patch(patch: dict[str, Any]) -> None:
            if self._on_desired:  # the control plane validates (and rejects a non-object) itself
                self._on_desired(dict(patch) if isinstance(patch, dict) else patch)

        def on_method(request: Any) -> None:
            if not self._on_method:
                return
            status, body = self._on_method(request.name, request.payload)
            response = MethodResponse.create_from_method_request(request, status, body)
            import asyncio

            asyncio.run_coroutine_threadsafe(client.send_method_response(response), loop)

        client.on_twin_desired_properties_patch_received = on_patch
        client.on_method_request_received = on_method

    def get_twin(self, timeout: float) -> dict[str, Any]:
        if self._client is None:
            raise UplinkError("not connected")
        try:
            twin: dict[str, Any] = self._run(self._client.get_twin(), timeout)
        except Exception as exc:  # the SDK's exception tree
            raise UplinkError(f"get_twin failed: {_redact(str(exc))}") from None
        return twin

    def patch_reported(self, patch: dict[str, Any], timeout: float) -> None:
        if self._client is None:
            raise UplinkError("not connected")
        try:
            self._run(self._client.patch_twin_reported_properties(patch), timeout)
        except Exception as exc:
            raise UplinkError(f"patch_reported failed: {_redact(str(exc))}") from None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio

        if self._loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="edgeflag-iothub", daemon=True)
            self._thread.start()
            self._loop = loop
        return self._loop

    def _run(self, coro: Any, timeout: float) -> Any:
        import asyncio

        fut = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()  # do not leave the SDK operation pending on the loop
            raise

    def _make_client(self) -> Any:
        from azure.iot.device import X509
        from azure.iot.device.aio import IoTHubDeviceClient

        c = self.config
        kwargs: dict[str, Any] = {"connection_retry": False, "keep_alive": c.keepalive_s}
        if c.ca_file:
            kwargs["server_verification_cert"] = Path(c.ca_file).read_text()
        if c.connection_string:
            return IoTHubDeviceClient.create_from_connection_string(c.connection_string, **kwargs)
        if c.cert_file and c.key_file:
            if c.gateway_hostname:
                kwargs["gateway_hostname"] = c.gateway_hostname
            return IoTHubDeviceClient.create_from_x509_certificate(
                x509=X509(c.cert_file, c.key_file),  # type: ignore[no-untyped-call]
                hostname=c.iothub_hostname, device_id=c.device_id, **kwargs)
        raise UplinkError("iothub uplink needs uplink.connection_string, or uplink.cert_file + key_file")

    def connect(self, timeout: float) -> None:
        self.close()
        try:
            client = self._make_client()
        except (ValueError, TypeError, OSError) as exc:
            raise UplinkError(f"iothub: bad identity settings: {_redact(str(exc))}") from None

        def on_state_change() -> None:
            self._up = bool(client.connected)

        client.on_connection_state_change = on_state_change
        self._client = client
        try:
            self._run(client.connect(), timeout)
            if self._on_desired or self._on_method:  # enabling twin/method features needs a connection
                self._install_handlers(client)
        except Exception as exc:  # the SDK raises its own exception tree
            self.last_error = f"iothub connect failed: {type(exc).__name__}: {_redact(str(exc))}"
            self.close()
            raise UplinkError(self.last_error) from None
        self._up = True

    @property
    def connected(self) -> bool:
        return self._client is not None and self._up and bool(self._client.connected)

    def send(self, message: Message, token: int) -> bool:
        from azure.iot.device import Message as SdkMessage

        if not self.connected:
            return False
        props = message.properties
        msg = SdkMessage(message.payload, content_encoding=props.get("$.ce", "utf-8"),  # type: ignore[no-untyped-call]
                         content_type=props.get("$.ct", "application/json"))
        msg.custom_properties = {k: v for k, v in props.items() if not k.startswith("$.")}
        import asyncio

        fut: Future[None] = asyncio.run_coroutine_threadsafe(self._client.send_message(msg), self._ensure_loop())
        client = self._client

        def done(f: Future[None]) -> None:
            if f.cancelled() or f.exception() is not None:
                if client is self._client:
                    self._up = False
                    self.last_error = f"iothub send failed: {_redact(str(f.exception()))}"
                return
            if client is self._client:
                self._done.append(token)

        fut.add_done_callback(done)
        return True

    def confirmed(self) -> list[int]:
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self) -> None:
        client, self._client = self._client, None
        self._up = False
        self._done.clear()
        if client is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._run(client.shutdown(), 5.0)
