"""Per-device isolation through the hub's front end: real SDK, real TLS, real Mosquitto with ACLs."""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from hub import mqttwire as w
from hub.certs import make_ca, make_device, make_server
from hub.frontend import BACKEND_ACL, DeviceRegistry, FrontEnd, Limits, check_sas, sas_token
from hub.mosquitto import Broker, free_loopback_address

pytestmark = pytest.mark.broker
HUB = "edgeflag-hub.local"


class Hub:
    def __init__(self, tmp: Path, limits: Limits | None = None) -> None:
        self.host = free_loopback_address(8883)
        self.ca = make_ca(tmp / "pki")
        server = make_server(self.ca, tmp / "pki", [self.host, HUB])
        self.tmp = tmp
        acl = tmp / "acl"
        acl.write_text(BACKEND_ACL)
        self.backend = Broker(tmp, extra_conf=f"acl_file {acl}\n")
        self.backend.start()
        self.registry = DeviceRegistry(tmp / "devices.json")
        self.keys = {d: self.registry.add(d) for d in ("dev-a", "dev-b")}
        self.front = FrontEnd(self.host, 8883, backend=("127.0.0.1", self.backend.port), cert=server.cert,
                              key=server.key, ca=self.ca.cert, registry=self.registry, limits=limits)
        self.front.start()

    def close(self) -> None:
        self.front.stop()
        self.backend.stop()

    def service(self) -> tuple[mqtt.Client, list[tuple[str, bytes]]]:
        """The hub's own backend connection (sees every device's scoped topics)."""
        got: list[tuple[str, bytes]] = []
        ready = threading.Event()
        c = mqtt.Client(client_id="hub-service")
        c.username_pw_set("edgeflag-hub")
        c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload))
        c.on_subscribe = lambda *a: ready.set()
        c.on_connect = lambda cl, u, f, rc: cl.subscribe([("devices/#", 1), ("edgeflag/iothub/#", 1)])
        c.connect("127.0.0.1", self.backend.port)
        c.loop_start()
        assert ready.wait(5)
        return c, got

    def raw(self, handshake: bool = True) -> socket.socket:
        """A bare connection to the front end (TLS done, nothing sent), for what paho will not do."""
        sock = socket.create_connection((self.host, 8883), timeout=10)
        if not handshake:
            return sock
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        return ctx.wrap_socket(sock, server_hostname=HUB)

    def device(self, device_id: str, password: str | None = None,
               cert: Any = None, keepalive: int = 60) -> tuple[mqtt.Client, dict[str, Any]]:
        state: dict[str, Any] = {"rc": None, "msgs": [], "disconnected": threading.Event()}
        connected = threading.Event()
        c = mqtt.Client(client_id=device_id)
        c.username_pw_set(f"{HUB}/{device_id}/?api-version=2021-04-12", password)
        c.tls_set(ca_certs=str(self.ca.cert), certfile=str(cert.cert) if cert else None,
                  keyfile=str(cert.key) if cert else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)

        def on_connect(_c: Any, _u: Any, _f: Any, rc: int) -> None:
            state["rc"] = rc
            connected.set()

        c.on_connect = on_connect
        c.on_message = lambda _c, _u, m: state["msgs"].append((m.topic, m.payload))
        c.on_disconnect = lambda *a: state["disconnected"].set()
        c.connect(self.host, 8883, keepalive=keepalive)
        c.loop_start()
        connected.wait(5)
        return c, state


@pytest.fixture
def hub(tmp_path: Path):  # type: ignore[no-untyped-def]
    h = Hub(tmp_path)
    yield h
    h.close()


FAST = Limits(handshake_timeout_s=0.5, connect_timeout_s=0.5, max_connections=3, max_keepalive_s=1,
              slow_consumer_s=0.5, sweep_s=0.1)


@pytest.fixture
def tight_hub(tmp_path: Path):  # type: ignore[no-untyped-def]
    h = Hub(tmp_path, FAST)
    yield h
    h.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the peer closes `sock` within `seconds` (reads until EOF or a reset)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        pass
    return True


