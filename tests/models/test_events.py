"""Anomaly events with hysteresis: one event per fault, however the scores hover, and the same events
however the readings are cut into blocks."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import AnomalyEvent, EventConfig, EventTracker

THR = 0.6


def feed(tracker: EventTracker, scores: np.ndarray, cuts: list[int] | None = None, boot: str = "b",
         t0: int = 0) -> list[AnomalyEvent]:
    n = len(scores)
    seq = np.arange(t0, t0 + n)
    ts = seq.astype(float)
    out, i = [], 0
    for k in cuts or [n]:
        out += tracker.update("d", boot, seq[i : i + k], ts[i : i + k], scores[i : i + k], THR)
        i += k
    if i < n:
        out += tracker.update("d", boot, seq[i:], ts[i:], scores[i:], THR)
    return out


def test_a_burst_of_alarms_is_one_event_that_closes_after_the_quiet_readings() -> None:
    s = np.full(200, 0.3)
    s[50:80:3] = 0.9  # ten alarms with quiet gaps shorter than close_after
    s[60] = 0.58  # between release and threshold: neither an alarm nor quiet
    events = feed(EventTracker(EventConfig(close_after=30, update_every_s=1e9)), s)
    assert [e.kind for e in events] == ["open", "close"]
    opened, closed = events
    assert opened.opened_seq == 50 and opened.alarms == 1 and opened.event_id == "d:b:50"
    assert closed.alarms == 10 and closed.peak_score == 0.9 and closed.last_seq == 77 + 30
    assert EventTracker().update("d", "b", np.arange(3), np.arange(3.0), np.full(3, 0.1), THR) == []


def test_a_long_event_is_updated_at_most_every_update_interval_when_it_grows() -> None:
    s = np.full(300, 0.3)
    s[10:200] = 0.7
    s[150] = 0.95
    events = feed(EventTracker(EventConfig(update_every_s=30)), s)
    kinds = [e.kind for e in events]
    assert kinds[0] == "open" and kinds[-1] == "close" and set(kinds[1:-1]) == {"update"}
    times = [e.last_ts for e in events[:-1]]
    assert all(b - a >= 30 for a, b in itertools.pairwise(times))
    assert events[-1].alarms == 190 and events[-1].peak_score == 0.95
    assert [e.last_seq for e in events[1:-1]] == [40, 70, 100, 130, 160, 190, 220]  # 220: the last alarms since 190


def test_a_reboot_closes_the_old_boots_open_event() -> None:
    t = EventTracker()
    assert [e.kind for e in feed(t, np.array([0.9, 0.9]))] == ["open"]
    assert t.open_events == 1
    events = feed(t, np.array([0.9]), boot="c", t0=0)
    assert [(e.kind, e.event_id) for e in events] == [("close", "d:b:0"), ("open", "d:c:0")]
    assert events[0].alarms == 2 and events[0].last_seq == 1 and t.open_events == 1
    quiet = EventTracker()
    feed(quiet, np.array([0.9]))
    assert [(e.kind, e.boot_id) for e in feed(quiet, np.array([0.1]), boot="c")] == [("close", "b")]
    assert quiet.open_events == 0


def _bursts(seed: int, n: int = 1500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.2, 0.55, n)
    for start in rng.integers(0, n - 100, 6):
        s[start : start + rng.integers(1, 80)] = rng.uniform(0.5, 1.0)  # bursts that hover around the threshold
    return s


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 120), min_size=1, max_size=20),
       restarts=st.sets(st.integers(0, 19)), failures=st.sets(st.integers(0, 19)))
def test_stored_state_carries_events_across_restarts_and_failed_writes(seed: int, cuts: list[int],
                                                                        restarts: set[int],
                                                                        failures: set[int]) -> None:
    """As the agent runs it: after each block the changed states are stored (None deletes) and committed;
    a restart is a new tracker restored from the store; a failed write rolls the block back and feeds it
    again. The events are those of one uninterrupted run."""
    s = _bursts(seed)
    cfg = EventConfig(close_after=20, update_every_s=15)
    whole = feed(EventTracker(cfg), s)
    store: dict[str, str] = {}
    t, out, i = EventTracker(cfg), [], 0
    seq = np.arange(len(s))
    for k, n in enumerate([*cuts, len(s)]):
        part = slice(i, min(i + n, len(s)))
        if k in failures:
            t.update("d", "b", seq[part], seq[part].astype(float), s[part], THR)
            t.rollback()
        out += t.update("d", "b", seq[part], seq[part].astype(float), s[part], THR)
        for dev, text in t.changed().items():
            if text is None:
                store.pop(dev, None)
            else:
                store[dev] = text
        t.commit()
        if k in restarts:
            t = EventTracker(cfg)
            assert t.restore(store) == []
        i = part.stop
    assert out == whole
    assert (store == {}) == (whole[-1].kind == "close" if whole else True)


def test_a_state_that_is_not_this_versions_is_named_and_left_closed() -> None:
    t = EventTracker()
    feed(t, np.array([0.9]))
    good = t.changed()["d"]
    assert good is not None
    fresh = EventTracker()
    assert fresh.restore({"d": good, "x": "{", "y": '{"v": 99}', "z": "[1]"}) == ["x", "y", "z"]
    assert fresh.open_events == 1 and [e.kind for e in feed(fresh, np.full(30, 0.1), t0=1)] == ["close"]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(1, 120), min_size=1, max_size=20))
def test_events_do_not_depend_on_how_readings_are_cut_into_blocks(seed: int, cuts: list[int]) -> None:
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.2, 0.55, 1500)
    for start in rng.integers(0, 1400, 6):
        s[start : start + rng.integers(1, 80)] = rng.uniform(0.5, 1.0)  # bursts that hover around the threshold
    cfg = EventConfig(close_after=20, update_every_s=15)
    whole = feed(EventTracker(cfg), s)
    assert feed(EventTracker(cfg), s, cuts) == whole
    opens = [e for e in whole if e.kind == "open"]
    closes = [e for e in whole if e.kind == "close"]
    assert len(opens) - len(closes) in (0, 1)
    assert sum(e.alarms for e in closes) <= int((s >= THR).sum())
