"""ReadingBlock: the columnar, in-memory form of consecutive readings of one device.

Sources produce blocks, the feature and scoring stages consume them, so the
per-reading Python work stays small. A block converts losslessly to and from
``Reading`` objects (timestamps at millisecond precision, as on the wire).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from contracts.errors import ContractError
from contracts.reading import Reading, format_ts


@dataclass(frozen=True, slots=True, eq=False)
class ReadingBlock:
    """n readings of one device, in arrival order.

    Attributes:
        device_id: the device.
        channels: channel names, the column order of `values`.
        ts: float64 [n] event time, seconds since the epoch (UTC).
        seq: int64 [n] per-boot sequence numbers.
        values: float64 [n, len(channels)].
        labels: int8 [n] ground truth (1 = anomalous) or None when unknown.
        faults: per-reading fault name ("" = none) or None when unknown.
    """

    device_id: str
    channels: tuple[str, ...]
    ts: np.ndarray
    seq: np.ndarray
    values: np.ndarray
    labels: np.ndarray | None = None
    faults: Sequence[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.ts)
        if self.values.shape != (n, len(self.channels)):
            raise ContractError("values", f"shape {self.values.shape} != ({n}, {len(self.channels)})")
        if len(self.seq) != n:
            raise ContractError("seq", "length differs from ts")
        if self.labels is not None and len(self.labels) != n:
            raise ContractError("labels", "length differs from ts")
        if self.faults is not None and len(self.faults) != n:
            raise ContractError("faults", "length differs from ts")

    def __len__(self) -> int:
        return len(self.ts)

    def ts_strings(self) -> list[str]:
        """Event times as ISO-8601 UTC strings with milliseconds."""
        return [format_ts(datetime.fromtimestamp(t, tz=timezone.utc)) for t in self.ts.tolist()]

    def to_readings(self) -> list[Reading]:
        ts = self.ts_strings()
        out = []
        for i in range(len(self)):
            label = None if self.labels is None else int(self.labels[i])
            fault = None
            if self.faults is not None and self.faults[i]:
                fault = self.faults[i]
            out.append(Reading.from_dict({
                "device_id": self.device_id, "ts": ts[i], "seq": int(self.seq[i]),
                "values": dict(zip(self.channels, self.values[i].tolist(), strict=True)),
                "label": label, "fault": fault,
            }))
        return out

    @classmethod
    def concat(cls, blocks: Sequence[ReadingBlock]) -> ReadingBlock:
        """Join consecutive blocks of one device into one."""
        if not blocks:
            raise ContractError("blocks", "nothing to concatenate")
        first = blocks[0]
        if any(b.device_id != first.device_id or b.channels != first.channels for b in blocks):
            raise ContractError("blocks", "can only join blocks of one device with the same channels")
        labelled = all(b.labels is not None for b in blocks)
        return cls(
            device_id=first.device_id, channels=first.channels,
            ts=np.concatenate([b.ts for b in blocks]), seq=np.concatenate([b.seq for b in blocks]),
            values=np.vstack([b.values for b in blocks]),
            labels=np.concatenate([b.labels for b in blocks if b.labels is not None]) if labelled else None,
            faults=[f for b in blocks for f in (b.faults or [])] if labelled else None,
        )

    def slice(self, start: int, stop: int) -> ReadingBlock:
        """Readings [start, stop) as a new block (arrays are views)."""
        return ReadingBlock(
            device_id=self.device_id, channels=self.channels, ts=self.ts[start:stop], seq=self.seq[start:stop],
            values=self.values[start:stop],
            labels=None if self.labels is None else self.labels[start:stop],
            faults=None if self.faults is None else self.faults[start:stop],
        )

    @classmethod
    def from_readings(cls, readings: Sequence[Reading], channels: Sequence[str] | None = None) -> ReadingBlock:
        """Columnise readings of ONE device; missing channels raise ContractError."""
        if not readings:
            raise ContractError("readings", "empty")
        device = readings[0].device_id
        chans = tuple(channels) if channels is not None else tuple(readings[0].values)
        vals = np.empty((len(readings), len(chans)), dtype=np.float64)
        for i, r in enumerate(readings):
            if r.device_id != device:
                raise ContractError("device_id", f"block mixes devices {device!r} and {r.device_id!r}")
            try:
                vals[i] = [r.values[c] for c in chans]
            except KeyError as exc:
                raise ContractError(f"values.{exc.args[0]}", "channel missing") from None
        has_labels = all(r.label is not None for r in readings)
        return cls(
            device_id=device,
            channels=chans,
            ts=np.array([r.ts_epoch for r in readings], dtype=np.float64),
            seq=np.array([r.seq for r in readings], dtype=np.int64),
            values=vals,
            labels=np.array([r.label for r in readings], dtype=np.int8) if has_labels else None,
            faults=[r.fault or "" for r in readings] if has_labels else None,
        )


def device_spans(devices: Sequence[str]) -> list[tuple[int, int]]:
    """[start, stop) of each run of one device in rows laid end to end (a device's rows contiguous)."""
    if len(devices) == 0:
        return []
    dev = np.asarray(devices, dtype=object)
    cuts = [0, *(np.flatnonzero(dev[1:] != dev[:-1]) + 1).tolist(), len(dev)]
    return list(itertools.pairwise(cuts))
