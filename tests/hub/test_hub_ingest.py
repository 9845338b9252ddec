"""Hub ingest into bronze against a real Mosquitto, and the local hub's certificates."""

from __future__ import annotations

import base64
import gzip
import json
import time
from pathlib import Path

import pytest
from cryptography import x509

from contracts.mqtt import MqttSettings, make_client
from contracts.telemetry import MAX_MESSAGE_BYTES
from contracts.topics import telemetry_topic
from hub.bronze import read_bronze
from hub.certs import make_ca, make_device, make_server
from hub.hub import Hub, HubConfig
from tests.edge_agent.helpers import wait_for


def test_certs_chain_to_the_ca_and_name_the_hosts_and_devices(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server = make_server(ca, tmp_path, ["127.0.0.5", "hub.local"])
    dev = make_device(ca, tmp_path, "dev-0001")
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    srv = x509.load_pem_x509_certificate(server.cert.read_bytes())
    sans = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(i) for i in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.5"}
    assert sans.get_values_for_type(x509.DNSName) == ["hub.local"]
    srv.verify_directly_issued_by(ca_cert)
    d = x509.load_pem_x509_certificate(dev.cert.read_bytes())
    d.verify_directly_issued_by(ca_cert)
    assert d.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "dev-0001"
    assert oct(dev.key.stat().st_mode & 0o777) == "0o600"
    assert make_ca(tmp_path).cert.read_bytes() == ca.cert.read_bytes(), "an existing CA is kept"


@pytest.mark.broker
def test_telemetry_lands_in_bronze_partitioned_and_survives_a_hub_restart(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    bronze = tmp_path / "bronze"

    def start_hub() -> Hub:
        hub = Hub(HubConfig(state=tmp_path / "hub", bronze=bronze, broker_port=broker.port, frontend=None,
                            twins=False)).start()
        time.sleep(0.2)
        return hub

    hub = start_hub()
    pub = make_client(MqttSettings(port=broker.port, client_id="dev"))
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()

    def send(seqs: range) -> None:
        for s in seqs:
            body = {"v": 1, "device_id": "dev-0001", "boot_id": "b", "readings": [{"seq": s}]}
            topic = telemetry_topic("dev-0001", {"$.ct": "application/json", "anomaly": str(s % 2 == 0).lower()})
            pub.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)

    send(range(0, 50))
    hub.stop()
    send(range(50, 100))  # the hub is down: the broker keeps these for its persistent session
    pub.publish("devices/dev-0001/messages/events/", b"\x00not json", qos=1).wait_for_publish(5)
    hub = start_hub()
    deadline = time.monotonic() + 10
    while len(read_bronze(bronze)) < 101 and time.monotonic() < deadline:
        time.sleep(0.05)
    hub.stop()
    pub.loop_stop()
    records = read_bronze(bronze)
    good = [r for r in records if "body" in r]
    assert sorted({r["body"]["readings"][0]["seq"] for r in good}) == list(range(100))
    assert all(r["properties"]["anomaly"] == str(r["body"]["readings"][0]["seq"] % 2 == 0).lower() for r in good)
    bad = [r for r in records if "body_base64" in r]
    assert len(bad) == 1 and base64.b64decode(bad[0]["body_base64"]) == b"\x00not json"
    parts = list(bronze.rglob("*.jsonl"))
    assert all(p.parent.name.startswith("hour=") and p.parent.parent.name.startswith("date=") for p in parts)
    assert len({p.name for p in parts}) == 2, "each hub process writes its own part files"


HOSTILE = {
    "deep_array": b"[" * 1000 + b"]" * 1000,
    "deep_object": b'{"a":' * 1000 + b"1" + b"}" * 1000,
    "truncated_gzip": gzip.compress(b'{"v": 1}' * 100)[:-9],
    "corrupt_deflate": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 40,
    "gzip_bomb": gzip.compress(b"\x00" * (200 * 1024 * 1024), compresslevel=9),  # ~200 KB on the wire
    "infinity": b'{"v": 1, "x": 1e400}',
    "not_utf8": b"\xff\xfe\xfd",
}


@pytest.mark.broker
def test_no_message_stops_the_ingest_and_oversized_telemetry_is_refused_and_counted(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    """Regression: deep nesting, truncated gzip and corrupt deflate used to kill the ingest thread."""
    bronze = tmp_path / "bronze"
    hub = Hub(HubConfig(state=tmp_path / "hub", bronze=bronze, broker_port=broker.port, frontend=None,
                        twins=False)).start()
    pub = make_client(MqttSettings(port=broker.port, client_id="hostile"))
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        assert len(HOSTILE["gzip_bomb"]) < MAX_MESSAGE_BYTES
        for payload in HOSTILE.values():
            pub.publish("devices/dev-0001/messages/events/", payload, qos=1).wait_for_publish(5)
        pub.publish("devices/dev-0002/messages/events/", b"{" * (MAX_MESSAGE_BYTES + 1), qos=1).wait_for_publish(5)
        good = {"v": 1, "device_id": "dev-0001", "boot_id": "b", "readings": [{"seq": 1}]}
        pub.publish("devices/dev-0001/messages/events/", json.dumps(good), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while len(read_bronze(bronze)) < len(HOSTILE) + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub.alive
        assert hub.ingest is not None and hub.ingest.refused == 1 and hub.ingest.refused_by_device == {"dev-0002": 1}
    finally:
        hub.stop()
        pub.loop_stop()
    lines = [line for f in bronze.rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert all(len(line) < 2 * MAX_MESSAGE_BYTES for line in lines), "a bomb is never inflated into bronze"
    records = [json.loads(line) for line in lines]
    assert [r["body"] for r in records if "body" in r] == [good]
    bad = [r for r in records if "body_base64" in r]
    assert sorted(base64.b64decode(r["body_base64"]) for r in bad) == sorted(HOSTILE.values())
    assert all(r["error"] for r in bad)


@pytest.mark.broker
def test_retained_telemetry_lands_once_not_at_every_hub_restart(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    bronze = tmp_path / "bronze"

    def run_hub() -> Hub:
        return Hub(HubConfig(state=tmp_path / "hub", bronze=bronze, broker_port=broker.port, frontend=None,
                             twins=False)).start()

    hub = run_hub()
    pub = make_client(MqttSettings(port=broker.port, client_id="retainer"))
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    body = {"v": 1, "device_id": "dev-0001", "boot_id": "b", "readings": [{"seq": 1}]}
    pub.publish("devices/dev-0001/messages/events/", json.dumps(body), qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: hub.ingest is not None and hub.ingest.landed >= 1, 10, "the retained message landed")
    hub.stop()
    for _ in range(2):  # two restarts: the broker replays the retained message to each new subscription
        hub = run_hub()
        wait_for(lambda h=hub: h.ingest is not None and h.ingest.retained_replays >= 1, 10, "the replay")
        time.sleep(0.3)  # a second copy, if any, would come now
        replays = hub.ingest.retained_replays if hub.ingest else 0
        hub.stop()
    pub.publish("devices/dev-0001/messages/events/", b"", qos=1, retain=True).wait_for_publish(5)  # clear it
    pub.loop_stop()
    assert replays == 1
    assert len([r for r in read_bronze(bronze) if r.get("body") == body]) == 1
