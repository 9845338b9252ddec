"""The one parser: every envelope gives the same rows; hostile input is quarantined with a reason."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from cloud_jobs.fleet.parse import Envelope, parse_records, unpack_batches
from simulators import Fleet, FleetConfig
from simulators.telemetry import oracle_messages


def message(seq0: int = 0, n: int = 3) -> dict[str, Any]:
    blocks = Fleet(FleetConfig(devices=1, seed=1)).generate(seq0 + n)
    msgs = list(oracle_messages(blocks.values(), per_message=seq0 + n))
    m = msgs[0]
    m["readings"] = m["readings"][seq0:]
    m["seq_first"], m["seq_last"] = m["readings"][0]["seq"], m["readings"][-1]["seq"]
    return m


def bronze_line(body: Any = None, *, raw: bytes | None = None, device: str = "dev-0001") -> bytes:
    rec: dict[str, Any] = {"received_at": "2026-01-01T00:00:01.000+00:00", "topic_device": device,
                           "properties": {"device_type": "pump"}, "content_encoding": "utf-8"}
    if raw is None:
        rec["body"] = body
    else:
        rec["body_base64"], rec["error"] = base64.b64encode(raw).decode(), "payload is not JSON"
    return json.dumps(rec).encode()


def iothub_line(body: Any, *, b64: bool = False) -> bytes:
    rec = {"EnqueuedTimeUtc": "2026-01-01T00:00:01.1234567Z", "Properties": {"device_type": "pump"},
           "SystemProperties": {"connectionDeviceId": "dev-0001", "contentType": "application/json",
                                "contentEncoding": "gzip" if b64 else "utf-8"},
           "Body": base64.b64encode(gzip.compress(json.dumps(body).encode())).decode() if b64 else body}
    return json.dumps(rec).encode()


def rows(envelope: Envelope, *raws: bytes, source: str | None = None, received: int | None = None,
         props: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The parser's message rows, exploded to one row per reading as the Spark job does."""
    out = []
    batch = parse_records(envelope, [(r, source, received, props) for r in raws])
    for msg in next(unpack_batches(iter([batch]))).to_pylist():
        arrays = {k: msg.pop(k) for k in ("seq", "ts_ms", "score", "anomaly", "values")}
        n = len(arrays["seq"])
        out += [{**msg, **{k: v[i] for k, v in arrays.items()}} for i in range(n)] or [{**msg, **arrays}]
    return out


def test_every_envelope_gives_the_same_readings() -> None:
    m = message()
    got = {
        "bronze": rows(Envelope.BRONZE, bronze_line(m)),
        "iothub json": rows(Envelope.IOTHUB, iothub_line(m)),
        "iothub gzip": rows(Envelope.IOTHUB, iothub_line(m, b64=True)),
        "raw (event hubs)": rows(Envelope.RAW, gzip.compress(json.dumps(m).encode()), source="dev-0001",
                                 received=1767225601000, props={"device_type": "pump"}),
    }
    keys = ("device_id", "source_device", "device_type", "boot_id", "seq", "ts_ms", "score", "anomaly", "channels",
            "values", "model_name", "model_version")
    want = [{k: r[k] for k in keys} for r in got["bronze"]]
    assert len(want) == 3 and all(r["status"] == "ok" and r["device_type"] == "pump" for r in got["bronze"])
    assert [r["values"] for r in want] == [r["values"] for r in m["readings"]]
    for name, rs in got.items():
        assert [{k: r[k] for k in keys} for r in rs] == want, name
        assert all(r["received_ms"] in (1767225601000, 1767225601123) for r in rs), name


def deep(n: int) -> bytes:
    return b'{"v": 1, "x": ' + b"[" * n + b"]" * n + b"}"


@pytest.mark.parametrize(("raw", "reason"), [
    (bronze_line(raw=b"\x00not json"), "landed undecodable"),
    (bronze_line({**message(), "v": 2}), "unsupported telemetry schema"),
    (bronze_line(message(), device=""), "identity"),
    (bronze_line({**message(), "readings": [{**message()["readings"][0], "seq": 2**63}],
                  "seq_first": 2**63, "seq_last": 2**63}), "readings[0].seq"),
    (bronze_line({**message(), "readings": [{**message()["readings"][0], "ts": 253_402_300_800_000}],
                  "seq_first": 0, "seq_last": 0}), "readings[0].ts"),
    (bronze_line({**message(), "readings": [{**message()["readings"][0], "anomaly": 1}],
                  "seq_first": 0, "seq_last": 0}), "anomaly"),
    (bronze_line({**message(), "seq_last": 99}), "seq range"),
    (b'{"received_at": "x", "topic_device": "d", "body": {"v": 1, "readings": [{"values": [NaN]}]}}', "not JSON"),
    (b"\xff\xfe not utf-8", "not JSON"),
    (deep(5000), "not JSON"),
])
def test_hostile_or_invalid_input_is_quarantined_with_its_reason(raw: bytes, reason: str) -> None:
    [r] = rows(Envelope.BRONZE, raw)
    assert r["status"] == "quarantined" and reason in r["reason"], r["reason"]
    assert r["raw"] and (r["raw"].startswith("base64:") or r["raw"] == raw.decode())


