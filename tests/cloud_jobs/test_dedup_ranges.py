"""The dedup operator's seq-range bookkeeping, checked against a plain set of seen seqs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_jobs.fleet.dedup import covered, merge_ranges
from cloud_jobs.fleet.parse import pack, select, unpack


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
