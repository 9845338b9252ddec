"""Fault tests against a real Mosquitto: every reading counted end to end by its dedup key.

(a) broker stopped mid-stream and restarted; (b) agent SIGKILLed mid-stream and restarted;
(c) an outage longer than the outbox can hold; (d) malformed input mixed into a valid stream.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from broker import Broker
from helpers import ROOT, Collector, agent_config, expected_keys, wait_for, write_toml

from edge_agent.agent import Agent
from edge_agent.config import build_config
from edge_agent.logs import JsonFormatter
from edge_agent.outbox import SqliteOutbox

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def pbroker(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A broker that keeps sessions and queued messages across restarts (so the collector misses nothing)."""
    b = Broker(tmp_path, persistence=True)
    b.start()
    yield b
    b.stop()


def test_a_broker_outage_mid_stream_loses_nothing(tmp_path: Path, pbroker: Broker, trained_small) -> None:  # type: ignore[no-untyped-def]
    collector = Collector(pbroker.port, tmp_path)
    cfg = build_config(agent_config(tmp_path / "state", trained_small[0], pbroker.port,
                                    source={"rate": 3000.0, "readings": 3000}), environ={})
    agent = Agent(cfg)
    agent.start()
    wait_for(lambda: agent.metrics.snapshot()["sent"] > 1000, 20, "first deliveries")
    pbroker.stop()
    time.sleep(1.5)
    assert not agent.sink.connected
    in_outage = agent.metrics.snapshot()["readings_in"]
    pbroker.start()
    wait_for(agent.drained, 60, "the backlog to drain")
    streams = agent.outbox.streams()
    snap = agent.metrics.snapshot()
    agent.stop()
    got = collector.finish()
    want = expected_keys(streams, 3, 3000)
    print(f"(a) produced {snap['readings_in']}, delivered {len(got['unique'])}, duplicates {got['duplicates']}, "
          f"uplink errors {snap['uplink_errors']}, readings in before restart {in_outage}")
    assert snap["readings_in"] == 9000
    assert got["unique"] == want, f"lost {len(want - got['unique'])}"
    assert snap["uplink_errors"] >= 1
    assert snap["dropped"] == {} and snap["quarantined"] == {}


@pytest.mark.parametrize(("rate", "max_inflight", "devices", "readings", "dup_bound"),
                         [(0.0, 32, 3, 4000, 32 * 40), (150.0, 256, 100, 300, 300)])
