"""The dedup operator's seq-range bookkeeping, checked against a plain set of seen seqs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_jobs.fleet.dedup import covered, merge_ranges
from cloud_jobs.fleet.parse import pack, select, seq_ts, unpack


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 200), max_size=30), max_size=12))
def test_ranges_remember_exactly_the_seqs_seen(batches: list[list[int]]) -> None:
    lo, hi = np.empty(0, np.int64), np.empty(0, np.int64)
    seen: set[int] = set()
    for batch in batches:
        seqs = np.array(sorted(set(batch)), dtype=np.int64)
        assert covered(lo, hi, seqs).tolist() == [s in seen for s in seqs.tolist()]
        lo, hi = merge_ranges(lo, hi, seqs[~covered(lo, hi, seqs)])
        seen |= set(batch)
        assert sorted(seen) == [s for a, b in zip(lo.tolist(), hi.tolist(), strict=True) for s in range(a, b + 1)]
        assert all(b + 1 < a for b, a in zip(hi[:-1].tolist(), lo[1:].tolist(), strict=True)), "disjoint, not adjacent"


def test_a_blob_keeps_only_the_selected_readings() -> None:
    values = np.arange(12, dtype=float).reshape(4, 3)
    blob = pack([5, 6, 7, 8], [10, 20, 30, 40], [0.1, 0.2, 0.3, 0.4], [False, True, False, True], values)
    seq, ts, score, anomaly, flat = unpack(select(blob, 4, np.array([True, False, True, False])), 2)
    assert seq.tolist() == [5, 7] and ts.tolist() == [10, 30] and score.tolist() == [0.1, 0.3]
    assert anomaly.tolist() == [False, False]
    assert flat.reshape(2, 3).tolist() == [values[0].tolist(), values[2].tolist()]
    # what the dedup operator reads of a blob: its seqs and event times alone
    assert [a.tolist() for a in seq_ts(blob, 4)] == [[5, 6, 7, 8], [10, 20, 30, 40]]


class _State:
    """What `dedup_group` uses of Spark's GroupState, in memory."""

    def __init__(self, value: tuple[str, int] | None, watermark_ms: int) -> None:
        self.value, self.wm, self.hasTimedOut = value, watermark_ms, False

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple[str, int]:
        assert self.value is not None
        return self.value

    def getCurrentWatermarkMs(self) -> int:  # Spark's names
        return self.wm

    def update(self, value: tuple[str, int]) -> None:
        self.value = value

    def remove(self) -> None:
        self.value = None

    def setTimeoutTimestamp(self, _ms: int) -> None:
        pass


message = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 100)), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(prior=st.sets(st.integers(0, 60), max_size=20), wm=st.integers(0, 60),
       messages=st.lists(message, max_size=6), run=st.integers(1, 40))
def test_the_dedup_operator_keeps_each_new_reading_once_and_counts_the_late(
        prior: set[int], wm: int, messages: list[list[tuple[int, int]]], run: int) -> None:
    """Against a plain set of seen seqs, messages in order of their first seq: a reading at or below the
    watermark is late (counted), one seen before is dropped, the rest are emitted once. `run` adds a
    message of consecutive new seqs, the stream's usual shape (the operator's fast path)."""
    import pandas as pd

    from cloud_jobs.fleet.dedup import dedup_group

    msgs = [sorted({s: t for s, t in m}.items()) for m in messages]
    top = max([-1, *prior, *(s for m in msgs for s, _ in m)]) + 1
    msgs.append([(top + i, wm + 1 + i) for i in range(run)])
    msgs.append([(top + run + i, wm + 1 + i) for i in range(run)])  # and the next one
    blobs = [pack([s for s, _ in m], [t for _, t in m], [0.0] * len(m), [False] * len(m), np.zeros((len(m), 1)))
             for m in msgs]
    frame = pd.DataFrame({"status": "ok", "reason": None, "raw": None, "n": [len(m) for m in msgs],
                          "readings": blobs, "msg_ms": [max(t for _, t in m) for m in msgs]})
    lo, hi = merge_ranges(np.empty(0, np.int64), np.empty(0, np.int64), np.array(sorted(prior), dtype=np.int64))
    state = _State((",".join(f"{a}-{b}" for a, b in zip(lo.tolist(), hi.tolist(), strict=True)), 0)
                   if prior else None, wm)
    columns = ["status", "reason", "raw", "n", "readings", "msg_ms", "late"]
    out = pd.concat(list(dedup_group(("s", "d", "b"), iter([frame]), state, columns)) or [frame.iloc[:0]])
    seen, emitted, late = set(prior), [], 0
    for m in sorted(msgs, key=lambda m: m[0][0]):
        for s, t in m:
            if t <= wm:
                late += 1
            elif s not in seen:
                seen.add(s)
                emitted.append(s)
    ok = out[out["status"] == "ok"]
    got = [int(s) for blob, n in zip(ok["readings"], ok["n"], strict=True) for s in unpack(blob, int(n))[0]]
    assert sorted(got) == sorted(emitted) and len(got) == len(set(got))
    assert int(out.loc[out["status"] == "late", "late"].sum()) == late
    assert state.value is not None, "the stream's newest reading is after the watermark: its state stays"
    ranges = [tuple(map(int, r.split("-"))) for r in state.value[0].split(",")]
    assert {x for a, b in ranges for x in range(a, b + 1)} == seen, "the state remembers every seq seen"


def test_a_quarantined_payload_without_a_time_is_emitted_once_and_remembered_until_the_watermark_moves() -> None:
    import pandas as pd

    from cloud_jobs.fleet.dedup import dedup_group

    columns = ["status", "reason", "raw", "n", "readings", "msg_ms", "late"]
    copies = pd.DataFrame({"status": "quarantined", "reason": "torn", "raw": "{", "n": 0, "readings": [b"", b""],
                           "msg_ms": [None, None]})
    state = _State(None, 1_000)
    [out] = list(dedup_group(("", "", "q:abc"), iter([copies]), state, columns))
    assert len(out) == 1 and state.value is not None and state.value[1] == 1_001
    assert list(dedup_group(("", "", "q:abc"), iter([copies.iloc[:1]]), state, columns)) == []
