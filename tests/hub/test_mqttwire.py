"""The front end's MQTT wire code: round trips, and garbage is rejected rather than crashing."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub import mqttwire as w

topics = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                 max_size=60)


def read(data: bytes) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await w.read_packet(r)

    return asyncio.run(go())


@settings(max_examples=60, deadline=None)
@given(client_id=st.text(max_size=30), user=st.one_of(st.none(), st.text(max_size=40)),
       password=st.one_of(st.none(), st.binary(max_size=80)), keepalive=st.integers(0, 65535),
       clean=st.booleans())
def test_connect_round_trips(client_id: str, user: str | None, password: bytes | None, keepalive: int,
                             clean: bool) -> None:
    c = w.Connect(client_id, user, password, keepalive, clean, None)
    first, body = read(c.encode())
    assert first >> 4 == w.CONNECT
    assert w.Connect.parse(body) == c


@settings(max_examples=60, deadline=None)
@given(topic=topics, payload=st.binary(max_size=300), qos=st.sampled_from([0, 1]))
def test_publish_rewrite_keeps_the_rest_of_the_packet(topic: str, payload: bytes, qos: int) -> None:
    body = w._enc(topic) + (b"\x00\x07" if qos else b"") + payload
    packet = w.rewrite_publish((w.PUBLISH << 4) | (qos << 1), body, lambda t: "x/" + t)
    assert packet is not None
    _first, new_body = read(packet)
    assert w.publish_topic(new_body) == "x/" + topic
    assert new_body.endswith((b"\x00\x07" if qos else b"") + payload)
    assert w.rewrite_publish(w.PUBLISH << 4, body, lambda t: None) is None


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_garbage_raises_wire_errors_not_anything_else(data: bytes) -> None:
    try:
        first, body = read(data)
        if first >> 4 == w.CONNECT:
            w.Connect.parse(body)
        elif first >> 4 == w.SUBSCRIBE:
            w.rewrite_filters(first, body, lambda t: t, with_qos=True)
    except (asyncio.IncompleteReadError, w.WireError, UnicodeDecodeError, IndexError):
        pass


def test_oversized_packets_are_refused_before_reading_them() -> None:
    with pytest.raises(w.WireError, match="limit"):
        read(bytes([w.PUBLISH << 4]) + w.encode_length(w.MAX_PACKET + 1))


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(max_size=60))
def test_connects_with_a_valid_prefix_and_garbage_after_it_raise_wire_errors(tail: bytes) -> None:
    body = w._enc("MQTT") + bytes([4]) + tail
    with contextlib.suppress(w.WireError):
        w.Connect.parse(body)
