"""The agent's anomaly events and rolling windows across a failed outbox write and across a restart.

The agent is built as the daemon builds it (its real ingest stage, model and outbox); the readings are
the simulator's, fed batch by batch to `IngestStage.ingest_with_retry` as the source pump would. No
uplink runs: what is checked is what the outbox holds to send.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.config import build_config
from edge_agent.errors import OutboxError
from edge_agent.outbox import MemoryOutbox, Outbox, Segment, SqliteOutbox
from edge_agent.sources.base import Batch
from simulators import FleetConfig
from tests.conftest import fleet_blocks
from tests.edge_agent.helpers import agent_config

DEVICES, READINGS, BATCH = 3, 1800, 100
DEVICE_IDS = tuple(f"dev-{i:04d}" for i in range(1, DEVICES + 1))


class FailingOutbox(MemoryOutbox):
    """A memory outbox whose `append` fails (as on a full disk or an I/O error) on the calls listed."""

    def __init__(self, max_bytes: int, fail_on: set[int]) -> None:
        super().__init__(max_bytes)
        self.fail_on, self.calls = fail_on, 0

    def append(self, segments: Sequence[Segment], **kw: Any) -> dict[str, int]:  # type: ignore[override]
        self.calls += 1
        if self.calls in self.fail_on:
            raise OutboxError("injected: disk I/O error")
        return super().append(segments, **kw)


@pytest.fixture(scope="module")
def batches() -> list[Batch]:
    """The fleet's readings in batches of `BATCH` per device, in arrival order."""
    blocks = fleet_blocks(FleetConfig(devices=DEVICES, seed=23, anomaly_rate=0.004), READINGS)
    assert tuple(blocks) == DEVICE_IDS
    return [Batch(blocks=[b.slice(i, i + BATCH) for b in blocks.values()]) for i in range(0, READINGS, BATCH)]


def make_agent(tmp_path: Path, bundle: Path, outbox: Outbox, clock: Any = lambda: 1_000.0) -> Agent:
    """An agent over `outbox` whose streams carry fixed boot ids, so two runs' messages compare byte for byte."""
    if not outbox.streams():
        outbox.append([], streams={d: (f"boot-{d}", -1) for d in DEVICE_IDS})
    cfg = build_config(agent_config(tmp_path / "state", bundle, 1), environ={})  # never started: no uplink
    return Agent(cfg, outbox=outbox, clock=clock)


def feed(agent: Agent, batches: list[Batch]) -> None:
    for b in batches:
        assert agent.ingest.ingest_with_retry([b], threading.Event())


def stored(outbox: Outbox) -> list[tuple[int, str, str, int, bytes]]:
    return sorted((s.segment.kind, s.segment.device_id, s.segment.boot_id, s.segment.seq_first, s.segment.body)
                  for kind in (0, 1) for s in outbox.pending(kind, 0, 1_000_000))


def events(outbox: Outbox) -> list[dict[str, Any]]:
    out = [json.loads(s.segment.body) for s in outbox.pending(1, 0, 1_000_000) if s.segment.n == 0]
    return sorted(out, key=lambda e: (e["event_id"], e["last_seq"]))


def test_a_failed_outbox_write_is_retried_with_the_same_scores_and_events(tmp_path: Path, trained_small,  # type: ignore[no-untyped-def]
                                                                          batches: list[Batch]) -> None:
    bundle = trained_small[0]
    plain = MemoryOutbox(1 << 30)
    feed(make_agent(tmp_path / "a", bundle, plain), batches)
    ev = events(plain)
    opened = [e for e in ev if e["kind"] == "open"]
    assert opened, "the fleet has faults: events to carry"
    failing = FailingOutbox(1 << 30, fail_on={4, 5, 9, 13})  # the 1st call is make_agent's
    agent = make_agent(tmp_path / "b", bundle, failing)
    feed(agent, batches)
    assert failing.calls == 1 + len(batches) + 4
    assert stored(failing) == stored(plain), "every reading scored, every event announced as without the failures"
    assert agent.metrics.snapshot()["readings_in"] == DEVICES * READINGS
    counted = {k: n for k, n in agent.metrics.snapshot()["anomaly_events"].items() if k != "open_now" and n}
    assert counted == dict(Counter(e["kind"] for e in ev)), "each stored event counted once, failed tries not"


def _cut_with_an_open_event(bundle: Path, tmp_path: Path, batches: list[Batch]) -> tuple[int, MemoryOutbox]:
    """The first batch boundary (after warm-up) where some device has an event open, and the outbox of an
    uninterrupted run."""
    plain = MemoryOutbox(1 << 30)
    ref = make_agent(tmp_path / "ref", bundle, plain)
    cut = None
    for k, b in enumerate(batches):
        feed(ref, [b])
        if cut is None and k >= 3 and ref.ingest.events.open_events:
            cut = k + 1
    assert cut is not None, "some event is open between two batches"
    return cut, plain


