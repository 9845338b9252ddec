from __future__ import annotations

import json

import numpy as np

from contracts.block import ReadingBlock
from edge_agent.intake import Intake, StreamState

REQ = ("a", "b")


def reading(seq: int, device: str = "d1", **values: object) -> str:
    vals = {"a": 1.0, "b": 2.0, **values}
    return json.dumps({"device_id": device, "ts": "2026-01-01T00:00:00Z", "seq": seq, "values": vals})


def test_valid_readings_become_blocks_per_device_with_a_stable_boot_id() -> None:
    intake = Intake(required=REQ)
    blocks, rejected = intake.parse([reading(0), reading(1), reading(0, "d2"), reading(2)])
    assert rejected == []
    by_dev = {b.device_id: (b, boot) for b, boot in blocks}
    assert by_dev["d1"][0].seq.tolist() == [0, 1, 2]
    assert by_dev["d1"][1] == intake.streams["d1"].boot_id
    assert intake.streams["d1"].last_seq == 2


def test_every_reason_is_detected() -> None:
    intake = Intake(required=REQ, min_value=-100, max_value=100)
    items = [
        "{oops", "[]", json.dumps({"device_id": "d1", "seq": 1}),
        reading(1, a=float("nan")), reading(2, b="x"), reading(3, a=1000.0),
        json.dumps({"device_id": "d1", "ts": "2026-01-01T00:00:00Z", "seq": 4, "values": {"a": 1.0}}),
        reading(5), reading(5), reading(4),
        json.dumps({"device_id": "d1", "ts": "2026-01-01T00:00:00Z", "seq": -1, "values": {"a": 1, "b": 2}}),
        reading(6, a=True),
    ]
    blocks, rejected = intake.parse(items)
    reasons = [r.reason for r in rejected]
    assert sorted(reasons) == sorted(["malformed"] * 3 + ["non_finite", "wrong_type", "out_of_range",
                                                         "missing_channel", "duplicate", "duplicate",
                                                         "wrong_type", "wrong_type"])
    assert [b.seq.tolist() for b, _ in blocks] == [[5]]


def test_a_device_restart_opens_a_new_boot_id_and_splits_the_block() -> None:
    intake = Intake(required=REQ, streams={"d1": StreamState("old", 41)})
    blocks, rejected = intake.parse([reading(42), reading(43), reading(0), reading(1)])
    assert rejected == []
    assert [(b.seq.tolist(), boot == "old") for b, boot in blocks] == [([42, 43], True), ([0, 1], False)]


def test_simulator_blocks_are_checked_vectorised() -> None:
    intake = Intake(required=REQ, streams={"d1": StreamState("b", 1)})
    vals = np.array([[1.0, 2.0], [np.nan, 1.0], [1.0, 2e10], [3.0, 4.0], [5.0, 6.0]])
    block = ReadingBlock(device_id="d1", channels=("a", "b"), ts=np.full(5, 1.8e9), seq=np.array([1, 2, 3, 4, 5]),
                         values=vals)
    out, rejected = intake.check_blocks([block])
    assert sorted(r.reason for r in rejected) == ["duplicate", "non_finite", "out_of_range"]
    assert out[0][0].seq.tolist() == [4, 5]