def test_a_sigkilled_agent_restarts_without_losing_a_reading(tmp_path: Path, broker: Broker, trained_small,  # type: ignore[no-untyped-def]
                                                             rate: float, max_inflight: int, devices: int,
                                                             readings: int, dup_bound: int) -> None:
    """With a rate limit too (regression: confirmed rows were deleted only between token-bucket bursts, so a
    kill re-sent thousands of delivered readings)."""
    collector = Collector(broker.port, tmp_path)
    cfg = agent_config(tmp_path / "state", trained_small[0], broker.port,
                       source={"rate": 3000.0, "readings": readings, "devices": devices},
                       scoring={"batch_size": 64}, uplink={"max_inflight": max_inflight, "rate_messages_per_s": rate})
    toml = write_toml(tmp_path / "agent.toml", cfg)
    cmd = [sys.executable, "-m", "edgeflag", "agent", "run", "--config", str(toml)]
    first = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
    time.sleep(2.5)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL
    db = SqliteOutbox(tmp_path / "state" / "outbox.db", 1 << 30)
    stored_before = sum(s for _, s in db.streams().values())
    db.close()
    assert stored_before > 1000, "the kill should land mid-stream"
    assert stored_before < devices * readings - 1000, "the kill should land mid-stream"
    second = subprocess.run([*cmd, "--exit-when-drained"], cwd=ROOT, stderr=subprocess.PIPE, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    db = SqliteOutbox(tmp_path / "state" / "outbox.db", 1 << 30)
    streams = db.streams()
    assert db.stats().segments == 0
    db.close()
    got = collector.finish()
    want = expected_keys(streams, devices, readings)
    print(f"(b) rate {rate:g}/s: stored {stored_before} before SIGKILL; delivered {len(got['unique'])} of "
          f"{len(want)}, duplicates {got['duplicates']} (bound: {max_inflight} in-flight messages)")
    assert got["unique"] == want, f"lost {len(want - got['unique'])}"
    # duplicates only for messages in flight at the kill (or confirmed in the last ~20 ms before it)
    assert got["duplicates"] <= dup_bound


def test_an_outage_longer_than_the_outbox_evicts_normal_readings_first_and_counts_them(
        tmp_path: Path, trained_small, pbroker: Broker) -> None:  # type: ignore[no-untyped-def]
    b = pbroker
    collector = Collector(b.port, tmp_path)
    b.stop()  # the uplink is down for the whole stream
    cap = 1024 * 1024
    cfg = build_config(agent_config(tmp_path / "state", trained_small[0], b.port,
                                    source={"readings": 4000, "anomaly_rate": 0.01},
                                    outbox={"max_bytes": cap}), environ={})
    agent = Agent(cfg)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(JsonFormatter())
    agent.log.addHandler(handler)
    agent.start()
    wait_for(lambda: agent.metrics.snapshot()["readings_in"] == 12000, 60, "the stream to be read")
    wait_for(lambda: agent.pump.queue.empty(), 10, "ingest")
    held = agent.outbox.stats()
    assert held.bytes <= cap
    snap = agent.metrics.snapshot()
    flagged = snap["flagged"]
    events = snap["anomaly_events"]  # one alert per event: fewer than the flagged readings
    assert 0 < events["open"] < flagged and events.get("close", 0) <= events["open"]
    b.start()
    wait_for(agent.drained, 60, "the outbox to drain")
    snap = agent.metrics.snapshot()
    persisted = agent.outbox.drops()
    agent.stop()
    got = collector.finish()
    dropped = snap["dropped"]
    delivered = len(got["unique"])
    print(f"(c) produced 12000, flagged {flagged}, delivered {delivered} ({len(got['anomalous'])} anomalous), "
          f"dropped {dropped}, outbox held {held.bytes} bytes of {cap}")
    assert dropped.get("outbox_full_normal", 0) > 0
    assert dropped.get("outbox_full_anomaly", 0) == 0
    assert len(got["anomalous"]) == flagged, "every anomaly survives while normal readings can be evicted"
    assert delivered + sum(dropped.values()) == 12000, "every reading is delivered or counted as dropped"
    assert persisted == dropped
    agent.log.removeHandler(handler)
    lines = [json.loads(x) for x in log.getvalue().splitlines() if "outbox full" in x]
    assert 1 <= len(lines) <= 3, "evictions are summarised, not logged per micro-batch"
    assert sum(x["counts"].get("outbox_full_normal", 0) for x in lines) == dropped["outbox_full_normal"]
    # oldest normal readings go first: what was delivered of each device is its newest normal readings
    by_dev: dict[str, list[int]] = {}
    for dev, _boot, seq in got["unique"] - got["anomalous"]:
        by_dev.setdefault(dev, []).append(seq)
    for dev, seqs in by_dev.items():
        assert max(seqs) == 3999 or max(seqs) >= 3990, dev


def test_malformed_input_is_quarantined_by_reason_and_the_rest_delivered(tmp_path: Path, broker: Broker,
                                                                        trained_small) -> None:  # type: ignore[no-untyped-def]
    from simulators import Fleet, FleetConfig
    from simulators.writers import JsonlWriter

    good = tmp_path / "good.jsonl"
    with good.open("w") as fh:
        JsonlWriter(fh).write(list(Fleet(FleetConfig(devices=2, seed=8)).generate(600).values()))
    lines = good.read_text().splitlines()
    ok = json.loads(lines[10])
    bad = {
        "malformed": ["{not json", "[1, 2, 3]", '"just a string"',
                      json.dumps({k: v for k, v in ok.items() if k != "seq"}),
                      json.dumps({**ok, "ts": "yesterday"})],
        "non_finite": [json.dumps({**ok, "seq": 100000, "values": {**ok["values"], "pressure": float("nan")}}),
                       json.dumps({**ok, "seq": 100001, "values": {**ok["values"], "current": float("inf")}})],
        "wrong_type": [json.dumps({**ok, "seq": 100002, "values": {**ok["values"], "pressure": "high"}}),
                       json.dumps({**ok, "seq": "7"})],
        "out_of_range": [json.dumps({**ok, "seq": 100003, "values": {**ok["values"], "temperature": 1e12}}),
                         json.dumps({**ok, "seq": 2**63})],  # used to crash-loop the agent (OverflowError)
        "bad_timestamp": [json.dumps({**ok, "seq": 100005, "ts": "0001-01-01T00:00:00Z"}),
                          json.dumps({**ok, "seq": 100006, "ts": "9999-12-31T23:59:59.999Z"})],
        "missing_channel": [json.dumps({**ok, "seq": 100004, "values": {"temperature": 1.0}})],
        "channel_mismatch": [json.dumps({**ok, "seq": 100007, "values": {**ok["values"], "humidity": 40.0}})],
    }
    mixed = []
    for i, line in enumerate(lines):
        mixed.append(line)
        if i % 97 == 0 and i:
            mixed.append(lines[i - 5])  # a duplicate of an earlier reading
    dups = len(mixed) - len(lines)
    for reason, items in bad.items():
        for j, item in enumerate(items):
            mixed.insert(50 + 113 * j + 7 * len(reason), item)
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(mixed) + "\n")
    collector = Collector(broker.port, tmp_path)
    cfg = build_config(agent_config(tmp_path / "state", trained_small[0], broker.port,
                                    source={"type": "jsonl", "path": str(data)}), environ={})
    agent = Agent(cfg)
    agent.start()
    wait_for(agent.drained, 60, "the file to be delivered")
    snap = agent.metrics.snapshot()
    agent.stop()
    got = collector.finish()
    want = {k: len(v) for k, v in bad.items()} | {"duplicate": dups}
    print(f"(d) {len(mixed)} lines: delivered {len(got['unique'])}, quarantined {snap['quarantined']}")
    assert snap["quarantined"] == want
    assert len(got["unique"]) == len(lines) == 1200
    quarantine = (tmp_path / "state" / "quarantine.jsonl").read_text().splitlines()
    assert len(quarantine) == sum(want.values())
    assert {json.loads(q)["reason"] for q in quarantine} == set(want)


