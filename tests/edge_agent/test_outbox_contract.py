"""One contract suite over every outbox implementation, plus a stateful model test (hypothesis)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from edge_agent.outbox import ROW_OVERHEAD, MemoryOutbox, Outbox, Segment, SqliteOutbox, cost

Factory = Callable[[int], Outbox]


def seg(device: str = "d1", seq: int = 0, n: int = 1, anomalies: int = 0, size: int = 100) -> Segment:
    return Segment(device_id=device, boot_id="b", context_id=1, seq_first=seq, seq_last=seq + n - 1, n=n,
                   anomalies=anomalies, stored_at=float(seq), body=b"x" * size)


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    made: list[Outbox] = []

    def factory(max_bytes: int) -> Outbox:
        ob: Outbox = MemoryOutbox(max_bytes) if request.param == "memory" else SqliteOutbox(
            tmp_path / f"o{len(made)}.db", max_bytes)
        made.append(ob)
        return ob

    yield factory
    for ob in made:
        ob.close()


def test_segments_leave_only_when_acked(make: Factory) -> None:
    ob = make(1 << 20)
    ob.append([seg(seq=0, n=3), seg(seq=3, n=2), seg(seq=5, n=1, anomalies=1)])
    normal = ob.pending(0, 0, 10)
    assert [s.segment.seq_first for s in normal] == [0, 3]
    assert [s.segment.seq_first for s in ob.pending(1, 0, 10)] == [5]
    assert ob.pending(0, normal[0].id, 10)[0].id == normal[1].id
    assert ob.ack([normal[0].id]) == 3
    assert ob.stats().readings == 3
    assert ob.ack([normal[0].id]) == 0  # acking twice is harmless
    assert ob.stats().segments == 2


def test_the_bound_holds_and_normal_segments_are_evicted_first(make: Factory) -> None:
    one = cost(seg())
    ob = make(10 * one)
    ob.append([seg(seq=i, anomalies=int(i % 4 == 0)) for i in range(8)])  # anomalies at 0, 4
    evicted = ob.append([seg(seq=i) for i in range(8, 14)])  # 14 rows, room for 10
    assert evicted == {"outbox_full_normal": 4}
    assert ob.stats().bytes <= 10 * one
    kept = [s.segment.seq_first for s in ob.pending(0, 0, 100)]
    assert kept == [5, 6, 7, 8, 9, 10, 11, 12, 13][-8:]  # the oldest normal ones went
    assert [s.segment.seq_first for s in ob.pending(1, 0, 100)] == [0, 4]
    # ids 1-14 in append order; the normal ones evicted were ids 2, 3, 4 and 6 (seqs 1, 2, 3, 5)
    assert (ob.evicted_upto(0), ob.evicted_upto(1)) == (6, 0)
    evicted = ob.append([seg(seq=100 + i, anomalies=1) for i in range(10)])
    assert evicted == {"outbox_full_normal": 8, "outbox_full_anomaly": 2}
    assert [s.segment.seq_first for s in ob.pending(1, 0, 100)][:2] == [100, 101]
    assert ob.drops() == {"outbox_full_normal": 12, "outbox_full_anomaly": 2}


def test_segments_in_flight_are_never_evicted_and_a_release_evicts_what_was_passed_over(make: Factory) -> None:
    """Regression: with a slow link, readings evicted while in flight were then delivered too, and counted
    as both sent and dropped (sent + dropped exceeded readings in by 54 %)."""
    one = cost(seg())
    ob = make(4 * one)
    ob.append([seg(seq=i) for i in range(4)])  # ids 1-4
    ob.hold([1, 2])  # sent, awaiting the broker's PUBACK
    assert ob.append([seg(seq=i) for i in range(4, 6)]) == {"outbox_full_normal": 2}  # ids 3, 4 go instead
    assert [s.id for s in ob.pending(0, 0, 100)] == [1, 2, 5, 6]
    assert ob.stats().bytes == 4 * one and ob.evicted_upto(0) == 4
    assert ob.ack([1]) == 1  # confirmed: delivered, counted once, as sent
    assert ob.release([2]) == {"outbox_full_normal": 1}  # the link dropped: 2 is below the mark, evicted now
    assert [s.id for s in ob.pending(0, 0, 100)] == [5, 6]
    assert ob.drops() == {"outbox_full_normal": 3}
    ob.hold([5, 6])
    assert ob.append([seg(seq=i) for i in range(9, 12)]) == {"outbox_full_normal": 1}  # id 7, not 5 or 6
    assert [s.id for s in ob.pending(0, 0, 100)] == [5, 6, 8, 9]
    assert ob.release([5, 6]) == {"outbox_full_normal": 2}, "both were passed over (mark 7)"
    assert ob.release([8]) == {} and [s.id for s in ob.pending(0, 0, 100)] == [8, 9]


def test_stream_state_checkpoint_and_agent_state_commit_with_the_segments(make: Factory) -> None:
    ob = make(1 << 20)
    ob.append([seg()], streams={"d1": ("boot-1", 41)}, checkpoint={"jsonl.offset": "123"},
              state={"events/d1": "{open}", "events/d2": "{open2}"})
    assert ob.streams() == {"d1": ("boot-1", 41)}
    assert ob.checkpoint() == {"jsonl.offset": "123"}
    assert ob.state() == {"events/d1": "{open}", "events/d2": "{open2}"}
    ob.append([], streams={"d1": ("boot-1", 42)}, state={"events/d1": None, "events/d3": None})
    assert ob.streams()["d1"] == ("boot-1", 42)
    assert ob.state() == {"events/d2": "{open2}"}, "None deletes; deleting a missing key is no error"


def test_contexts_are_stable(make: Factory) -> None:
    ob = make(1 << 20)
    a, b = ob.context_id('{"m":1}'), ob.context_id('{"m":2}')
    assert a != b and ob.context_id('{"m":1}') == a and ob.context(b) == '{"m":2}'


def test_the_sqlite_outbox_survives_reopening_with_everything_in_place(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = SqliteOutbox(path, 10 * cost(seg()))
    cid = ob.context_id("h")
    ob.append([seg(seq=i) for i in range(12)], streams={"d1": ("b", 11)}, checkpoint={"k": "v"},
              state={"events/d1": "s"})
    before = (ob.stats(), [s.id for s in ob.pending(0, 0, 100)], ob.drops())
    ob.close()
    again = SqliteOutbox(path, 10 * cost(seg()))
    assert (again.stats(), [s.id for s in again.pending(0, 0, 100)], again.drops()) == before
    assert again.streams() == {"d1": ("b", 11)} and again.checkpoint() == {"k": "v"}
    assert again.state() == {"events/d1": "s"}
    assert again.context(cid) == "h" and again.context_id("h") == cid
    again.append([seg(seq=50)])
    assert max(s.id for s in again.pending(0, 0, 100)) > max(before[1]), "ids are never reused"
    again.close()


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_fresh_outbox_started(tmp_path: Path) -> None:
    """Regression: a corrupt outbox failed every start of the agent."""
    bad = tmp_path / "o.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    ob = SqliteOutbox(bad, 1 << 20)
    assert ob.salvaged == {"segments": 0, "readings": 0, "unreadable_or_bad_crc": 0}
    ob.append([seg()])
    assert ob.stats().readings == 1
    ob.close()
    (aside,) = tmp_path.glob("o.db.corrupt-*")
    assert aside.read_bytes() == b"this is not sqlite" * 100, "the damaged file is kept for inspection"


def marked(i: int) -> Segment:
    body = f"MARK{i:05d}".encode() + b"y" * 400
    return Segment(device_id="d1", boot_id="b", context_id=1, seq_first=i, seq_last=i, n=1, anomalies=0,
                   stored_at=float(i), body=body)


def test_a_bit_flipped_row_is_counted_and_skipped_never_sent(tmp_path: Path) -> None:
    """Regression: rows with flipped bits went out as invalid UTF-8 while integrity_check said ok."""
    path = tmp_path / "o.db"
    ob = SqliteOutbox(path, 1 << 20)
    ob.append([marked(i) for i in range(20)])
    ob.close()
    raw = bytearray(path.read_bytes())
    at = -1
    while (at := raw.find(b"MARK00007", at + 1)) >= 0:  # (every copy of the row in the file)
        raw[at + 20] ^= 0x10
    path.write_bytes(bytes(raw))
    ob = SqliteOutbox(path, 1 << 20)
    assert ob.salvaged is None, "SQLite cannot see a flip inside a BLOB: only the row's CRC can"
    got = ob.pending(0, 0, 100)
    assert [s.segment.seq_first for s in got] == [i for i in range(20) if i != 7]
    assert all(s.segment.body == marked(s.segment.seq_first).body for s in got)
    assert ob.take_drops() == {"corrupt_row": 1} and ob.take_drops() == {}
    assert ob.drops() == {"corrupt_row": 1} and ob.stats().readings == 19
    ob.close()


def test_a_damaged_page_is_survived_and_every_readable_row_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = SqliteOutbox(path, 1 << 22)
    ob.append([marked(i) for i in range(400)], streams={"d1": ("b", 399)}, checkpoint={"k": "v"},
              state={"events/d1": "s"})
    ob.close()
    raw = bytearray(path.read_bytes())
    page = raw.index(b"MARK00200") // 4096
    raw[page * 4096:(page + 1) * 4096] = b"\xff" * 4096  # a torn or overwritten page of the segments table
    path.write_bytes(bytes(raw))
    ob = SqliteOutbox(path, 1 << 22)
    assert ob.salvaged is not None and list(tmp_path.glob("o.db.corrupt-*"))
    kept = [s.segment.seq_first for s in ob.pending(0, 0, 1000)]
    assert 200 not in kept and 370 <= len(kept) < 400, len(kept)
    assert ob.salvaged["segments"] == len(kept) == ob.stats().readings
    assert ob.streams() == {"d1": ("b", 399)} and ob.checkpoint() == {"k": "v"} and ob.state() == {"events/d1": "s"}
    ob.append([marked(1000)])
    ob.close()


class OutboxModel(RuleBasedStateMachine):
    """The SQLite outbox must behave exactly like the in-memory reference under any operation sequence."""

    @initialize(cap=st.integers(min_value=3 * (100 + ROW_OVERHEAD), max_value=40 * (100 + ROW_OVERHEAD)))
    def setup(self, cap: int) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp()
        self.real = SqliteOutbox(Path(self.dir) / "o.db", cap, synchronous="normal")
        self.model = MemoryOutbox(cap)
        self.seq = 0
        self.held: set[int] = set()

    @rule(k=st.integers(1, 6), anomalous=st.lists(st.booleans(), min_size=6, max_size=6),
          sizes=st.lists(st.integers(1, 400), min_size=6, max_size=6))
    def append(self, k: int, anomalous: list[bool], sizes: list[int]) -> None:
        segs = []
        for i in range(k):
            segs.append(seg(device=f"d{i % 2}", seq=self.seq, n=1 + i, anomalies=(1 + i) * anomalous[i],
                            size=sizes[i]))
            self.seq += 1 + i
        assert self.real.append(segs) == self.model.append(segs)

    @precondition(lambda self: self.model.stats().segments > 0)
    @rule(kind=st.sampled_from([0, 1]), take=st.integers(1, 5))
    def ack_oldest(self, kind: int, take: int) -> None:
        ids = [s.id for s in self.model.pending(kind, 0, take)]
        assert [s.id for s in self.real.pending(kind, 0, take)] == ids
        assert self.real.ack(ids) == self.model.ack(ids)

    @precondition(lambda self: self.model.stats().segments > 0)
    @rule(kind=st.sampled_from([0, 1]), take=st.integers(1, 3))
    def hold_oldest(self, kind: int, take: int) -> None:
        ids = [s.id for s in self.model.pending(kind, 0, take)]
        self.real.hold(ids)
        self.model.hold(ids)
        self.held.update(ids)

    @rule()
    def release_held(self) -> None:
        ids = sorted(self.held)
        assert self.real.release(ids) == self.model.release(ids)
        self.held.clear()

    @rule()
    def reopen(self) -> None:
        self.release_held()  # (a restart forgets holds: what was in flight is sent again)
        cap = self.real.max_bytes
        self.real.close()
        self.real = SqliteOutbox(Path(self.dir) / "o.db", cap, synchronous="normal")

    @invariant()
    def same_state(self) -> None:
        if not hasattr(self, "real"):
            return
        assert self.real.stats() == self.model.stats()
        assert self.real.drops() == self.model.drops()
        rows = [s for kind in (0, 1) for s in self.real.pending(kind, 0, 1000)]
        assert sum(cost(s.segment) for s in rows if s.id not in self.held) <= self.real.max_bytes
        for kind in (0, 1):
            assert [(s.id, s.segment) for s in self.real.pending(kind, 0, 1000)] == \
                   [(s.id, s.segment) for s in self.model.pending(kind, 0, 1000)]
            for ob in (self.real, self.model):  # nothing but held rows at or below the eviction mark is left
                assert all(s.id > ob.evicted_upto(kind) or s.id in self.held for s in ob.pending(kind, 0, 1000))

    def teardown(self) -> None:
        if hasattr(self, "real"):
            self.real.close()


TestOutboxModel = OutboxModel.TestCase
TestOutboxModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


def test_an_anomaly_event_row_is_sent_with_the_anomalies_and_holds_no_reading(make: Factory) -> None:
    ob = make(1 << 20)
    event = Segment(device_id="d1", boot_id="b", context_id=2, seq_first=4, seq_last=4, n=0, anomalies=0,
                    stored_at=4.0, body=b'{"kind":"open"}')
    ob.append([seg(seq=0, n=3), event])
    assert [s.segment.n for s in ob.pending(1, 0, 10)] == [0], "kind 1: sent first, evicted last"
    st = ob.stats()
    assert (st.segments, st.readings, st.anomalies) == (2, 3, 0)
    assert ob.ack([ob.pending(1, 0, 10)[0].id]) == 0 and ob.stats().segments == 1
