"""Sources resume from the checkpoint committed with their data."""

from __future__ import annotations

import time
from pathlib import Path

from helpers import wait_for

from edge_agent.agent import Agent
from edge_agent.config import build_config
from simulators import Fleet, FleetConfig
from simulators.writers import JsonlWriter


def _cfg(tmp: Path, bundle: Path, source: dict[str, object]) -> object:
    return build_config({"agent": {"state_dir": str(tmp / "state")}, "model": {"bundle": str(bundle)},
                         "source": source, "uplink": {"type": "none"}, "log": {"level": "warning"}}, environ={})


def test_a_restarted_jsonl_source_continues_after_the_stored_offset(tmp_path: Path, trained_small) -> None:  # type: ignore[no-untyped-def]
    blocks = Fleet(FleetConfig(devices=2, seed=4)).generate(400)
    data = tmp_path / "in.jsonl"
    with data.open("w") as fh:
        JsonlWriter(fh).write([b.slice(0, 200) for b in blocks.values()])
    first = Agent(_cfg(tmp_path, trained_small[0], {"type": "jsonl", "path": str(data)}))  # type: ignore[arg-type]
    first.start()
    wait_for(lambda: first.pump.done.is_set() and first._processed == first.pump.emitted, 20, "the first file")
    assert first.outbox.stats().readings == 400
    first.stop(flush_timeout=0)
    with data.open("a") as fh:  # more lines arrive while the agent is down
        JsonlWriter(fh).write([b.slice(200, 400) for b in blocks.values()])
    second = Agent(_cfg(tmp_path, trained_small[0], {"type": "jsonl", "path": str(data)}))  # type: ignore[arg-type]
    second.start()
    wait_for(lambda: second.pump.done.is_set() and second._processed == second.pump.emitted, 20, "the rest")
    snap = second.metrics.snapshot()
    assert snap["readings_in"] == 400 and snap["quarantined"] == {}, "only the new lines are read"
    assert second.outbox.stats().readings == 800
    second.stop(flush_timeout=0)


def test_a_restarted_simulator_source_continues_its_stream(tmp_path: Path, trained_small) -> None:  # type: ignore[no-untyped-def]
    src = {"type": "simulator", "devices": 2, "readings": 300, "seed": 4}
    first = Agent(_cfg(tmp_path, trained_small[0], src))  # type: ignore[arg-type]
    first.start()
    wait_for(lambda: first.pump.done.is_set() and first._processed == first.pump.emitted, 20, "the first run")
    first.stop(flush_timeout=0)
    second = Agent(_cfg(tmp_path, trained_small[0], {**src, "readings": 500}))  # type: ignore[arg-type]
    second.start()
    wait_for(lambda: second.pump.done.is_set() and second._processed == second.pump.emitted, 20, "the rest")
    snap = second.metrics.snapshot()
    assert snap["readings_in"] == 400 and snap["quarantined"] == {}
    assert {d: s for d, (_, s) in second.outbox.streams().items()} == {"dev-0001": 499, "dev-0002": 499}
    second.stop(flush_timeout=0)


def test_the_mqtt_source_stores_readings_and_gets_those_sent_while_it_was_down(tmp_path: Path, trained_small,  # type: ignore[no-untyped-def]
                                                                                broker) -> None:
    from contracts.mqtt import MqttSettings
    from simulators.publish import publish_blocks

    fleet = Fleet(FleetConfig(devices=2, seed=6))
    src = {"type": "mqtt", "port": broker.port, "client_id": "agent-src"}
    first = Agent(_cfg(tmp_path, trained_small[0], src))  # type: ignore[arg-type]
    first.start()
    time.sleep(0.5)  # subscribed with a persistent session
    publish_blocks(fleet.blocks(150, chunk=50), MqttSettings(port=broker.port, client_id="sensors"), qos=1)
    wait_for(lambda: first.outbox.stats().readings == 300, 20, "the first readings")
    first.stop(flush_timeout=0)
    # the agent is down: the broker keeps QoS 1 readings for its session
    publish_blocks(fleet.blocks(150, chunk=50), MqttSettings(port=broker.port, client_id="sensors"), qos=1)
    second = Agent(_cfg(tmp_path, trained_small[0], src))  # type: ignore[arg-type]
    second.start()
    wait_for(lambda: second.outbox.stats().readings == 600, 20, "the readings sent while it was down")
    assert {d: s for d, (_, s) in second.outbox.streams().items()} == {"dev-0001": 299, "dev-0002": 299}
    assert second.metrics.snapshot()["quarantined"].get("duplicate", 0) <= 300
    second.stop(flush_timeout=0)


def test_a_crashing_thread_makes_the_agent_exit_non_zero_for_its_supervisor(tmp_path: Path, trained_small) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.sinks.memory import ListSink

    class Broken(ListSink):
        def send(self, message, token):  # type: ignore[no-untyped-def]
            raise RuntimeError("bug in a sink")

    cfg = _cfg(tmp_path, trained_small[0], {"type": "simulator", "devices": 1, "readings": 100})
    agent = Agent(cfg, sink=Broken(cfg.uplink))  # type: ignore[attr-defined,arg-type]
    assert agent.run() == 1
    assert "sender thread crashed: RuntimeError: bug in a sink" in agent.last_error
    # nothing is lost: the readings wait in the outbox for the restarted agent
    from edge_agent.outbox import SqliteOutbox

    db = SqliteOutbox(tmp_path / "state" / "outbox.db", 1 << 30)
    assert db.stats().readings == 100
    db.close()


