"""Just enough MQTT 3.1.1 wire format for the hub's front end: frame, parse CONNECT, rewrite topics.

Only the packets whose topics the front end rewrites are decoded (CONNECT, PUBLISH,
SUBSCRIBE, UNSUBSCRIBE); every other packet is relayed byte for byte.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, SUBSCRIBE, UNSUBSCRIBE = 1, 2, 3, 8, 10
MAX_PACKET = 1024 * 1024  # IoT Hub's own limit is 256 KB of payload


class WireError(ValueError):
    """Raised when bytes on the wire are not valid MQTT 3.1.1 (the connection is dropped)."""


def encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, body) of the next packet; raises IncompleteReadError at EOF."""
    first = (await reader.readexactly(1))[0]
    length, mult = 0, 1
    for _ in range(4):
        b = (await reader.readexactly(1))[0]
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    else:
        raise WireError("remaining length longer than 4 bytes")
    if length > MAX_PACKET:
        raise WireError(f"packet of {length} bytes is over the {MAX_PACKET} byte limit")
    return first, await reader.readexactly(length)


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_length(len(body)) + body


def _str(buf: bytes, i: int) -> tuple[str, int]:
    if i + 2 > len(buf):
        raise WireError("truncated string")
    (n,) = struct.unpack_from("!H", buf, i)
    if i + 2 + n > len(buf):
        raise WireError("truncated string")
    return buf[i + 2 : i + 2 + n].decode("utf-8"), i + 2 + n


def _bytes_field(buf: bytes, i: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", buf, i)
    return buf[i + 2 : i + 2 + n], i + 2 + n


def _enc(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


@dataclass
class Connect:
    client_id: str
    username: str | None
    password: bytes | None
    keepalive: int
    clean_session: bool
    will: tuple[str, bytes, int, bool] | None

    @classmethod
    def parse(cls, body: bytes) -> Connect:
        try:
            return cls._parse(body)
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise WireError(f"malformed CONNECT: {exc}") from None

    @classmethod
    def _parse(cls, body: bytes) -> Connect:
        name, i = _str(body, 0)
        if name != "MQTT" or body[i] != 4:
            raise WireError("only MQTT 3.1.1 is supported")
        flags = body[i + 1]
        (keepalive,) = struct.unpack_from("!H", body, i + 2)
        i += 4
        client_id, i = _str(body, i)
        will = None
        if flags & 0x04:
            wt, i = _str(body, i)
            wm, i = _bytes_field(body, i)
            will = (wt, wm, (flags >> 3) & 3, bool(flags & 0x20))
        username = password = None
        if flags & 0x80:
            username, i = _str(body, i)
        if flags & 0x40:
            password, i = _bytes_field(body, i)
        return cls(client_id, username, password, keepalive, bool(flags & 0x02), will)

    def encode(self) -> bytes:
        flags = 0x02 if self.clean_session else 0
        payload = _enc(self.client_id)
        if self.will:
            wt, wm, wq, wr = self.will
            flags |= 0x04 | (wq << 3) | (0x20 if wr else 0)
            payload += _enc(wt) + struct.pack("!H", len(wm)) + wm
        if self.username is not None:
            flags |= 0x80
            payload += _enc(self.username)
        if self.password is not None:
            flags |= 0x40
            payload += struct.pack("!H", len(self.password)) + self.password
        body = _enc("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive) + payload
        return frame(CONNECT << 4, body)


def connack(rc: int) -> bytes:
    return frame(CONNACK << 4, bytes([0, rc]))


Rewrite = Callable[[str], str | None]  # returns the new topic, or None to refuse


def rewrite_publish(first: int, body: bytes, rewrite: Rewrite) -> bytes | None:
    topic, i = _str(body, 0)
    new = rewrite(topic)
    if new is None:
        return None
    return frame(first, _enc(new) + body[i:])


def publish_topic(body: bytes) -> str:
    return _str(body, 0)[0]


def rewrite_filters(first: int, body: bytes, rewrite: Rewrite, with_qos: bool) -> bytes | None:
    if len(body) < 2:
        raise WireError("SUBSCRIBE/UNSUBSCRIBE without a packet id")
    out = bytearray(body[:2])  # packet id
    i = 2
    while i < len(body):
        topic, i = _str(body, i)
        new = rewrite(topic)
        if new is None:
            return None
        out += _enc(new)
        if with_qos:
            if i >= len(body):
                raise WireError("subscription without a QoS byte")
            out.append(body[i])
            i += 1
    return frame(first, bytes(out))