def test_a_quarantined_message_keeps_the_sender_and_receive_time_its_envelope_gave() -> None:
    """The hub authenticated the sender and stamped the receive time: a bad body does not erase them (the
    job's watermark reads that time; without it, a message has no time at all, never the job's clock)."""
    iothub_bad = json.dumps({"EnqueuedTimeUtc": "2026-01-01T00:00:01Z",
                             "SystemProperties": {"connectionDeviceId": "dev-0001"}, "Body": "%%%"}).encode()
    for env, raw in ((Envelope.BRONZE, bronze_line(raw=b"\x00not json")),
                     (Envelope.BRONZE, bronze_line({**message(), "v": 2})),
                     (Envelope.IOTHUB, iothub_line({**message(), "seq_last": 99})),
                     (Envelope.IOTHUB, iothub_bad)):
        [r] = rows(env, raw)
        assert r["status"] == "quarantined" and r["source_device"] == "dev-0001", (env, r["reason"])
        assert r["received_ms"] in (1767225601000, 1767225601123), (env, r["reason"])
    for env, line in ((Envelope.BRONZE, {"received_at": "yesterday", "topic_device": "dev-0001", "body": message()}),
                      (Envelope.IOTHUB, {"SystemProperties": {"connectionDeviceId": "dev-0001"}, "Body": message()})):
        [r] = rows(env, json.dumps(line).encode())
        assert r["status"] == "quarantined" and "receive time" in r["reason"], (env, r["reason"])
        assert r["source_device"] == "dev-0001" and r["received_ms"] is None, env
    [torn] = rows(Envelope.BRONZE, b'{"received_at": "2026-01-01T00:0')
    assert torn["status"] == "quarantined" and torn["source_device"] is None and torn["received_ms"] is None
    [raw] = rows(Envelope.RAW, b"{", source="dev-0002", received=5)
    assert (raw["source_device"], raw["received_ms"]) == ("dev-0002", 5)


def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]")
    assert len(bomb) < 100_000
    [r] = rows(Envelope.IOTHUB, json.dumps({"EnqueuedTimeUtc": "2026-01-01T00:00:00Z",
                                            "SystemProperties": {"connectionDeviceId": "d"},
                                            "Body": base64.b64encode(bomb).decode()}).encode())
    assert r["status"] == "quarantined" and "inflates past" in r["reason"]


def test_a_bad_message_among_good_ones_costs_only_itself() -> None:
    good = bronze_line(message())
    rs = rows(Envelope.BRONZE, good, b"{", good)
    assert [r["status"] for r in rs] == ["ok"] * 3 + ["quarantined"] + ["ok"] * 3


def event_body(**change: Any) -> dict[str, Any]:
    ev = {"event_id": "dev-0001:b1:100", "kind": "open", "opened_seq": 100, "opened_ts": 1767225700000,
          "last_seq": 100, "last_ts": 1767225700000, "alarms": 1, "peak_score": 0.9, "threshold": 0.6}
    m = message()
    return {"v": 1, "type": "anomaly_event", "device_id": "dev-0001", "boot_id": "b1", "model": m["model"],
            "events": [ev, {**ev, "kind": "close", "last_seq": 140, "last_ts": 1767225740000, "alarms": 31},
                       *change.pop("extra", [])], "readings": [], **change}


def test_anomaly_event_messages_become_one_event_row_per_event_on_every_envelope() -> None:
    body = event_body()
    for env, raw in ((Envelope.BRONZE, bronze_line(body)), (Envelope.IOTHUB, iothub_line(body, b64=True))):
        got = rows(env, raw)
        assert [(r["status"], r["reason"], r["device_id"], r["source_device"], r["device_type"]) for r in got] == [
            ("event", "open", "dev-0001", "dev-0001", "pump"), ("event", "close", "dev-0001", "dev-0001", "pump")]
        assert all(r["seq"] == [] for r in got), "an event carries no reading"
        assert got[1]["last_ms"] == 1767225740000 and json.loads(got[1]["raw"])["alarms"] == 31
        assert json.loads(got[0]["raw"])["boot_id"] == "b1"
    bad = rows(Envelope.BRONZE, bronze_line(event_body(extra=[{"kind": "bogus"}])))
    assert [r["status"] for r in bad] == ["quarantined"] and "events[2]" in bad[0]["reason"]
    late = event_body()
    late["events"][1]["last_seq"] = 50
    assert "cannot end before it opened" in rows(Envelope.BRONZE, bronze_line(late))[0]["reason"]