def test_sigterm_flushes_and_exits_cleanly(tmp_path: Path, broker: Broker, trained_small) -> None:  # type: ignore[no-untyped-def]
    collector = Collector(broker.port, tmp_path)
    cfg = agent_config(tmp_path / "state", trained_small[0], broker.port, source={"rate": 2000.0, "readings": 0},
                       log={"level": "info"})
    toml = write_toml(tmp_path / "agent.toml", cfg)
    p = subprocess.Popen([sys.executable, "-m", "edgeflag", "agent", "run", "--config", str(toml)], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    os.kill(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err[-2000:]
    final = json.loads(err.strip().splitlines()[-1])
    assert final["msg"] == "agent stopped"
    got = collector.finish()
    assert final["readings_in"] == final["sent"] == len(got["unique"]) > 0
    assert final["outbox"]["readings"] == 0


def test_anomalies_go_first_and_the_normal_backlog_drains_in_order(tmp_path: Path, trained_small,  # type: ignore[no-untyped-def]
                                                                   pbroker: Broker) -> None:
    b = pbroker
    collector = Collector(b.port, tmp_path)
    b.stop()  # build a backlog while the uplink is down
    cfg = build_config(agent_config(tmp_path / "state", trained_small[0], b.port,
                                    source={"readings": 2000, "anomaly_rate": 0.01},
                                    uplink={"rate_messages_per_s": 40.0, "max_inflight": 4}), environ={})
    agent = Agent(cfg)
    agent.start()
    wait_for(lambda: agent.metrics.snapshot()["readings_in"] == 6000, 30, "the backlog")
    flagged = agent.metrics.snapshot()["flagged"]
    b.start()
    wait_for(agent.drained, 90, "the backlog to drain through the token bucket")
    agent.stop()
    got = collector.finish()
    keys = json.loads(collector.out.read_text())["keys"]
    first_normal = next(i for i, k in enumerate(keys) if not k[3])
    assert first_normal >= flagged, "every flagged reading arrives before any normal one"
    for dev in {k[0] for k in keys}:
        seqs = [k[2] for k in keys[first_normal:] if k[0] == dev and not k[3]]
        assert seqs == sorted(seqs), "the normal backlog drains in order"
    assert len(got["unique"]) == 6000


def test_a_gateways_backlog_goes_out_in_full_messages(tmp_path: Path, trained_small, pbroker: Broker) -> None:  # type: ignore[no-untyped-def]
    """40 devices, 2 readings each per micro-batch: every outbox row is small and its neighbours are
    other devices'. After an outage the backlog must still leave in ~4 KB messages per device."""
    b = pbroker
    collector = Collector(b.port, tmp_path)
    b.stop()
    cfg = build_config(agent_config(tmp_path / "state", trained_small[0], b.port,
                                    source={"devices": 40, "readings": 150}, scoring={"batch_size": 80}), environ={})
    agent = Agent(cfg)
    agent.start()
    wait_for(lambda: agent.metrics.snapshot()["readings_in"] == 6000, 30, "the backlog")
    rows = agent.outbox.stats().segments
    b.start()
    wait_for(agent.drained, 60, "the backlog to drain")
    agent.stop()
    got = collector.finish()
    print(f"(gateway) 6000 readings in {rows} outbox rows left in {got['messages']} messages")
    assert len(got["unique"]) == 6000 and got["duplicates"] == 0
    assert rows >= 3000, "the scenario should make one small row per device per batch"
    assert got["messages"] <= 6000 / 12, "a device's rows from many micro-batches share a message"