def test_a_clean_stop_and_start_mid_event_changes_nothing(tmp_path: Path, trained_small,  # type: ignore[no-untyped-def]
                                                         batches: list[Batch]) -> None:
    """Stopped with an event open and started again: the same messages, byte for byte, as without the
    stop (the event goes on under its id; the rolling windows are taken back, so no warm-up)."""
    bundle = trained_small[0]
    cut, plain = _cut_with_an_open_event(bundle, tmp_path, batches)
    path = tmp_path / "outbox.db"
    first = make_agent(tmp_path / "1", bundle, SqliteOutbox(path, 1 << 30, reserve_bytes=0))
    feed(first, batches[:cut])
    first.stop(flush_timeout=0)
    outbox = SqliteOutbox(path, 1 << 30, reserve_bytes=0)
    second = make_agent(tmp_path / "2", bundle, outbox)
    assert second.ingest.events.open_events >= 1
    assert len(second.ingest.slot.stage.windows()) == DEVICES
    feed(second, batches[cut:])
    assert stored(outbox) == stored(plain)
    outbox.close()


def test_after_a_crash_mid_event_the_event_goes_on_under_its_id_and_closes_once(tmp_path: Path, trained_small,  # type: ignore[no-untyped-def]
                                                                                batches: list[Batch]) -> None:
    """Killed with an event open: the event is continued from the outbox (one open, one close, under its
    id); the windows stored at an earlier clean stop are behind the streams and left out (warm-up)."""
    bundle = trained_small[0]
    cut, _ = _cut_with_an_open_event(bundle, tmp_path, batches)
    path = tmp_path / "outbox.db"
    first = make_agent(tmp_path / "1", bundle, SqliteOutbox(path, 1 << 30, reserve_bytes=0))
    feed(first, batches[:2])
    first.stop(flush_timeout=0)  # a clean stop early on: windows stored at batch 2
    crashing = make_agent(tmp_path / "1", bundle, SqliteOutbox(path, 1 << 30, reserve_bytes=0))
    assert len(crashing.ingest.slot.stage.windows()) == DEVICES
    assert not any(k.startswith("window/") for k in crashing.outbox.state()), "taken back, then deleted"
    feed(crashing, batches[2:cut])
    spanning = {d: st.open.event_id for d, st in crashing.ingest.events.devices.items() if st.open is not None}
    assert spanning
    crashing.outbox.close()  # no stop: what a SIGKILL leaves is what the appends committed
    outbox = SqliteOutbox(path, 1 << 30, reserve_bytes=0)
    assert {k for k in outbox.state() if k.startswith("events/")} == {f"events/{d}" for d in spanning}
    second = make_agent(tmp_path / "2", bundle, outbox)
    assert second.ingest.slot.stage.windows() == {}, "stale windows are left out"
    feed(second, batches[cut:])
    ev = events(outbox)
    kinds: dict[str, list[str]] = {}
    for e in ev:
        kinds.setdefault(e["event_id"], []).append(e["kind"])
    for eid, ks in kinds.items():
        assert ks.count("open") == 1, f"{eid} opened {ks.count('open')} times"
        assert ks.count("close") <= 1 and (ks[-1] == "close" or "close" not in ks), (eid, ks)
    for d, eid in spanning.items():
        assert kinds[eid][-1] == "close", f"{d}'s event {eid}, open at the crash, is closed after it"
        assert all(e["opened_seq"] == int(eid.rsplit(":", 1)[1]) for e in ev if e["event_id"] == eid)
    still_open = [eid for eid, ks in kinds.items() if ks[-1] != "close"]
    assert len(still_open) == second.ingest.events.open_events
    assert {k for k in outbox.state() if k.startswith("events/")} == {
        f"events/{d}" for d, st in second.ingest.events.devices.items() if st.open is not None}
    outbox.close()


