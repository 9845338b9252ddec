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
