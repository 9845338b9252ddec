"""Render scored readings into outbox segments, and segments into telemetry messages.

The wire format is the telemetry contract (contracts/telemetry.py); this module builds it
by string assembly for speed, and tests/edge_agent/test_packing.py checks the result
parses back through `TelemetryMessage.decode`.
"""

from __future__ import annotations

import gzip
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import orjson

from contracts.block import ReadingBlock
from contracts.events import EVENT_MESSAGE_TYPE, MESSAGE_PROPERTY
from contracts.telemetry import TELEMETRY_SCHEMA, ModelLineage
from contracts.topics import CONTENT_ENCODING_KEY, CONTENT_TYPE_KEY, telemetry_topic
from edge_agent.outbox.base import Segment, StoredSegment
from models.events import AnomalyEvent

HEADER_ALLOWANCE = 512  # bytes reserved for the message header when sizing segments


def context_header(lineage: ModelLineage, channels: Sequence[str]) -> str:
    """The per-model, per-channel-set part of every message header (stored once in the outbox)."""
    return json.dumps({"model": lineage.to_dict(), "channels": list(channels)}, separators=(",", ":"))


def event_header(lineage: ModelLineage) -> str:
    """The header of a model's anomaly event messages (`contracts.events`), stored once in the outbox."""
    return json.dumps({"model": lineage.to_dict(), "type": EVENT_MESSAGE_TYPE}, separators=(",", ":"))


@lru_cache(maxsize=1024)
def _is_event_header(header: str) -> bool:
    return bool(json.loads(header).get("type") == EVENT_MESSAGE_TYPE)


def event_segment(ev: AnomalyEvent, context_id: int, stored_at: float) -> Segment:
    """One event announcement as an outbox segment (n = 0: it carries no reading)."""
    body = orjson.dumps({"event_id": ev.event_id, "kind": ev.kind, "opened_seq": ev.opened_seq,
                         "opened_ts": round(ev.opened_ts * 1000), "last_seq": ev.last_seq,
                         "last_ts": round(ev.last_ts * 1000), "alarms": ev.alarms,
                         "peak_score": float(ev.peak_score), "threshold": float(ev.threshold)})
    return Segment(device_id=ev.device_id, boot_id=ev.boot_id, context_id=context_id, seq_first=ev.last_seq,
                   seq_last=ev.last_seq, n=0, anomalies=0, stored_at=stored_at, body=body)


