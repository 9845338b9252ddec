from __future__ import annotations

import numpy as np
import pytest

from contracts.telemetry import ModelLineage, TelemetryMessage
from contracts.topics import parse_telemetry_topic
from edge_agent.outbox import StoredSegment
from edge_agent.packing import HEADER_ALLOWANCE, build_message, context_header, segments_for
from edge_agent.staging import SendQueue
from simulators import Fleet, FleetConfig

LINEAGE = ModelLineage("pump", 3, "a" * 64, "b" * 64, 0.6)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("max_bytes", [1024, 4096, 65536])
def test_messages_follow_the_contract_fit_the_size_and_carry_every_reading_once(compress: bool,
                                                                                max_bytes: int) -> None:
    block = Fleet(FleetConfig(devices=1, seed=1)).generate(700)["dev-0001"]
    scores = np.random.default_rng(0).random(700)
    flags = scores > 0.9
    segs = segments_for(block, scores, flags, boot_id="boot", context_id=1, max_message_bytes=max_bytes)
    assert segs[0].kind == 1, "flagged segments come first"
    rows = [StoredSegment(i + 1, s) for i, s in enumerate(segs)]
    header = context_header(LINEAGE, block.channels)
    seen: list[int] = []
    groups = []
    for kind in (1, 0):
        q = SendQueue(max_bytes - HEADER_ALLOWANCE)
        q.add([r for r in rows if r.segment.kind == kind])
        while (group := q.pop(0)) is not None:
            groups.append(group)
    for group in groups:
        msg = build_message(group, header, compress=compress)
        decoded = TelemetryMessage.decode(msg.payload)
        assert decoded.model == LINEAGE and decoded.boot_id == "boot"
        assert not compress or len(msg.payload) < max_bytes
        if not compress:
            assert len(msg.payload) <= max_bytes
        device, props = parse_telemetry_topic(msg.topic)
        assert device == "dev-0001"
        assert props["anomaly"] == ("true" if decoded.anomalies else "false")
        assert props["$.ce"] == ("gzip" if compress else "utf-8") and props["$.ct"] == "application/json"
        assert props["model"] == "pump:3"
        assert all(r.anomaly == bool(decoded.anomalies) for r in decoded.readings)
        seen += [r.seq for r in decoded.readings]
        assert decoded.readings[0].ts == round(float(block.ts[decoded.readings[0].seq]) * 1000)
    assert sorted(seen) == list(range(700))


@pytest.mark.parametrize("compress", [False, True])
def test_anomaly_events_travel_as_their_own_message_with_a_routing_property(compress: bool) -> None:
    from contracts.events import event_message
    from contracts.telemetry import decode_payload
    from edge_agent.packing import event_header, event_segment
    from models.events import EventConfig, EventTracker

    block = Fleet(FleetConfig(devices=1, seed=1)).generate(400)["dev-0001"]
    scores = np.full(400, 0.1)
    scores[100:130] = 0.9  # one event: opens at 100, closes 30 quiet readings after 129
    scores[300] = 0.95     # a second, one reading long
    events = EventTracker(EventConfig()).update("dev-0001", "boot", block.seq, block.ts, scores, 0.6)
    segs = [event_segment(ev, 7, 0.0) for ev in events]
    assert all(s.kind == 1 and s.n == 0 and s.anomalies == 0 for s in segs), "sent first, evicted last, 0 readings"
    q = SendQueue(4096 - HEADER_ALLOWANCE)
    q.add([StoredSegment(i + 1, s) for i, s in enumerate(segs)])
    group = q.pop(0)
    assert group is not None and q.pop(0) is None, "one device's events share a message"
    msg = build_message(group, event_header(LINEAGE), compress=compress)
    assert msg.readings == 0 and msg.anomalies == 0 and msg.ids == tuple(range(1, len(segs) + 1))
    device, props = parse_telemetry_topic(msg.topic)
    assert device == "dev-0001" and props["message"] == "anomaly_event" and props["model"] == "pump:3"
    body = decode_payload(msg.payload)
    assert body["readings"] == [], "a consumer that only reads readings skips it"
    m = event_message(body)
    assert (m.device_id, m.boot_id, m.model) == ("dev-0001", "boot", LINEAGE)
    assert [(e.kind, e.opened_seq) for e in m.events] == [(ev.kind, ev.opened_seq) for ev in events]
    assert [e.kind for e in m.events].count("open") == 2 and [e.kind for e in m.events].count("close") == 2
    first = m.events[0]
    assert first.opened_seq == 100 and first.opened_ts == round(float(block.ts[100]) * 1000)
