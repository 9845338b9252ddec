"""Anomaly injectors with ground-truth labels.

Each fault type changes one channel over a span of readings; every reading in the
span is labelled anomalous with the fault's name. Magnitudes are in units of the
channel's noise sd so they mean the same on every channel.

| type         | span (readings) | effect on the channel                                  |
|--------------|-----------------|--------------------------------------------------------|
| spike        | 1               | + 6–12 sd                                              |
| dip          | 1               | − 6–12 sd                                              |
| level_shift  | 15–45           | ± 5–10 sd for the whole span                           |
| drift        | 60–180          | linear ramp from 0 to ± 8–15 sd                        |
| stuck        | 15–45           | frozen at the clean value where the span starts        |
| noise_burst  | 10–30           | extra noise with sd × 4–8                              |
| dropout      | 5–20            | reads exactly 0 (a disconnected 4–20 mA loop)          |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from simulators.errors import ConfigError


class FaultType(str, Enum):
    SPIKE = "spike"
    DIP = "dip"
    LEVEL_SHIFT = "level_shift"
    DRIFT = "drift"
    STUCK = "stuck"
    NOISE_BURST = "noise_burst"
    DROPOUT = "dropout"

    @classmethod
    def parse(cls, names: str | list[str] | tuple[str, ...]) -> tuple[FaultType, ...]:
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        out = []
        for n in names:
            try:
                out.append(cls(n))
            except ValueError:
                known = ", ".join(f.value for f in cls)
                raise ConfigError("faults", f"unknown fault type {n!r}; known: {known}") from None
        return tuple(out)


ALL_FAULTS: tuple[FaultType, ...] = tuple(FaultType)

_SPAN = {
    FaultType.SPIKE: (1, 1),
    FaultType.DIP: (1, 1),
    FaultType.LEVEL_SHIFT: (15, 45),
    FaultType.DRIFT: (60, 180),
    FaultType.STUCK: (15, 45),
    FaultType.NOISE_BURST: (10, 30),
    FaultType.DROPOUT: (5, 20),
}
_MAGNITUDE = {
    FaultType.SPIKE: (6.0, 12.0),
    FaultType.DIP: (6.0, 12.0),
    FaultType.LEVEL_SHIFT: (5.0, 10.0),
    FaultType.DRIFT: (8.0, 15.0),
    FaultType.STUCK: (0.0, 0.0),
    FaultType.NOISE_BURST: (4.0, 8.0),
    FaultType.DROPOUT: (0.0, 0.0),
}


@dataclass(slots=True)
class FaultEvent:
    """One injected fault: type, channel index, first reading index, span, magnitude (sd units)."""

    kind: FaultType
    channel: int
    start: int
    span: int
    magnitude: float
    stuck_value: float | None = None
    label: str | None = None  # the fault id readings are labelled with (default: the type's name)

    @property
    def name(self) -> str:
        return self.label or self.kind.value

    @property
    def end(self) -> int:
        """One past the last affected reading index."""
        return self.start + self.span

    @classmethod
    def draw(cls, kind: FaultType, channel: int, start: int, rng: np.random.Generator) -> FaultEvent:
        lo, hi = _SPAN[kind]
        span = int(rng.integers(lo, hi + 1))
        mlo, mhi = _MAGNITUDE[kind]
        mag = float(rng.uniform(mlo, mhi))
        if kind in (FaultType.LEVEL_SHIFT, FaultType.DRIFT) and rng.random() < 0.5:
            mag = -mag
        if kind is FaultType.DIP:
            mag = -mag
        return cls(kind, channel, start, span, mag)

    def apply(self, i0: int, clean: np.ndarray, values: np.ndarray, noise_sd: float,
              extra_noise: np.ndarray) -> slice | None:
        """Apply this fault to the chunk of readings [i0, i0 + len(values)).

        `clean` is the chunk's fault-free signal of this channel, `values` the
        channel column being modified in place, `extra_noise` standard normal draws
        for the chunk. Returns the slice of the chunk this fault covers, or None.
        """
        n = len(values)
        a, b = max(self.start, i0), min(self.end, i0 + n)
        if a >= b:
            return None
        sl = slice(a - i0, b - i0)
        k = self.kind
        if k in (FaultType.SPIKE, FaultType.DIP, FaultType.LEVEL_SHIFT):
            values[sl] += self.magnitude * noise_sd
        elif k is FaultType.DRIFT:
            steps = np.arange(a - self.start + 1, b - self.start + 1, dtype=np.float64)
            values[sl] += self.magnitude * noise_sd * steps / self.span
        elif k is FaultType.STUCK:
            if self.stuck_value is None:
                self.stuck_value = float(clean[a - i0])
            values[sl] = self.stuck_value
        elif k is FaultType.NOISE_BURST:
            values[sl] += self.magnitude * noise_sd * extra_noise[sl]
        elif k is FaultType.DROPOUT:
            values[sl] = 0.0
        return sl


@dataclass(frozen=True, slots=True)
class FleetFault:
    """A correlated fault: `devices` devices of one type are hit within the same minutes.

    A bad firmware push or a heat wave: each hit device gets a `kind` fault on `channel` (default its
    first) starting `start_s` seconds after the fleet's start plus up to `jitter_s` of its own, lasting
    `span` readings at `magnitude` noise sd. Every affected reading is labelled with `fault_id`, so an
    incident detector has ground truth. Which devices are hit follows from the fleet seed.
    """

    fault_id: str
    device_type: str
    devices: int
    start_s: float
    kind: FaultType = FaultType.LEVEL_SHIFT
    span: int = 180
    magnitude: float = 8.0
    channel: str | None = None
    jitter_s: float = 20.0

    def __post_init__(self) -> None:
        if self.devices < 1 or self.span < 1 or self.start_s < 0 or self.jitter_s < 0:
            raise ConfigError("fleet_faults", f"{self.fault_id}: devices and span must be >= 1, times >= 0")

    @classmethod
    def parse(cls, text: str, index: int = 1) -> FleetFault:
        """``TYPE:DEVICES:START_S[:KIND[:SPAN]]``, e.g. ``pump:8:120:level_shift:180``."""
        parts = text.split(":")
        if not 3 <= len(parts) <= 5:
            raise ConfigError("fleet_faults", f"expected TYPE:DEVICES:START_S[:KIND[:SPAN]], got {text!r}")
        try:
            kind = FaultType.parse(parts[3])[0] if len(parts) > 3 else FaultType.LEVEL_SHIFT
            return cls(fault_id=f"fleet-{index}-{parts[0]}", device_type=parts[0], devices=int(parts[1]),
                       start_s=float(parts[2]), kind=kind, span=int(parts[4]) if len(parts) > 4 else 180)
        except ValueError as exc:
            raise ConfigError("fleet_faults", f"{text!r}: {exc}") from None
