"""Property tests over every parser that takes outside data: it returns, or raises its own error type.

Readings (the agent's intake), telemetry (the hub's decoder and bronze lines), twin patches (the hub's
store), method and control payloads (contracts.jsonsafe), rollout specs, manifests and agent config.
No input may raise anything else (a RecursionError, OverflowError, UnicodeDecodeError… is a thread
killed in production).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import ContractError
from contracts.jsonsafe import loads
from contracts.manifest import ModelManifest
from contracts.telemetry import decode_payload

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)


def deep(n: int, leaf: Any = 1) -> Any:
    v = leaf
    for _ in range(n):
        v = [v] if n % 2 else {"a": v}
    return v


def as_bytes(v: Any) -> bytes:
    try:
        return json.dumps(v).encode()  # NaN/Infinity literals included: outside data may carry them
    except (ValueError, RecursionError):
        return b"[]"


raw_inputs = st.one_of(st.binary(max_size=200), json_values.map(as_bytes),
                       st.integers(0, 3000).map(lambda n: as_bytes(deep(n)) if n < 900 else b"[" * n + b"]" * n))


@FAST
@given(raw_inputs)
def test_decoders_of_outside_bytes_raise_only_contract_errors(raw: bytes) -> None:
    for decode in (decode_payload, loads):
        with contextlib.suppress(ContractError):
            decode(raw)
    with contextlib.suppress(ContractError):
        ModelManifest.from_json(raw.decode("utf-8", "replace"))


reading_fields = st.fixed_dictionaries({}, optional={
    "device_id": st.one_of(st.text(max_size=12), scalars), "seq": st.one_of(st.integers(-5, 2**65), scalars),
    "ts": st.one_of(st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z",
                                     "yesterday"]), scalars),
    "values": st.one_of(st.dictionaries(st.sampled_from(["a", "b", "c"]), scalars, max_size=3), json_values),
    "v": scalars, "label": scalars})


@FAST
@given(st.lists(st.one_of(reading_fields.map(as_bytes), raw_inputs), max_size=12))
def test_the_intake_accounts_for_every_reading_and_never_raises(items: list[bytes]) -> None:
    from edge_agent.intake import Intake

    intake = Intake(required=("a", "b"))
    blocks, rejected = intake.parse(items)
    assert sum(len(b) for b, _ in blocks) + len(rejected) == len(items)
    assert all(r.reason for r in rejected)


@FAST
@given(reading_fields)
def test_the_intake_and_the_contract_accept_and_refuse_the_same_readings(obj: dict[str, Any]) -> None:
    """One decoder: a reading the agent would store is one Reading.from_dict accepts, and the reverse
    (before this, the intake had its own copy and accepted "v": 99 and "label": 7)."""
    from contracts.reading import Reading
    from edge_agent.intake import Intake

    intake = Intake(required=(), min_value=-math.inf, max_value=math.inf)
    blocks, rejected = intake.parse([obj])
    try:
        Reading.from_dict(obj)
    except ContractError:
        assert rejected and not blocks, obj
    else:
        assert blocks and not rejected, (obj, rejected)


@FAST
@given(raw_inputs, st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3))
def test_every_bronze_line_is_strict_json(tmp_path_factory: Any, raw: bytes, props: dict[str, str]) -> None:
    from hub.bronze import BronzeFormat, BronzeWriter, Landed

    for fmt in BronzeFormat:
        root: Path = tmp_path_factory.mktemp("bronze")
        w = BronzeWriter(root, fmt, tags=lambda d: {"device_type": "pump"})
        w.write([Landed("dev-1", props, raw, time.time())])
        w.close()
        for f in root.rglob("*.jsonl"):
            for line in f.read_text().splitlines():
                json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


@FAST
@given(json_values)
def test_twin_patches_are_stored_or_refused_with_a_contract_error(tmp_path_factory: Any, patch: Any) -> None:
    from hub.twins import TwinStore

    store = TwinStore(tmp_path_factory.mktemp("twins"))
    try:
        twin = store.update("dev-1", "reported", patch)
    except ContractError:
        assert store.get("dev-1")["reported"] == {"$version": 1}, "a refused patch changes nothing"
    else:
        assert json.loads(json.dumps(twin, allow_nan=False)) == store.get("dev-1")


@FAST
@given(json_values)
def test_rollout_specs_are_parsed_or_refused_with_a_rollout_error(spec: Any) -> None:
    from edge_agent.rollout import RolloutError, parse_spec

    try:
        version, _url, sha = parse_spec(spec)
    except RolloutError:
        return
    assert type(version) is int and 1 <= version < 2**31 and len(sha) == 64


@FAST
@given(st.dictionaries(st.sampled_from(["agent", "model", "source", "scoring", "uplink", "outbox", "log", "x"]),
                       st.one_of(st.dictionaries(st.sampled_from(["type", "port", "max_bytes", "rate",
                                                                  "batch_size", "level", "bundle", "devices",
                                                                  "rate_messages_per_s", "state_dir", "zz"]),
                                                 scalars, max_size=4), scalars), max_size=5))
def test_config_is_built_or_refused_with_a_config_error(cfg: dict[str, Any]) -> None:
    from edge_agent.config import build_config
    from edge_agent.errors import ConfigError

    with contextlib.suppress(ConfigError):
        build_config(cfg, environ={})


event_fields = st.fixed_dictionaries({"v": st.just(1), "type": st.just("anomaly_event")}, optional={
    "device_id": st.one_of(st.just("dev-1"), scalars), "boot_id": st.one_of(st.just("b"), scalars),
    "model": st.one_of(st.just({"name": "m", "version": 1, "sha256": "a", "feature_hash": "b", "threshold": 0.5}),
                       json_values),
    "events": st.lists(st.fixed_dictionaries({}, optional={
        k: st.one_of(st.integers(-5, 2**65), scalars) for k in
        ("event_id", "kind", "opened_seq", "opened_ts", "last_seq", "last_ts", "alarms", "peak_score", "threshold")}),
        max_size=3)})


@FAST
@given(st.one_of(event_fields, json_values))
def test_event_messages_are_parsed_or_refused_with_a_contract_error(obj: Any) -> None:
    from contracts.events import event_message

    with contextlib.suppress(ContractError):
        m = event_message(obj)
        assert m.events and all(e.kind in ("open", "update", "close") and e.last_seq >= e.opened_seq
                                for e in m.events)
