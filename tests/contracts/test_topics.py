"""The topic grammar is written once (contracts.topics) and every paho client is made once (contracts.mqtt)."""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from contracts.topics import (
    DEVICE_CONTROL_FILTERS,
    SERVICE_CONTROL_FILTERS,
    desired_patch_topic,
    method_request_topic,
    method_response_topic,
    parse_control_topic,
    reported_patch_topic,
    twin_get_topic,
    twin_response_topic,
)

ROOT = Path(__file__).resolve().parents[2]
rids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._:", min_size=1, max_size=64)


@given(rid=rids, status=st.integers(100, 599), version=st.integers(1, 2**31), name=st.from_regex(r"[a-z_]{1,20}",
                                                                                                    fullmatch=True))
def test_every_control_topic_parses_back_to_what_built_it(rid: str, status: int, version: int, name: str) -> None:
    assert parse_control_topic(twin_get_topic(rid))[:2] == ("twin_get", "")
    assert parse_control_topic(twin_get_topic(rid)).rid == rid
    assert parse_control_topic(reported_patch_topic(rid)).kind == "reported"
    t = parse_control_topic(twin_response_topic(status, rid, version))
    assert (t.kind, t.arg, t.rid, t.query["$version"]) == ("twin_res", str(status), rid, str(version))
    assert parse_control_topic(twin_response_topic(status, rid)).query == {"$rid": rid}
    d = parse_control_topic(desired_patch_topic(version))
    assert (d.kind, d.query) == ("desired", {"$version": str(version)})
    m = parse_control_topic(method_request_topic(name, rid))
    assert (m.kind, m.arg, m.rid) == ("method", name, rid)
    r = parse_control_topic(method_response_topic(status, rid))
    assert (r.kind, r.arg, r.rid) == ("method_res", str(status), rid)
    assert parse_control_topic("telemetry/whatever").kind == ""


def test_a_device_hears_what_the_service_says_and_the_service_hears_what_the_device_says() -> None:
    """Each side's subscriptions match every topic the other side builds (MQTT filter semantics)."""

    def matches(flt: str, topic: str) -> bool:
        pattern = "^" + re.escape(flt).replace(r"\#", ".*").replace(r"\+", "[^/]+") + "$"
        return re.match(pattern, topic) is not None

    to_device = [twin_response_topic(200, "r1"), desired_patch_topic(3), method_request_topic("flush", "r2")]
    to_service = [twin_get_topic("r1"), reported_patch_topic("r2"), method_response_topic(200, "r3")]
    assert all(any(matches(f, t) for f in DEVICE_CONTROL_FILTERS) for t in to_device)
    assert all(any(matches(f, t) for f in SERVICE_CONTROL_FILTERS) for t in to_service)
    assert not any(matches(f, t) for f in DEVICE_CONTROL_FILTERS for t in to_service)


def test_every_paho_client_in_the_product_is_made_by_make_client() -> None:
    """TLS, credentials and the paho 1.x/2.x difference are set up in one place (contracts/mqtt.py)."""
    offenders = []
    for package in ("edge_agent", "hub", "simulators", "edgeflag", "cloud_jobs", "models", "contracts"):
        for path in (ROOT / package).rglob("*.py"):
            if path.relative_to(ROOT).as_posix() == "contracts/mqtt.py":
                continue
            text = path.read_text()
            if re.search(r"\bmqtt\.Client\(|deferred_ack_client_class\(\)\(", text):
                offenders.append(path.relative_to(ROOT).as_posix())
            for topic in ("twin/res/", "methods/POST/", "twin/PATCH/properties/"):
                if re.search(rf'f?"[^"\n]*{re.escape(topic)}[^"\n]*"', text) and path.name != "topics.py":
                    offenders.append(f"{path.relative_to(ROOT).as_posix()} builds {topic!r} itself")
    assert not offenders, offenders