def ts_millis(ts: np.ndarray) -> list[bytes]:
    """Epoch seconds -> epoch milliseconds as ASCII integers (the telemetry `ts` field)."""
    ms = np.round(np.asarray(ts, dtype=np.float64) * 1000.0).astype(np.int64)
    out: list[bytes] = orjson.dumps(ms, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    return out


_FRAGMENT = b'{"seq":%d,"ts":%s,"values":[%s],"score":%s,"anomaly":%s}'
_BOOL = (b"false", b"true")


def render(block: ReadingBlock, scores: np.ndarray, flags: np.ndarray) -> list[bytes]:
    """One JSON object per reading: {"seq","ts","values","score","anomaly"} (orjson for the numbers)."""
    return _render_columns(block.seq, block.ts, block.values, scores, flags)


def _render_columns(seq: np.ndarray, ts: np.ndarray, values: np.ndarray, scores: np.ndarray,
                    flags: np.ndarray) -> list[bytes]:
    if len(seq) == 0:
        return []
    opt = orjson.OPT_SERIALIZE_NUMPY
    vals = orjson.dumps(np.ascontiguousarray(values, dtype=np.float64), option=opt)[2:-2].split(b"],[")
    sc = orjson.dumps(np.round(np.asarray(scores, dtype=np.float64), 6), option=opt)[1:-1].split(b",")
    fl = [_BOOL[f] for f in np.asarray(flags, dtype=bool).tolist()]
    return [_FRAGMENT % row for row in zip(np.asarray(seq).tolist(), ts_millis(ts), vals, sc, fl, strict=True)]


@dataclass(frozen=True, slots=True)
class ScoredBlock:
    """A scored block and the stream it belongs to."""

    block: ReadingBlock
    scores: np.ndarray
    flags: np.ndarray
    boot_id: str
    context_id: int


def segments_for(block: ReadingBlock, scores: np.ndarray, flags: np.ndarray, *, boot_id: str, context_id: int,
                 max_message_bytes: int, stored_at: float = 0.0) -> list[Segment]:
    """Split a scored block into kind-1 (flagged) and kind-0 (normal) segments, each fitting one message."""
    return segments_for_many([ScoredBlock(block, scores, flags, boot_id, context_id)],
                             max_message_bytes=max_message_bytes, stored_at=stored_at)


def segments_for_many(items: Sequence[ScoredBlock], *, max_message_bytes: int, stored_at: float = 0.0) -> list[Segment]:
    """Segments for many scored blocks, rendered in one pass (per-call overhead paid once).

    Per block, flagged segments come first, then normal ones; every segment body is at most
    max_message_bytes - HEADER_ALLOWANCE bytes and holds readings in seq order.
    """
    items = [it for it in items if len(it.block)]
    if not items:
        return []
    sizes = [len(it.block) for it in items]
    seq = np.concatenate([it.block.seq for it in items])
    if len({it.block.values.shape[1] for it in items}) == 1:  # one pass over all blocks
        frags = _render_columns(seq, np.concatenate([it.block.ts for it in items]),
                                np.concatenate([it.block.values for it in items]),
                                np.concatenate([it.scores for it in items]),
                                np.concatenate([it.flags for it in items]))
    else:
        frags = [f for it in items for f in render(it.block, it.scores, it.flags)]
    n_all = len(frags)
    lengths = np.fromiter(map(len, frags), dtype=np.int64, count=n_all) + 1  # + the separating comma
    budget = max(1, max_message_bytes - HEADER_ALLOWANCE - int(lengths.max()))
    flags = np.concatenate([np.asarray(it.flags, dtype=bool) for it in items])
    # One key per (block, kind), flagged first; a stable sort keeps seq order inside each key.
    key = np.repeat(np.arange(len(items)) * 2, sizes) + ~flags
    order = np.argsort(key, kind="stable")
    key, size = key[order], lengths[order]
    new_key = np.empty(n_all, dtype=bool)
    new_key[0], new_key[1:] = True, key[1:] != key[:-1]
    end = np.cumsum(size)
    first = np.flatnonzero(new_key)
    before = end - size - (end - size)[first][np.cumsum(new_key) - 1]  # bytes before each fragment in its key
    group = before // budget  # a group starts below the budget, so ends below budget + one fragment
    cut = new_key.copy()
    cut[1:] |= group[1:] != group[:-1]
    bounds = [*np.flatnonzero(cut).tolist(), n_all]
    body = [frags[i] for i in order.tolist()]
    seq_sorted = seq[order].tolist()
    key_list = key.tolist()
    out: list[Segment] = []
    for a, b in itertools.pairwise(bounds):
        it = items[key_list[a] // 2]
        flagged = key_list[a] % 2 == 0
        out.append(Segment(
            device_id=it.block.device_id, boot_id=it.boot_id, context_id=it.context_id,
            seq_first=seq_sorted[a], seq_last=seq_sorted[b - 1], n=b - a, anomalies=b - a if flagged else 0,
            stored_at=stored_at, body=b",".join(body[a:b])))
    return out


class Message(NamedTuple):
    """One telemetry message ready for an uplink, and the outbox rows it carries (immutable)."""

    device_id: str
    topic: str
    payload: bytes
    properties: dict[str, str]
    ids: tuple[int, ...]
    readings: int
    anomalies: int


@lru_cache(maxsize=4096)
def _topic(device_id: str, header: str, anomalous: bool, compress: bool) -> tuple[str, dict[str, str]]:
    """Topic and properties for one (device, model context, kind, encoding) — cached, they repeat."""
    model = json.loads(header)["model"]
    props = {CONTENT_TYPE_KEY: "application/json", "anomaly": "true" if anomalous else "false",
             "schema": str(TELEMETRY_SCHEMA), "model": f"{model['name']}:{model['version']}",
             CONTENT_ENCODING_KEY: "gzip" if compress else "utf-8"}
    return telemetry_topic(device_id, props), props


@lru_cache(maxsize=4096)
def _event_topic(device_id: str, header: str, compress: bool) -> tuple[str, dict[str, str]]:
    model = json.loads(header)["model"]
    props = {CONTENT_TYPE_KEY: "application/json", MESSAGE_PROPERTY: EVENT_MESSAGE_TYPE,
             "schema": str(TELEMETRY_SCHEMA), "model": f"{model['name']}:{model['version']}",
             CONTENT_ENCODING_KEY: "gzip" if compress else "utf-8"}
    return telemetry_topic(device_id, props), props


def build_message(group: Sequence[StoredSegment], header: str, *, compress: bool) -> Message:
    """Wrap a run of segments into one telemetry message (topic, payload, properties); a run of event
    segments into one anomaly event message (`contracts.events`, 0 readings)."""
    first, last = group[0].segment, group[-1].segment
    if _is_event_header(header):
        model = header[1:header.index(',"type":')]  # '"model":{…}'
        payload = (f'{{"v":{TELEMETRY_SCHEMA},"type":"{EVENT_MESSAGE_TYPE}","device_id":"{first.device_id}",'
                   f'"boot_id":"{first.boot_id}",{model},"events":[').encode() \
            + b",".join(g.segment.body for g in group) + b'],"readings":[]}'
        if compress:
            payload = gzip.compress(payload, compresslevel=6, mtime=0)
        topic, props = _event_topic(first.device_id, header, compress)
        return Message(device_id=first.device_id, topic=topic, payload=payload, properties=props,
                       ids=tuple(g.id for g in group), readings=0, anomalies=0)
    anomalies = readings = 0
    bodies: list[bytes] = []
    ids: list[int] = []
    for g in group:  # one pass: this runs for every message sent
        s = g.segment
        anomalies += s.anomalies
        readings += s.n
        bodies.append(s.body)
        ids.append(g.id)
    head = header[1:-1]  # '"model":{…},"channels":[…]'
    body = b",".join(bodies)
    payload = (
        f'{{"v":{TELEMETRY_SCHEMA},"device_id":"{first.device_id}","boot_id":"{first.boot_id}",'
        f'"seq_first":{first.seq_first},"seq_last":{last.seq_last},{head},"anomalies":{anomalies},"readings":['
    ).encode() + body + b"]}"
    if compress:
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    topic, props = _topic(first.device_id, header, anomalies > 0, compress)
    return Message(device_id=first.device_id, topic=topic, payload=payload, properties=props,
                   ids=tuple(ids), readings=readings, anomalies=anomalies)