def test_simulator_sources_split_one_typed_fleet_between_agents_with_its_fleet_fault() -> None:
    import threading

    import numpy as np

    from edge_agent.sources.base import Batch, make_source
    from edge_agent.sources.simulator import SimulatorSourceConfig

    fleet = {"devices": 9, "seed": 3, "readings": 700, "device_types": ("pump", "compressor", "chiller"),
             "fleet_faults": ("pump:3:100:level_shift:200",)}
    whole = Fleet(SimulatorSourceConfig(**fleet).fleet_config()).generate(700)  # type: ignore[arg-type]
    got: dict[str, list[object]] = {}
    for shard in range(2):
        cfg = SimulatorSourceConfig(**fleet, only_type="pump", shard=shard, shards=2)  # type: ignore[arg-type]

        def emit(batch: Batch) -> bool:
            for b in batch.blocks:
                got.setdefault(b.device_id, []).append(b)
            return True

        make_source(cfg, {}, 256).run(emit, threading.Event())
    assert sorted(got) == ["pump-0001", "pump-0002", "pump-0003"], "every pump once, no other type"
    for dev, parts in got.items():
        values = np.concatenate([p.values for p in parts])  # type: ignore[attr-defined]
        faults = np.concatenate([p.faults for p in parts])  # type: ignore[attr-defined]
        assert np.array_equal(values, whole[dev].values, equal_nan=True), dev
        assert list(faults) == list(whole[dev].faults), dev
        assert "fleet-1-pump" in set(faults), f"{dev}: the fleet fault reaches devices on both agents"


def test_take_lingers_for_more_of_a_slow_stream_but_not_for_a_source_waiting_for_its_ack() -> None:
    import logging
    import threading

    from edge_agent.pump import SourcePump
    from edge_agent.sources.base import Batch

    def one(ack: bool = False) -> Batch:
        return Batch(raw=[{"x": 1}], ack=(lambda: None) if ack else None)

    def feed(pump: SourcePump, batches: list[Batch], every_s: float) -> threading.Thread:
        def run() -> None:
            for b in batches:
                pump.queue.put(b)
                time.sleep(every_s)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def drain(pump: SourcePump, feeder: threading.Thread) -> None:
        while feeder.is_alive() or pump.take(1000, 0.0):
            pump.take(1000, 0.05)

    pump = SourcePump([], logging.getLogger("test"), lambda _m, _e: None)
    f = feed(pump, [one() for _ in range(8)], 0.0)
    t0 = time.monotonic()
    assert len(pump.take(8, 1.0, linger=5.0)) == 8 and time.monotonic() - t0 < 1.0  # the limit ends the wait
    f.join()

    t0 = time.monotonic()
    f = feed(pump, [one() for _ in range(30)], 0.02)  # 50 readings/s
    got = pump.take(1000, 1.0, linger=0.2)
    waited = time.monotonic() - t0
    assert 6 <= len(got) <= 12 and 0.19 <= waited < 0.5, (len(got), waited)
    drain(pump, f)

    assert len(feed(pump, [one()], 0.0) and pump.take(1000, 1.0, linger=0.0)) == 1  # linger 0: as it comes

    t0 = time.monotonic()
    f = feed(pump, [one(ack=True) for _ in range(10)], 0.02)  # a source that waits for its acks
    got = pump.take(1000, 1.0, linger=0.2)
    assert len(got) <= 2 and time.monotonic() - t0 < 0.1, len(got)
    drain(pump, f)

    pump.queue.put(one())  # a long linger (set from the cloud) never holds up a stopping agent
    threading.Timer(0.2, pump.stop.set).start()
    t0 = time.monotonic()
    assert len(pump.take(1000, 1.0, linger=10.0)) == 1 and time.monotonic() - t0 < 0.6


def test_a_slow_stream_is_scored_and_stored_several_readings_at_a_time(tmp_path: Path, trained_small) -> None:  # type: ignore[no-untyped-def]
    """40 readings/s, one per source batch: with the default linger each micro-batch (one onnxruntime call,
    one outbox commit) holds several readings; with linger_ms = 0 each reading is handled alone."""
    batches = {}
    for linger in (200.0, 0.0):
        cfg = build_config({"agent": {"state_dir": str(tmp_path / f"state-{linger}")},
                            "model": {"bundle": str(trained_small[0])},
                            "source": {"type": "simulator", "devices": 1, "readings": 80, "rate": 40.0, "seed": 4},
                            "scoring": {"linger_ms": linger}, "uplink": {"type": "none"},
                            "log": {"level": "warning"}}, environ={})
        agent = Agent(cfg)
        agent.start()
        wait_for(lambda a=agent: a.pump.done.is_set() and a._processed == a.pump.emitted, 20, "80 readings")
        assert agent.outbox.stats().readings == 80
        batches[linger] = len(agent.metrics.batch_ms)
        agent.stop(flush_timeout=0)
    assert batches[200.0] <= 16 and batches[0.0] >= 60, batches