def test_a_window_that_does_not_fit_the_stream_or_the_model_is_left_out(tmp_path: Path, trained_small,  # type: ignore[no-untyped-def]
                                                                        batches: list[Batch]) -> None:
    bundle = trained_small[0]
    path = tmp_path / "outbox.db"
    first = make_agent(tmp_path / "1", bundle, SqliteOutbox(path, 1 << 30, reserve_bytes=0))
    feed(first, batches[:2])
    first.stop(flush_timeout=0)
    outbox = SqliteOutbox(path, 1 << 30, reserve_bytes=0)
    windows = {k: json.loads(v) for k, v in outbox.state().items() if k.startswith("window/")}
    assert len(windows) == DEVICES
    a, b, c = sorted(windows)
    windows[a]["last_seq"] -= 1  # readings stored after the window: it is behind the stream
    windows[b]["spec"] = "0" * 64  # another model's features, over channels this model does not score
    windows[b]["channels"] = ["humidity"]
    outbox.append([], state={k: json.dumps(v) for k, v in windows.items()} | {"window/dev-9999": "not json",
                                                                               "events/dev-9999": "not json"})
    agent = make_agent(tmp_path / "2", bundle, outbox)
    assert agent.ingest.component.snapshot()["errors"] == {"event_state_unreadable": 1}
    assert list(agent.ingest.slot.stage.windows()) == [c.removeprefix("window/")]
    assert not any(k.startswith("window/") for k in outbox.state())
    assert "events/dev-9999" not in outbox.state(), "an unreadable event state is reported once, then deleted"
    outbox.close()


def test_a_window_stored_under_another_model_is_rebuilt_for_the_model_it_starts_with(
        tmp_path: Path, trained_small, batches: list[Batch]) -> None:  # type: ignore[no-untyped-def]
    """Stopped on a v4 model, started on a v7 one: each device's window is rebuilt from the readings the
    stored one holds, so v7's features from the first batch after the start are those of the whole stream
    (not a warm-up)."""
    import numpy as np

    from models.bundle import load_bundle
    from models.features import columns_for, compute_features
    from models.registry import Registry
    from models.training.trainer import TrainConfig, export_model, train

    old = train(trained_small[1], TrainConfig(n_estimators=20, features="robust-blocks-v4"))
    v4 = Registry(tmp_path / "registry").publish("old", lambda v: export_model(old, name="old", version=v))
    path = tmp_path / "outbox.db"
    first = make_agent(tmp_path / "1", v4, SqliteOutbox(path, 1 << 30, reserve_bytes=0))
    feed(first, batches[:3])
    first.stop(flush_timeout=0)
    outbox = SqliteOutbox(path, 1 << 30, reserve_bytes=0)
    second = make_agent(tmp_path / "2", trained_small[0], outbox)
    stage = second.ingest.slot.stage
    spec = stage.bundle.spec
    assert spec.algo == "robust-blocks-v7" and spec.hash != load_bundle(v4).spec.hash
    assert len(stage.windows()) == DEVICES
    feats = stage.features_many(batches[3].blocks)
    for block, f in zip(batches[3].blocks, feats, strict=True):
        stream = np.vstack([b.values for batch in batches[:4] for b in batch.blocks if b.device_id == block.device_id])
        whole = compute_features(spec, stream[:, columns_for(spec, block.channels)])
        assert np.array_equal(f, whole[-len(f):]), block.device_id
    outbox.close()


def test_the_open_event_of_a_device_gone_silent_closes_after_idle_close_s(tmp_path: Path, trained_small,  # type: ignore[no-untyped-def]
                                                                          batches: list[Batch]) -> None:
    bundle = trained_small[0]
    cut, _ = _cut_with_an_open_event(bundle, tmp_path, batches)
    now = [1_000.0]
    outbox = FailingOutbox(1 << 30, fail_on=set())
    agent = make_agent(tmp_path / "a", bundle, outbox, clock=lambda: now[0])
    feed(agent, batches[:cut])
    open_before = {d: st.open.event_id for d, st in agent.ingest.events.devices.items() if st.open is not None}
    assert open_before
    first = DEVICE_IDS[0]
    now[0] += 400
    feed(agent, [Batch(blocks=[batches[cut].blocks[0]])])  # one device keeps sending
    still = {d: st.open.event_id for d, st in agent.ingest.events.devices.items() if st.open is not None}
    silent = {d: eid for d, eid in still.items() if d != first}
    assert silent, "some device with an open event went silent"
    now[0] += 199
    assert agent.ingest.close_idle(600) == 0, "the silent ones are 599 s silent"
    now[0] += 2
    outbox.fail_on = {outbox.calls + 1}
    assert agent.ingest.close_idle(600) == 0, "the write failed: they stay open, and are tried again"
    assert agent.ingest.component.snapshot()["errors"] == {"outbox_write": 1}, "and the failure is counted"
    assert {d for d, st in agent.ingest.events.devices.items() if st.open is not None} == set(still)
    assert agent.ingest.close_idle(600) == len(silent) and agent.ingest.close_idle(600) == 0
    assert {d for d, st in agent.ingest.events.devices.items() if st.open is not None} == set(still) - set(silent)
    last = {}
    for e in events(outbox):
        last[e["event_id"]] = e
    for eid in silent.values():
        assert last[eid]["kind"] == "close", eid
    assert set(outbox.state()) == {f"events/{d}" for d in set(still) - set(silent)}