def test_sas_tokens_match_the_sdk_and_expire() -> None:
    from azure.iot.device.common.auth.sastoken import RenewableSasToken
    from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism

    key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    sdk = str(RenewableSasToken(f"{HUB}/devices/dev-a", SymmetricKeySigningMechanism(key), ttl=60))
    assert check_sas(sdk, "dev-a", key) is None
    assert check_sas(sas_token(HUB, "dev-a", key), "dev-a", key) is None
    assert check_sas(sas_token(HUB, "dev-a", key, ttl_s=-1), "dev-a", key) == "SAS token expired"
    assert check_sas(sdk, "dev-b", key) == "SAS token is for another device"
    assert "does not match" in (check_sas(sdk, "dev-a", "b3RoZXJrZXk=") or "")


def test_the_real_sdk_connects_through_the_front_end_and_its_telemetry_arrives(hub: Hub) -> None:
    from azure.iot.device import IoTHubDeviceClient

    service, got = hub.service()
    cs = f"HostName={HUB};DeviceId=dev-a;SharedAccessKey={hub.keys['dev-a']};GatewayHostName={hub.host}"
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=hub.ca.cert.read_text(),
                                                              connection_retry=False)
    client.connect()
    client.send_message('{"hello": 1}')
    client.shutdown()
    time.sleep(0.3)
    service.loop_stop()
    assert [t for t, _ in got if t.startswith("devices/dev-a/messages/events/")], got
    assert hub.front.stats.accepted >= 1


def test_a_wrong_key_or_an_expired_token_is_refused(hub: Hub) -> None:
    from azure.iot.device import IoTHubDeviceClient

    cs = f"HostName={HUB};DeviceId=dev-a;SharedAccessKey={hub.keys['dev-b']};GatewayHostName={hub.host}"
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=hub.ca.cert.read_text(),
                                                              connection_retry=False)
    with pytest.raises(Exception):  # noqa: B017 - the SDK's own exception tree
        client.connect()
    client.shutdown()
    _, state = hub.device("dev-a", sas_token(HUB, "dev-a", hub.keys["dev-a"], ttl_s=-5))
    assert state["rc"] == 5
    _, state = hub.device("dev-zz", sas_token(HUB, "dev-zz", hub.keys["dev-a"]))
    assert state["rc"] == 5
    assert set(hub.front.stats.refused) == {"SAS signature does not match the device key", "SAS token expired",
                                             "unknown device"}


def test_a_device_cannot_publish_as_another_device(hub: Hub) -> None:
    service, got = hub.service()
    a, state = hub.device("dev-a", sas_token(HUB, "dev-a", hub.keys["dev-a"]))
    assert state["rc"] == 0
    a.publish("devices/dev-b/messages/events/", b"forged", qos=1)
    assert state["disconnected"].wait(5), "a forged publish must cost the connection"
    time.sleep(0.3)
    service.loop_stop()
    assert not any(p == b"forged" for _, p in got)
    assert hub.front.stats.dropped == 1


def test_twin_and_method_traffic_is_scoped_to_each_device(hub: Hub) -> None:
    service, _ = hub.service()
    a, sa = hub.device("dev-a", sas_token(HUB, "dev-a", hub.keys["dev-a"]))
    b, sb = hub.device("dev-b", sas_token(HUB, "dev-b", hub.keys["dev-b"]))
    for c in (a, b):
        c.subscribe([("$iothub/twin/res/#", 1), ("$iothub/methods/POST/#", 1)])
    time.sleep(0.3)
    service.publish("edgeflag/iothub/dev-b/twin/res/200/?$rid=7", b'{"desired": {"secret": 1}}', qos=1)
    service.publish("edgeflag/iothub/dev-b/methods/POST/flush/?$rid=9", b"{}", qos=1)
    time.sleep(0.5)
    assert sb["msgs"] == [("$iothub/twin/res/200/?$rid=7", b'{"desired": {"secret": 1}}'),
                          ("$iothub/methods/POST/flush/?$rid=9", b"{}")]
    assert sa["msgs"] == [], "device A must not see B's twin or method calls"
    # and A's own twin request reaches the hub under A's scope
    got: list[str] = []
    service.on_message = lambda _c, _u, m: got.append(m.topic)
    a.publish("$iothub/twin/GET/?$rid=1", b"", qos=1)
    time.sleep(0.3)
    assert "edgeflag/iothub/dev-a/twin/GET/?$rid=1" in got
    # reaching into B's scope directly, or with a wildcard, costs A its connection
    a.subscribe("edgeflag/iothub/dev-b/#", 1)
    assert sa["disconnected"].wait(5)
    a2, sa2 = hub.device("dev-a", sas_token(HUB, "dev-a", hub.keys["dev-a"]))
    a2.subscribe("#", 1)
    assert sa2["disconnected"].wait(5)
    for c in (a, a2, b, service):
        c.loop_stop()


