from __future__ import annotations

import io
import json

import numpy as np
import pytest

from contracts import Reading
from simulators import ConfigError, FaultType, Fleet, FleetConfig
from simulators.writers import CsvWriter, JsonlWriter


def test_the_same_seed_gives_the_same_readings_and_labels() -> None:
    a = Fleet(FleetConfig(devices=3, seed=5)).generate(500)
    b = Fleet(FleetConfig(devices=3, seed=5)).generate(500)
    c = Fleet(FleetConfig(devices=3, seed=6)).generate(500)
    for dev in a:
        assert np.array_equal(a[dev].values, b[dev].values)
        assert list(a[dev].faults or []) == list(b[dev].faults or [])
    assert not np.array_equal(a["dev-0001"].values, c["dev-0001"].values)


@pytest.mark.parametrize("chunk", [1, 7, 600])
def test_output_does_not_depend_on_how_the_run_is_chunked(chunk: int) -> None:
    whole = Fleet(FleetConfig(devices=2, seed=9, anomaly_rate=0.02)).generate(700)
    fleet = Fleet(FleetConfig(devices=2, seed=9, anomaly_rate=0.02))
    parts: dict[str, list[np.ndarray]] = {"dev-0001": [], "dev-0002": []}
    for blocks in fleet.blocks(700, chunk=chunk):
        for b in blocks:
            parts[b.device_id].append(b.values)
    for dev, vals in parts.items():
        assert np.array_equal(np.vstack(vals), whole[dev].values)


def test_devices_differ_and_signals_look_like_their_channels() -> None:
    blocks = Fleet(FleetConfig(devices=4, seed=1, anomaly_rate=0.0)).generate(3600)
    means = np.array([b.values.mean(axis=0) for b in blocks.values()])
    assert np.ptp(means[:, 0]) > 0.5  # per-device temperature offsets
    temp = blocks["dev-0001"].values[:, 0]
    assert 30 < temp.mean() < 80 and 0.1 < np.diff(temp).std() < 1.0
    assert sum(int(b.labels.sum()) for b in blocks.values() if b.labels is not None) == 0


@pytest.mark.parametrize("kind", list(FaultType))
def test_each_fault_type_is_injected_and_labelled(kind: FaultType) -> None:
    clean = Fleet(FleetConfig(devices=2, seed=3, anomaly_rate=0.0)).generate(2000)
    faulty = Fleet(FleetConfig(devices=2, seed=3, anomaly_rate=0.01, faults=(kind,))).generate(2000)
    for dev, block in faulty.items():
        assert block.labels is not None and block.faults is not None
        lab = block.labels.astype(bool)
        assert lab.any(), "no fault injected"
        assert set(np.array(block.faults)[lab]) == {kind.value}
        changed = (block.values != clean[dev].values).any(axis=1)
        if kind is not FaultType.NOISE_BURST:  # burst noise can be ~0 on a reading
            assert np.array_equal(changed, lab), "labels must mark exactly the altered readings"
        else:
            assert not (changed & ~lab).any()
        if kind is FaultType.DROPOUT:
            assert (block.values[lab] == 0.0).any(axis=1).all()
        if kind is FaultType.STUCK:
            assert (np.diff(block.values[lab], axis=0) == 0).any(axis=1).any()


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(ConfigError) as err:
        FleetConfig(devices=0)
    assert err.value.key == "devices"
    with pytest.raises(ConfigError, match="known: spike"):
        FaultType.parse("spike,meteor")


def test_jsonl_output_follows_the_reading_contract_in_time_order() -> None:
    buf = io.StringIO()
    n = JsonlWriter(buf).write(list(Fleet(FleetConfig(devices=3, seed=2, anomaly_rate=0.05)).generate(50).values()))
    lines = buf.getvalue().splitlines()
    assert n == len(lines) == 150
    readings = [Reading.from_dict(json.loads(line)) for line in lines]
    ts = [r.ts for r in readings]
    assert ts == sorted(ts)
    assert {r.device_id for r in readings[:3]} == {"dev-0001", "dev-0002", "dev-0003"}
    assert all(r.label in (0, 1) for r in readings)
    assert any(r.fault for r in readings)


def test_csv_output_has_a_header_and_one_row_per_reading() -> None:
    buf = io.StringIO()
    cfg = FleetConfig(devices=2, seed=2)
    CsvWriter(buf, cfg.channel_names).write(list(Fleet(cfg).generate(10).values()))
    rows = buf.getvalue().splitlines()
    assert rows[0] == "device_id,ts,seq,temperature,vibration,pressure,current,label,fault"
    assert len(rows) == 21