def test_odd_json_is_quarantined_with_the_right_reason() -> None:
    intake = Intake(required=REQ, min_value=-100, max_value=100)
    base = {"ts": "2026-01-01T00:00:00Z", "values": {"a": 1.0, "b": 2.0}}
    items = [
        json.dumps({**base, "device_id": ["d1"], "seq": 1}),  # unhashable id
        json.dumps({**base, "device_id": "bad id!", "seq": 2}),
        json.dumps({**base, "device_id": "bad id!", "seq": 3}),  # a bad id stays bad the second time
        '{"device_id":"d1","ts":"2026-01-01T00:00:00Z","seq":4,"values":{"a":Infinity,"b":1}}',
        '{"device_id":"d1","ts":"2026-01-01T00:00:00Z","seq":5,"values":{"a":1e999,"b":1}}',
        json.dumps({**base, "device_id": "d1", "seq": 6, "values": {"a": 10**400, "b": 1}}),
        json.dumps({**base, "device_id": "d1", "seq": 7, "values": {"a": np.float64(3.5).item(), "b": 7}}),
    ]
    blocks, rejected = intake.parse(items)
    assert [r.reason for r in rejected] == ["malformed", "malformed", "malformed", "non_finite", "non_finite",
                                            "out_of_range"]
    assert [(b.seq.tolist(), b.values.tolist()) for b, _ in blocks] == [([7], [[3.5, 7.0]])]
    blocks, rejected = Intake(required=REQ).parse([{"device_id": "d9", "ts": "2026-01-01T00:00:00Z", "seq": 0,
                                                    "values": {"a": np.float32(1.5), "b": np.int64(2)}}])
    assert rejected == [] and blocks[0][0].values.tolist() == [[1.5, 2.0]]


def test_hostile_seq_times_and_channel_sets_are_quarantined_and_never_poison_the_stream() -> None:
    """Regression: seq = 2**63 raised OverflowError out of parse (the agent crash-looped on it)."""
    intake = Intake(required=REQ)
    base = {"device_id": "d1", "values": {"a": 1.0, "b": 2.0}}
    items = [
        reading(1),
        json.dumps({**base, "ts": "2026-01-01T00:00:00Z", "seq": 2**63}),
        json.dumps({**base, "ts": "2026-01-01T00:00:00Z", "seq": 10**30}),  # JSON decoders read it as a float
        json.dumps({**base, "ts": "0001-01-01T00:00:00Z", "seq": 2}),
        json.dumps({**base, "ts": "0001-01-01T00:00:00+01:00", "seq": 3}),  # overflows on conversion to UTC
        json.dumps({**base, "ts": "9999-12-31T23:59:59Z", "seq": 4}),
        reading(5, c=3.0),  # a channel this device does not send
        reading(6),
    ]
    blocks, rejected = intake.parse(items)
    assert sorted(r.reason for r in rejected) == sorted(["out_of_range", "wrong_type", "bad_timestamp",
                                                        "malformed", "bad_timestamp", "channel_mismatch"])
    assert [b.seq.tolist() for b, _ in blocks] == [[1, 6]]
    assert intake.streams["d1"].last_seq == 6, "a refused seq never moves the stream state"
    blocks, rejected = intake.parse([reading(7), reading(0, c=3.0), reading(1, c=3.0)])
    assert rejected == [] and [b.seq.tolist() for b, _ in blocks] == [[7], [0, 1]], \
        "a device may change its channels when it restarts"
    vec = ReadingBlock(device_id="d2", channels=("a", "b"), ts=np.array([1.8e9, -6.2e10, 2.6e11, 1.8e9]),
                       seq=np.array([1, 2, 3, 4]), values=np.ones((4, 2)))
    out, rejected = intake.check_blocks([vec])
    assert [r.reason for r in rejected] == ["bad_timestamp", "bad_timestamp"]
    assert out[0][0].seq.tolist() == [1, 4]


def test_the_intake_refuses_what_the_reading_contract_refuses() -> None:
    """Regression: the intake's fast path accepted `"v": 99` and `"label": 7`, which Reading.from_dict refuses."""
    from contracts.errors import ContractError
    from contracts.reading import Reading

    def with_(seq: int, **extra: object) -> str:
        return json.dumps({**json.loads(reading(seq)), **extra})

    odd = [with_(1, v=99), with_(2, label=7), with_(3, label="1"), with_(4, v="1")]
    for item in odd:
        try:
            Reading.from_dict(json.loads(item))
            raise AssertionError(f"the contract accepts {item}")
        except ContractError:
            pass
    blocks, rejected = Intake(required=REQ).parse([*odd, with_(5, v=1, label=1), with_(6, label=None)])
    assert sorted(r.reason for r in rejected) == ["malformed", "malformed", "wrong_type", "wrong_type"]
    assert [b.seq.tolist() for b, _ in blocks] == [[5, 6]]
