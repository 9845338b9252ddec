from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
import pytest

from contracts import ContractError, Reading, ReadingBlock, format_ts, parse_ts

TS = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)


def reading(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"v": 1, "device_id": "dev-0001", "ts": "2026-01-01T12:00:00.123Z", "seq": 3,
                               "values": {"temperature": 55.0, "vibration": 2.5}}
    base.update(kw)
    return base


def test_a_reading_round_trips_through_its_json_form() -> None:
    r = Reading.from_dict(reading(label=1, fault="spike"))
    assert r.ts == TS
    assert Reading.from_dict(r.to_dict()) == r
    assert r.to_dict()["ts"] == "2026-01-01T12:00:00.123Z"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"device_id": ""}, "device_id"),
        ({"device_id": "dev/1"}, "device_id"),
        ({"seq": -1}, "seq"),
        ({"seq": True}, "seq"),
        ({"seq": 1.5}, "seq"),
        ({"ts": "yesterday"}, "ts"),
        ({"ts": "2026-01-01T12:00:00"}, "ts"),
        ({"values": {}}, "values"),
        ({"values": {"t": math.nan}}, "values.t"),
        ({"values": {"t": math.inf}}, "values.t"),
        ({"values": {"t": "hot"}}, "values.t"),
        ({"values": [1, 2]}, "values"),
        ({"label": 2}, "label"),
        ({"v": 2}, "v"),
    ],
)
def test_a_bad_reading_is_rejected_naming_the_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ContractError) as err:
        Reading.from_dict(reading(**patch))
    assert err.value.field == field


def test_missing_fields_are_named() -> None:
    obj = reading()
    del obj["seq"]
    with pytest.raises(ContractError, match="seq: missing"):
        Reading.from_dict(obj)


def test_timestamps_are_utc_and_offsets_are_converted() -> None:
    assert parse_ts("2026-01-01T13:00:00+01:00") == datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    with pytest.raises(ContractError):
        format_ts(datetime(2026, 1, 1))


def test_a_block_converts_to_readings_and_back() -> None:
    block = ReadingBlock(device_id="d1", channels=("a", "b"), ts=np.array([TS.timestamp(), TS.timestamp() + 1]),
                         seq=np.array([0, 1]), values=np.array([[1.0, 2.0], [3.0, 4.0]]),
                         labels=np.array([0, 1], dtype=np.int8), faults=["", "spike"])
    rs = block.to_readings()
    assert [r.seq for r in rs] == [0, 1]
    assert rs[1].fault == "spike" and rs[0].fault is None
    back = ReadingBlock.from_readings(rs)
    assert np.array_equal(back.values, block.values)
    assert np.array_equal(back.labels, block.labels)  # type: ignore[arg-type]
    assert back.ts.tolist() == block.ts.tolist()


def test_a_block_rejects_mismatched_shapes_and_mixed_devices() -> None:
    with pytest.raises(ContractError):
        ReadingBlock(device_id="d", channels=("a",), ts=np.zeros(2), seq=np.zeros(2), values=np.zeros((2, 2)))
    a = Reading.from_dict(reading())
    b = Reading.from_dict(reading(device_id="dev-0002"))
    with pytest.raises(ContractError, match="mixes devices"):
        ReadingBlock.from_readings([a, b])