def test_x509_devices_are_authenticated_by_certificate_cn(hub: Hub) -> None:
    cert = make_device(hub.ca, hub.tmp / "pki", "dev-a")
    _, ok = hub.device("dev-a", None, cert=cert)
    assert ok["rc"] == 0
    _, bad = hub.device("dev-b", None, cert=cert)
    assert bad["rc"] == 5
    assert hub.front.stats.refused == {"certificate CN is not the client id": 1}
    # regression: a certificate the CA signed for a device that is not (or no longer) registered connected
    ghost = make_device(hub.ca, hub.tmp / "pki", "dev-ghost")
    _, refused = hub.device("dev-ghost", None, cert=ghost)
    assert refused["rc"] == 5
    assert hub.front.stats.refused.get("unknown device") == 1


def test_device_ids_that_would_name_other_topics_are_refused_and_keys_are_private_from_birth(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stat

    from contracts.errors import ContractError

    registry = DeviceRegistry(tmp_path / "devices.json")
    for bad in ("a/b", "dev-1/twin", "+", "#", ""):
        with pytest.raises(ContractError):
            registry.add(bad)
    assert registry.ids() == []
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:  # the mode of each file as it is renamed into place
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    ca = make_ca(tmp_path / "pki")
    monkeypatch.undo()
    assert seen and all(m == 0o600 for m in seen), "a key file was never readable by others"
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600


def test_removing_a_device_or_changing_its_key_closes_its_open_connections(tight_hub: Hub) -> None:
    """Regression: a removed device kept its open connection (and kept publishing) until it chose to leave."""
    h = tight_hub
    a, sa = h.device("dev-a", sas_token(HUB, "dev-a", h.keys["dev-a"]), keepalive=60)
    b, sb = h.device("dev-b", sas_token(HUB, "dev-b", h.keys["dev-b"]), keepalive=60)
    assert sa["rc"] == 0 and sb["rc"] == 0
    assert h.registry.remove("dev-a") and not h.registry.remove("dev-a")
    assert sa["disconnected"].wait(3), "a removed device must be disconnected"
    h.registry.add("dev-b", key="bmV3LWtleS1mb3ItZGV2LWI=")
    assert sb["disconnected"].wait(3), "a re-keyed device must be disconnected"
    assert h.front.stats.closed == {"device removed": 1, "device key changed": 1}
    for c in (a, b):
        c.loop_stop()


def test_a_connection_is_closed_when_its_sas_token_expires(tight_hub: Hub) -> None:
    """Regression: a token's expiry was checked only at CONNECT; the connection outlived it for good."""
    # keep-alive 1 s: the client pings, so only the token's expiry can end it (with 60 s, the tight hub's 1 s
    # keep-alive cap cut the silent connection at 1.5 s, racing the token's expiry)
    c, state = tight_hub.device("dev-a", sas_token(HUB, "dev-a", tight_hub.keys["dev-a"], ttl_s=1.5), keepalive=1)
    assert state["rc"] == 0
    assert not state["disconnected"].wait(0.3)
    assert state["disconnected"].wait(4), "the connection must end at the token's expiry"
    assert tight_hub.front.stats.closed == {"credential expired": 1}
    c.loop_stop()


def test_silent_and_surplus_connections_cannot_pile_up(tight_hub: Hub) -> None:
    """Regression: 10,000 idle TLS connections were each held 60 s (3 GB), with no cap."""
    h = tight_hub
    assert _closed_within(h.raw(handshake=False), 3), "a connection that never starts TLS must be cut"
    assert _closed_within(h.raw(), 3), "a TLS connection that never sends CONNECT must be cut"
    assert h.front.stats.closed.get("no CONNECT in time") == 1
    held = [h.raw() for _ in range(3)]  # the cap is 3 (FAST); each waits for its CONNECT
    time.sleep(0.1)
    assert _closed_within(h.raw(), 1), "a connection over the cap must be closed at once"
    assert h.front.stats.refused.get("too many connections") == 1
    for s in held:
        s.close()
    deadline = time.monotonic() + 3
    while h.front.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    # keep-alive 0 (never ping) is held to the cap (1 s in FAST): silent for 1.5 s, cut
    silent = h.raw()
    token = sas_token(HUB, "dev-a", h.keys["dev-a"]).encode()
    silent.sendall(w.Connect(client_id="dev-a", username=f"{HUB}/dev-a", password=token, keepalive=0,
                             clean_session=True, will=None).encode())
    t0 = time.monotonic()
    assert _closed_within(silent, 4)
    assert 1.2 < time.monotonic() - t0 < 4
    assert h.front.stats.accepted == 1 and h.front.stats.closed.get("keep-alive expired") == 1


def test_a_device_that_stops_reading_is_disconnected_not_buffered_for(tight_hub: Hub) -> None:
    """Regression: a subscriber that never read made the backend broker buffer for it without bound."""
    h = tight_hub
    sock = h.raw()
    token = sas_token(HUB, "dev-a", h.keys["dev-a"]).encode()
    sock.sendall(w.Connect(client_id="dev-a", username=f"{HUB}/dev-a", password=token, keepalive=60,
                           clean_session=True, will=None).encode())
    topic = b"$iothub/loop/x"
    sock.sendall(w.frame(0x82, b"\x00\x01" + len(b"$iothub/loop/#").to_bytes(2, "big") + b"$iothub/loop/#" + b"\x00"))
    time.sleep(0.3)
    payload = os.urandom(64 * 1024)
    publish = w.frame(0x30, len(topic).to_bytes(2, "big") + topic + payload)
    sock.settimeout(5)
    deadline = time.monotonic() + 10
    try:  # echo 64 KB messages back to ourselves and never read one
        while "slow consumer" not in h.front.stats.closed and time.monotonic() < deadline:
            sock.sendall(publish)
    except (OSError, ssl.SSLError):
        pass
    assert h.front.stats.closed.get("slow consumer") == 1, h.front.stats
    sock.close()


def test_stopping_the_front_end_with_devices_connected_is_quick_and_quiet(tmp_path: Path, capfd) -> None:  # type: ignore[no-untyped-def]
    """stop() cancels every connection, waits briefly for their cleanup and returns; a cancelled
    connection is not reported as an asyncio error. (The demo's outage printed "Exception in callback
    ... CancelledError" per connection before the fix; this load does not reproduce that reliably, so it
    guards the bounded wait and the quiet handler, not the original race.)"""
    import gc

    h = Hub(tmp_path)
    try:
        clients = [h.device(d, sas_token(HUB, d, h.keys[d]))[0] for d in ("dev-a", "dev-b")]
        stop = threading.Event()

        def send(c: mqtt.Client, device: str) -> None:  # traffic both ways while the front end goes
            while not stop.is_set():
                c.publish(f"devices/{device}/messages/events/", b"{}", qos=1)
                time.sleep(0.002)

        senders = [threading.Thread(target=send, args=(c, d)) for c, d in zip(clients, ("dev-a", "dev-b"), strict=True)]
        for s in senders:
            s.start()
        time.sleep(0.5)
        t = time.monotonic()
        h.front.stop()
        assert time.monotonic() - t < 5
        stop.set()
        for s in senders:
            s.join()
        for c in clients:
            c.loop_stop()
        gc.collect()
        err = capfd.readouterr().err
        assert "Exception in callback" not in err and "Task was destroyed" not in err, err[-2000:]
    finally:
        h.backend.stop()
