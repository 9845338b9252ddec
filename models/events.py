"""One alert per event: per-device anomaly events with hysteresis over the per-reading flags.

An event **opens** on a device's first flagged reading (score >= threshold) while none is open. It
stays open while the device keeps alerting, and **closes** at the `close_after`-th consecutive quiet
reading (score < `release` × threshold): a score that hovers around the threshold, or a fault whose
aftermath still fills the rolling windows, is one event, not dozens of alarms. While open it is
**updated** when its peak score or its count of flagged readings has grown and `update_every_s` of
event time has passed since its last announcement (open or update). Readings between `threshold`
and `release × threshold` neither open an event nor count as quiet.

Pure numpy and per-device state (`EventTracker.update` one block of one device at a time, readings in
seq order): the edge agent runs it on every scored block, and the detection benchmark runs the same
code over test scores. Work per block is vectorised; Python only loops over the events themselves.
Results do not depend on how readings are cut into blocks (tested).

State across restarts and failed writes: `changed()` gives the state of every device whose events moved
since the last `commit()` (a small JSON text, or None once nothing is open) for the agent to store with
the readings that moved them, in the same outbox transaction; `restore` takes it back at start, so an
event in progress when the agent stopped or crashed goes on under its own id after the restart (the
cloud counts it once and sees it close). `rollback()` undoes every `update` since the last `commit()`
(the outbox write failed and the same readings come again). A device that reboots (a new boot id)
closes the old boot's open event before anything else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from contracts.block import device_spans


@dataclass(frozen=True)
class EventConfig:
    close_after: int = 30
    release: float = 0.9
    update_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.close_after < 1:
            raise ValueError("close_after must be >= 1")
        if not 0 < self.release <= 1:
            raise ValueError("release must be in (0, 1]")


@dataclass
class AnomalyEvent:
    """One event as announced: `kind` is open, update or close; the figures are as of that moment."""

    kind: str
    event_id: str  # <device>:<boot>:<seq of the opening reading>
    device_id: str
    boot_id: str
    opened_seq: int
    opened_ts: float
    last_seq: int  # the latest reading seen in the event (the closing reading for a close)
    last_ts: float
    alarms: int  # flagged readings in the event so far
    peak_score: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Open:
    event_id: str
    boot_id: str
    opened_seq: int
    opened_ts: float
    alarms: int
    peak: float
    last_seq: int
    last_ts: float
    announced_ts: float
    announced: tuple[int, float]


@dataclass
class _Device:
    open: _Open | None = None
    quiet: int = 0  # consecutive quiet readings at the end of what was seen


#: Version of the JSON text of a device's state (`EventTracker.changed`, `EventTracker.restore`).
STATE_VERSION = 1
_OPEN_FIELDS = tuple(f.name for f in fields(_Open))


@dataclass
class EventTracker:
    config: EventConfig = field(default_factory=EventConfig)
    devices: dict[str, _Device] = field(default_factory=dict)
    #: each device's state as of the last `commit()`, for the devices `update` touched since
    _undo: dict[str, tuple[_Open | None, int]] = field(default_factory=dict)

    @property
    def open_events(self) -> int:
        return sum(1 for d in self.devices.values() if d.open is not None)

    def update(self, device_id: str, boot_id: str, seq: np.ndarray, ts: np.ndarray, scores: np.ndarray,
               threshold: float) -> list[AnomalyEvent]:
        """Events announced by one device's next readings (in seq order), in order."""
        st = self.devices.setdefault(device_id, _Device())
        flagged = scores >= threshold
        if st.open is None and not flagged.any():
            return []
        if device_id not in self._undo:
            self._undo[device_id] = (None if st.open is None else replace(st.open), st.quiet)
        out: list[AnomalyEvent] = []
        if st.open is not None and st.open.boot_id != boot_id:  # a reboot ends what the old boot had open
            out.append(self._event("close", device_id, st.open, threshold))
            st.open, st.quiet = None, 0
            if not flagged.any():
                return out
        quiet = scores < self.config.release * threshold
        i, n = 0, len(scores)
        while i < n:
            if st.open is None:
                hits = np.flatnonzero(flagged[i:])
                if not len(hits):
                    break
                j = i + int(hits[0])
                sj, tj, pj = int(seq[j]), float(ts[j]), float(scores[j])
                st.open = _Open(f"{device_id}:{boot_id}:{sj}", boot_id, sj, tj, 1, pj, sj, tj, tj, (1, pj))
                st.quiet = 0
                out.append(self._event("open", device_id, st.open, threshold))
                i = j + 1
                continue
            stop = self._close_at(quiet, i, st.quiet)
            self._absorb(device_id, st.open, flagged, scores, seq, ts, i, stop if stop is not None else n,
                         threshold, out)
            if stop is None:
                loud = np.flatnonzero(~quiet[i:])
                st.quiet = n - i - 1 - int(loud[-1]) if len(loud) else st.quiet + n - i
                break
            out.append(self._event("close", device_id, st.open, threshold))
            st.open, st.quiet = None, 0
            i = stop
        return out

    def close(self, device_id: str, threshold: float) -> AnomalyEvent | None:
        """Close the device's open event now, as of its last reading (the device went silent); None when
        nothing is open."""
        st = self.devices.get(device_id)
        if st is None or st.open is None:
            return None
        if device_id not in self._undo:
            self._undo[device_id] = (replace(st.open), st.quiet)
        ev = self._event("close", device_id, st.open, threshold)
        st.open, st.quiet = None, 0
        return ev

    def changed(self) -> dict[str, str | None]:
        """The state of each device `update` touched since the last `commit()`: JSON text while an event
        is open, None when none is (what to store, or delete, with the readings that led to it)."""
        out: dict[str, str | None] = {}
        for device_id in self._undo:
            st = self.devices[device_id]
            out[device_id] = None if st.open is None else json.dumps(
                {"v": STATE_VERSION, "quiet": st.quiet, "open": asdict(st.open)}, separators=(",", ":"))
        return out

    def commit(self) -> None:
        """What `changed()` gave is stored: later `rollback()`s return to here."""
        self._undo.clear()

    def rollback(self) -> None:
        """Undo every `update` since the last `commit()`."""
        for device_id, (ev, quiet) in self._undo.items():
            self.devices[device_id] = _Device(ev, quiet)
        self._undo.clear()

    def restore(self, states: Mapping[str, str]) -> list[str]:
        """Take back stored states (`changed()`'s texts by device); returns the devices whose text is
        not a state of this version (left without an open event)."""
        bad = []
        for device_id, text in states.items():
            try:
                d = json.loads(text)
                if d.get("v") != STATE_VERSION or set(d["open"]) != set(_OPEN_FIELDS):
                    raise ValueError("unknown state")
                o = d["open"]
                ev = _Open(**{**o, "announced": (int(o["announced"][0]), float(o["announced"][1]))})
                self.devices[device_id] = _Device(ev, int(d["quiet"]))
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                bad.append(device_id)
        return bad

    def _close_at(self, quiet: np.ndarray, i: int, carry: int) -> int | None:
        """Index just past the reading that closes an event open before `i`, or None in this block."""
        need = self.config.close_after
        q = quiet[i:]
        loud = np.flatnonzero(~q)
        starts = np.concatenate([[-1 - carry], loud])
        ends = np.concatenate([loud, [len(q)]])
        long_enough = np.flatnonzero(ends - starts - 1 >= need)
        if not len(long_enough):
            return None
        return i + int(starts[long_enough[0]]) + need + 1

    def _absorb(self, device_id: str, ev: _Open, flagged: np.ndarray, scores: np.ndarray, seq: np.ndarray,
                ts: np.ndarray, a: int, b: int, threshold: float, out: list[AnomalyEvent]) -> None:
        """Readings a..b-1 join the open event; an update is announced at each reading where one is due
        (`update_every_s` after the last announcement, and the alarms or the peak have grown since)."""
        if b <= a:
            return
        alarms = ev.alarms + np.cumsum(flagged[a:b])
        peak = np.maximum(ev.peak, np.maximum.accumulate(scores[a:b]))
        k0 = 0
        while k0 < b - a:
            grown = (alarms[k0:] > ev.announced[0]) | (peak[k0:] > ev.announced[1])
            due = np.flatnonzero(grown & (ts[a + k0 : b] >= ev.announced_ts + self.config.update_every_s))
            if not len(due):
                break
            k = k0 + int(due[0])
            ev.alarms, ev.peak = int(alarms[k]), float(peak[k])
            ev.last_seq, ev.last_ts = int(seq[a + k]), float(ts[a + k])
            ev.announced, ev.announced_ts = (ev.alarms, ev.peak), ev.last_ts
            out.append(self._event("update", device_id, ev, threshold))
            k0 = k + 1
        ev.alarms, ev.peak = int(alarms[-1]), float(peak[-1])
        ev.last_seq, ev.last_ts = int(seq[b - 1]), float(ts[b - 1])

    @staticmethod
    def _event(kind: str, device_id: str, ev: _Open, threshold: float) -> AnomalyEvent:
        return AnomalyEvent(kind, ev.event_id, device_id, ev.boot_id, ev.opened_seq, ev.opened_ts, ev.last_seq,
                            ev.last_ts, ev.alarms, ev.peak, threshold)


def alert_spans(devices: Sequence[str], scores: np.ndarray, threshold: float,
                config: EventConfig | None = None) -> list[tuple[int, int]]:
    """[first, last + 1) row spans of the events the tracker opens over scored rows (each device's rows
    contiguous and in time order, row order standing in for time): one alert per event, as the agent
    announces them. An event still open at the end runs to its device's last row."""
    tracker = EventTracker(config or EventConfig(update_every_s=float("inf")))
    spans: list[tuple[int, int]] = []
    for a, b in device_spans(devices):
        idx = np.arange(b - a)
        opened: int | None = None
        for ev in tracker.update(str(devices[a]), "", idx, idx.astype(np.float64), scores[a:b], threshold):
            if ev.kind == "open":
                opened = a + ev.opened_seq
            elif ev.kind == "close" and opened is not None:
                spans.append((opened, a + ev.last_seq + 1))
                opened = None
        if opened is not None:
            spans.append((opened, b))
    return spans
