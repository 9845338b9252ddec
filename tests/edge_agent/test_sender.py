"""The sender alone: `Sender.step()` on the in-memory outbox, a list sink and a fake clock (no threads, no sleeps)."""

from __future__ import annotations

import json
import logging
from collections import Counter

import numpy as np
import pytest

from contracts.telemetry import ModelLineage
from edge_agent.flow import Backoff, TokenBucket
from edge_agent.metrics import AgentMetrics
from edge_agent.outbox import MemoryOutbox
from edge_agent.packing import context_header, segments_for
from edge_agent.sender import ACK_BATCH_S, Sender
from edge_agent.sinks.memory import ListSink
from edge_agent.sinks.mqtt import MqttUplinkConfig
from simulators import Fleet, FleetConfig

LINEAGE = ModelLineage("pump", 1, "a" * 64, "b" * 64, 0.5)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(readings: int = 600, *, rate: float = 0.0, max_inflight: int = 8,
         confirm: bool = True) -> tuple[Sender, MemoryOutbox, ListSink, Clock]:
    clock = Clock()
    ob = MemoryOutbox(1 << 24)
    blocks = Fleet(FleetConfig(devices=2, seed=3)).generate(readings // 2)
    for i, block in enumerate(blocks.values()):
        cid = ob.context_id(context_header(LINEAGE, block.channels))
        scores = np.random.default_rng(i).random(len(block))
        ob.append(segments_for(block, scores, scores > 0.95, boot_id="boot", context_id=cid,
                               max_message_bytes=1024))
    cfg = MqttUplinkConfig(max_message_bytes=1024, max_inflight=max_inflight,
                        rate_messages_per_s=rate)
    sink = ListSink(cfg, confirm=confirm)
    sender = Sender(ob, sink, cfg, bucket=TokenBucket(rate, clock=clock), metrics=AgentMetrics(),
                    log=logging.getLogger("test"), clock=clock, backoff=Backoff(0.5, 0.5))
    return sender, ob, sink, clock


def delivered(sink: ListSink) -> Counter[tuple[str, int]]:
    """Every reading the sink received, by its dedup key (device, seq)."""
    out: Counter[tuple[str, int]] = Counter()
    for m in sink.messages:
        body = json.loads(m.payload)
        out.update((body["device_id"], r["seq"]) for r in body["readings"])
    return out


def drain(sender: Sender, clock: Clock, rounds: int = 10_000) -> None:
    for _ in range(rounds):
        wait = sender.step()
        if sender.outbox.stats().segments == 0 and not sender.inflight:
            return
        clock.t += max(wait, 0.001)
    raise AssertionError("the sender did not drain the outbox")


def test_every_reading_is_sent_once_anomalies_first_and_leaves_the_outbox_only_when_confirmed() -> None:
    sender, ob, sink, clock = make()
    drain(sender, clock)
    got = delivered(sink)
    assert len(got) == 600 and set(got.values()) == {1}, "each reading exactly once"
    kinds = [m.anomalies > 0 for m in sink.messages]
    assert kinds == sorted(kinds, reverse=True), "every anomaly message before the normal backlog"
    assert sender.component.snapshot()["sent"] == 600 and ob.stats().readings == 0
    assert all(len(m.payload) <= 1024 for m in sink.messages)


def test_confirmed_rows_are_deleted_in_batches_at_most_ack_batch_s_old() -> None:
    sender, ob, sink, clock = make(max_inflight=4)
    assert sender.step() == 0.0 and len(sink.messages) == 4
    assert ob.stats().readings == 600, "confirmed a moment ago: not deleted yet (batched)"
    clock.t += ACK_BATCH_S * 1.5
    sender.step()
    assert ob.stats().readings == 600 - sum(m.readings for m in sink.messages[:4])


def test_unconfirmed_messages_are_sent_again_after_a_disconnect_and_nothing_is_lost() -> None:
    sender, ob, sink, clock = make(confirm=False, max_inflight=16)
    sender.step()
    first = list(sink.messages)
    assert len(first) == 16 and len(sender.inflight) == 16
    sink.up = False
    wait = sender.step()
    assert wait == 0.5 and not sender.inflight, "released; the connect failed and backs off"
    assert sender.component.snapshot()["errors"] == {"connect": 1} and ob.stats().readings == 600
    clock.t += 0.1
    assert sender.step() == pytest.approx(0.4), "still backing off: no connect attempt before the delay"
    assert sender.component.snapshot()["errors"] == {"connect": 1}
    sink.up, sink.confirm = True, True
    clock.t += 0.5
    drain(sender, clock)
    got = delivered(sink)
    assert len(got) == 600, "nothing lost"
    resent = {k for m in first for k in delivered_one(m.payload)}
    assert {k for k, n in got.items() if n == 2} == resent, "only the unconfirmed ones twice"


def delivered_one(payload: bytes) -> list[tuple[str, int]]:
    body = json.loads(payload)
    return [(body["device_id"], r["seq"]) for r in body["readings"]]


def test_the_token_bucket_paces_sends_without_blocking() -> None:
    sender, _ob, sink, clock = make(rate=10.0, max_inflight=64)
    wait = sender.step()
    assert len(sink.messages) == 10, "a burst of one second's worth"
    assert 0 < wait <= 0.1 + 1e-9, "the round says how long until the next token"
    assert sender.step() > 0 and len(sink.messages) == 10, "no token: nothing sent, no sleep"
    clock.t += 0.31  # three tokens
    sender.step()
    assert len(sink.messages) == 13
