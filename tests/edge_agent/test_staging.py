"""The sender's staging area (edge_agent/staging.py): gateway-friendly grouping of outbox rows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.outbox import Segment, StoredSegment
from edge_agent.staging import SendQueue


def interleaved(devices: int, batches: int, per_row: int = 2, body: int = 300) -> list[StoredSegment]:
    """Rows as a gateway's outbox holds them: each micro-batch has one small row per device."""
    rows, rid = [], 0
    for b in range(batches):
        for d in range(devices):
            rid += 1
            seq = b * per_row
            rows.append(StoredSegment(rid, Segment(f"dev-{d}", "boot", 1, seq, seq + per_row - 1, per_row, 0, 0.0,
                                                   b"x" * body)))
    return rows


def drain(q: SendQueue, evicted_upto: int = 0) -> list[list[StoredSegment]]:
    out = []
    while (g := q.pop(evicted_upto)) is not None:
        out.append(g)
    return out


def test_rows_of_one_device_share_a_message_across_other_devices_rows() -> None:
    q = SendQueue(budget=3584)
    q.add(interleaved(devices=50, batches=10))
    groups = drain(q)
    assert len(groups) == 50, "each device's ten 300-byte rows fit one message"
    assert all(len({r.segment.device_id for r in g}) == 1 for g in groups)
    assert [g[0].id for g in groups] == sorted(g[0].id for g in groups), "oldest first"
    assert q.rows == 0 and q.bytes == 0 and len(q) == 0


def test_the_budget_splits_a_stream_and_keeps_its_order() -> None:
    q = SendQueue(budget=1000)
    q.add(interleaved(devices=3, batches=10))
    groups = drain(q)
    for g in groups:
        assert sum(len(r.segment.body) + 1 for r in g) <= 1000
    per_device: dict[str, list[int]] = {}
    for g in groups:
        per_device.setdefault(g[0].segment.device_id, []).extend(r.segment.seq_first for r in g)
    assert all(seqs == sorted(seqs) and len(seqs) == 10 for seqs in per_device.values())


def test_evicted_rows_are_never_handed_out() -> None:
    q = SendQueue(budget=3584)
    rows = interleaved(devices=4, batches=5)
    q.add(rows)
    got = [r.id for g in drain(q, evicted_upto=9) for r in g]
    assert sorted(got) == [r.id for r in rows if r.id > 9]


def test_a_group_that_could_not_be_sent_goes_out_first_and_reset_forgets_everything() -> None:
    q = SendQueue(budget=3584)
    q.add(interleaved(devices=2, batches=3))
    first = q.pop(0)
    assert first is not None
    q.push_front(first)
    assert q.pop(0) == first
    q.reset()
    assert q.pop(0) is None and q.fetched_upto == 0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 900)), min_size=1, max_size=120),
       st.integers(400, 4000), st.integers(0, 40))
def test_every_row_once_one_stream_per_message_in_seq_order(spec: list[tuple[int, int]], budget: int,
                                                            evicted: int) -> None:
    seq = [0] * 6
    rows = []
    for i, (dev, size) in enumerate(spec, start=1):
        rows.append(StoredSegment(i, Segment(f"d{dev}", "b", 1, seq[dev], seq[dev], 1, 0, 0.0, b"y" * size)))
        seq[dev] += 1
    q = SendQueue(budget)
    q.add(rows[: len(rows) // 2])
    q.add(rows[len(rows) // 2 :])
    groups = drain(q, evicted)
    ids = [r.id for g in groups for r in g]
    assert sorted(ids) == [r.id for r in rows if r.id > evicted] and len(ids) == len(set(ids))
    last_seq: dict[str, int] = {}
    for g in groups:
        assert len({r.segment.device_id for r in g}) == 1
        assert len(g) == 1 or sum(len(r.segment.body) + 1 for r in g) <= budget
        dev = g[0].segment.device_id
        for r in g:
            assert r.segment.seq_first > last_seq.get(dev, -1)
            last_seq[dev] = r.segment.seq_last
