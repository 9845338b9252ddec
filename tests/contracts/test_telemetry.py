from __future__ import annotations

import pytest

from contracts import MAX_MESSAGE_BYTES, ContractError, ModelLineage, ScoredReading, TelemetryMessage
from contracts.topics import parse_telemetry_topic, telemetry_topic

LINEAGE = ModelLineage(name="pump", version=3, sha256="a" * 64, feature_hash="b" * 64, threshold=0.6)


def message(n: int = 3, **kw: object) -> TelemetryMessage:
    readings = [ScoredReading(seq=10 + i, ts=1767225600000, values=[1.0, 2.0], score=0.5,
                              anomaly=i == 1) for i in range(n)]
    args: dict[str, object] = {"device_id": "dev-0001", "boot_id": "boot-1", "model": LINEAGE,
                               "channels": ["a", "b"], "readings": readings}
    args.update(kw)
    return TelemetryMessage(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("compress", [False, True])
def test_a_message_round_trips_plain_and_gzipped(compress: bool) -> None:
    msg = message()
    payload = msg.encode(compress=compress)
    back = TelemetryMessage.decode(payload)
    assert back == msg
    assert (back.seq_first, back.seq_last, back.anomalies) == (10, 12, 1)
    assert payload[:2] == (b"\x1f\x8b" if compress else b'{"')


def test_the_dedup_key_fields_and_lineage_are_on_the_wire() -> None:
    obj = message().to_dict()
    assert {"device_id", "boot_id", "seq_first", "seq_last", "model"} <= set(obj)
    assert obj["model"]["version"] == 3 and obj["model"]["sha256"] == "a" * 64


def test_seq_must_increase_within_a_message() -> None:
    rs = [ScoredReading(seq=5, ts=0, values=[1.0, 2.0], score=0.1, anomaly=False)] * 2
    with pytest.raises(ContractError, match="increase"):
        message(readings=rs)


def test_a_message_over_256_kb_is_refused() -> None:
    with pytest.raises(ContractError, match="limit"):
        message(n=5000).encode()
    assert len(message(n=100).encode()) < MAX_MESSAGE_BYTES


def test_garbage_payloads_are_rejected_with_a_contract_error() -> None:
    with pytest.raises(ContractError):
        TelemetryMessage.decode(b"not json")
    with pytest.raises(ContractError):
        TelemetryMessage.decode(b'{"v": 1, "device_id": "d"}')


def test_telemetry_topics_follow_the_iot_hub_layout_with_a_property_bag() -> None:
    topic = telemetry_topic("dev-0001", {"anomaly": "true", "$.ce": "gzip", "model": "pump v3"})
    assert topic.startswith("devices/dev-0001/messages/events/")
    device, props = parse_telemetry_topic(topic)
    assert device == "dev-0001"
    assert props == {"anomaly": "true", "$.ce": "gzip", "model": "pump v3"}
    assert parse_telemetry_topic("devices/d/messages/events/") == ("d", {})
    with pytest.raises(ContractError):
        parse_telemetry_topic("devices/d/twin")
