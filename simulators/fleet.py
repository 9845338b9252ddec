"""A fleet of virtual devices producing labelled readings, deterministic for a seed.

Each device owns independent random streams (signal noise, wander, fault starts,
fault parameters, burst noise) spawned from the fleet seed, so the output for a seed is the
same whether it is generated in one chunk or many (tests/test_simulators.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from contracts.block import ReadingBlock
from simulators.channels import DEFAULT_CHANNELS, ChannelModel
from simulators.errors import ConfigError
from simulators.faults import ALL_FAULTS, FaultEvent, FaultType, FleetFault
from simulators.types import DeviceType

DEFAULT_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class FleetConfig:
    """Settings of a simulated fleet.

    Attributes:
        devices: number of virtual devices (ids ``{prefix}-0001`` …).
        interval_s: seconds between two readings of one device.
        seed: master seed; the same seed gives the same readings and labels.
        anomaly_rate: chance per reading that a new fault starts on a device
            (the labelled fraction is larger, since faults span several readings).
        faults: fault types to inject, drawn uniformly.
        channels: channel models, one column each.
        start: event time of the first reading (aware UTC).
        device_types: if given, device i is of type ``device_types[i % len]``, has that type's
            channels (``channels`` is then unused) and the id ``<type>-<nnnn>``.
        fleet_faults: correlated faults over several devices of one type (ground truth for incidents).
    """

    devices: int = 5
    interval_s: float = 1.0
    seed: int = 0
    anomaly_rate: float = 0.004
    faults: tuple[FaultType, ...] = ALL_FAULTS
    channels: tuple[ChannelModel, ...] = DEFAULT_CHANNELS
    start: datetime = DEFAULT_START
    prefix: str = "dev"
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    device_types: tuple[DeviceType, ...] = ()
    fleet_faults: tuple[FleetFault, ...] = ()

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError("devices", "must be at least 1")
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise ConfigError("interval_s", "must be a positive number of seconds")
        if not 0.0 <= self.anomaly_rate < 0.5:
            raise ConfigError("anomaly_rate", "must be in [0, 0.5)")
        if self.anomaly_rate > 0 and not self.faults:
            raise ConfigError("faults", "no fault types selected but anomaly_rate > 0")
        if self.start.tzinfo is None:
            raise ConfigError("start", "must be timezone-aware")
        counts = {t: self.type_names().count(t) for t in set(self.type_names())}
        for f in self.fleet_faults:
            if counts.get(f.device_type, 0) < f.devices:
                raise ConfigError("fleet_faults", f"{f.fault_id} needs {f.devices} {f.device_type} devices, "
                                  f"the fleet has {counts.get(f.device_type, 0)}")

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)

    def type_names(self) -> list[str]:
        """Device type of each device, by index ("pump" for a fleet without device types)."""
        if not self.device_types:
            return ["pump"] * self.devices
        return [self.device_types[i % len(self.device_types)].name for i in range(self.devices)]

    def channels_of(self, index: int) -> tuple[ChannelModel, ...]:
        if not self.device_types:
            return self.channels
        return self.device_types[index % len(self.device_types)].channels

    def device_ids(self) -> list[str]:
        if not self.device_types:
            return [f"{self.prefix}-{i + 1:04d}" for i in range(self.devices)]
        seen: dict[str, int] = {}
        out = []
        for t in self.type_names():
            seen[t] = seen.get(t, 0) + 1
            out.append(f"{t}-{seen[t]:04d}")
        return out

    def device_types_by_id(self) -> dict[str, str]:
        return dict(zip(self.device_ids(), self.type_names(), strict=True))


class DeviceSimulator:
    """One virtual device; `next_block(n)` returns its next n readings."""

    def __init__(self, config: FleetConfig, index: int, scheduled: list[FaultEvent] | None = None) -> None:
        """`scheduled`: fault events fixed in advance (a fleet fault's share on this device)."""
        self.config = config
        self.device_id = config.device_ids()[index]
        self.device_type = config.type_names()[index]
        ss = np.random.SeedSequence([config.seed, index])
        static, noise, wander, starts, params, burst = (np.random.default_rng(s) for s in ss.spawn(6))
        chans = self.channels = config.channels_of(index)
        self._noise_rng, self._wander_rng = noise, wander
        self._start_rng, self._param_rng, self._burst_rng = starts, params, burst
        self._offset = np.array([static.normal(0, c.device_offset_sd) for c in chans])
        self._phase = static.uniform(0, 2 * np.pi, size=len(chans))
        self._wear = np.array([c.wear_per_hour * static.uniform(0.5, 1.5) for c in chans])
        self._base = np.array([c.base for c in chans])
        self._amp = np.array([c.daily_amp for c in chans])
        self._sd = np.array([c.noise for c in chans])
        self._wander_sd = np.array([c.wander for c in chans])
        self._wander = np.zeros(len(chans))
        self._t0 = config.start.timestamp()
        self._next = 0
        self._events: list[FaultEvent] = list(scheduled or [])
        self._busy_until = 0

    def next_block(self, n: int) -> ReadingBlock:
        cfg = self.config
        i0 = self._next
        idx = np.arange(i0, i0 + n, dtype=np.int64)
        ts = self._t0 + idx * cfg.interval_s
        day = 2 * np.pi * (ts % 86400.0)[:, None] / 86400.0
        hours = ((idx * cfg.interval_s) / 3600.0)[:, None]
        steps = self._wander_rng.normal(size=(n, len(self._sd))) * self._wander_sd
        # cumsum from the carried level keeps the summation order of one long run
        wander = np.cumsum(np.vstack([self._wander, steps]), axis=0)[1:]
        self._wander = wander[-1].copy() if n else self._wander
        clean = (self._base + self._offset + self._amp * np.sin(day + self._phase) + self._wear * hours + wander)
        values = clean + self._noise_rng.normal(size=(n, len(self._sd))) * self._sd
        extra = self._burst_rng.normal(size=(n, len(self._sd)))
        labels = np.zeros(n, dtype=np.int8)
        faults = [""] * n
        self._draw_events(i0, n)
        for ev in self._events:
            c = ev.channel
            col = values[:, c]
            sl = ev.apply(i0, clean[:, c], col, float(self._sd[c]), extra[:, c])
            if sl is not None:
                labels[sl] = 1
                for j in range(sl.start, sl.stop):
                    faults[j] = ev.name
        self._events = [e for e in self._events if e.end > i0 + n]
        self._next = i0 + n
        return ReadingBlock(
            device_id=self.device_id, channels=tuple(c.name for c in self.channels), ts=ts, seq=idx.copy(),
            values=values, labels=labels, faults=faults,
        )

    def _draw_events(self, i0: int, n: int) -> None:
        cfg = self.config
        u = self._start_rng.random(n)
        if cfg.anomaly_rate <= 0:
            return
        for j in np.flatnonzero(u < cfg.anomaly_rate).tolist():
            i = i0 + j
            kind = cfg.faults[int(self._param_rng.integers(len(cfg.faults)))]
            channel = int(self._param_rng.integers(len(self.channels)))
            ev = FaultEvent.draw(kind, channel, i, self._param_rng)
            if i < self._busy_until:
                continue  # draws are consumed either way, keeping chunking invariant
            self._busy_until = ev.end + 5  # a gap, so faults do not touch
            self._events.append(ev)


class Fleet:
    """All devices of a FleetConfig, stepped together in time."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.plan = plan_fleet_faults(config)
        scheduled: dict[int, list[FaultEvent]] = {}
        for p in self.plan:
            for i, ev in zip(p.device_indices, p.events, strict=True):
                scheduled.setdefault(i, []).append(ev)
        self.devices = [DeviceSimulator(config, i, scheduled.get(i)) for i in range(config.devices)]

    def blocks(self, readings_per_device: int, chunk: int = 600) -> Iterator[list[ReadingBlock]]:
        """Yield, chunk by chunk in time, one block per device."""
        done = 0
        while done < readings_per_device:
            n = min(chunk, readings_per_device - done)
            yield [d.next_block(n) for d in self.devices]
            done += n

    def generate(self, readings_per_device: int) -> dict[str, ReadingBlock]:
        """The whole run as one block per device (for training, evaluation and tests)."""
        parts: dict[str, list[ReadingBlock]] = {d.device_id: [] for d in self.devices}
        for blocks in self.blocks(readings_per_device):
            for b in blocks:
                parts[b.device_id].append(b)
        return {dev: ReadingBlock.concat(bs) for dev, bs in parts.items()}

    def readings_for(self, duration_s: float) -> int:
        return max(1, int(duration_s / self.config.interval_s))


@dataclass(frozen=True)
class FleetFaultPlan:
    """Ground truth of one fleet fault: which devices it hits, and when (epoch seconds, UTC)."""

    fault: FleetFault
    device_indices: tuple[int, ...]
    device_ids: tuple[str, ...]
    events: tuple[FaultEvent, ...]
    start_ts: float
    end_ts: float


def plan_fleet_faults(config: FleetConfig) -> list[FleetFaultPlan]:
    """Pick each fleet fault's devices and start times from the seed (its own stream per fault)."""
    out = []
    types, ids = config.type_names(), config.device_ids()
    t0 = config.start.timestamp()
    for k, f in enumerate(config.fleet_faults):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0xF1EE7, k]))
        of_type = [i for i, t in enumerate(types) if t == f.device_type]
        chosen = sorted(int(i) for i in rng.choice(of_type, size=f.devices, replace=False))
        events = []
        for i in chosen:
            names = [c.name for c in config.channels_of(i)]
            channel = names.index(f.channel) if f.channel in names else 0
            start = int((f.start_s + rng.uniform(0, f.jitter_s)) / config.interval_s)
            mag = -f.magnitude if f.kind is FaultType.DIP else f.magnitude
            events.append(FaultEvent(f.kind, channel, start, f.span, mag, label=f.fault_id))
        first, last = min(e.start for e in events), max(e.end for e in events)
        out.append(FleetFaultPlan(f, tuple(chosen), tuple(ids[i] for i in chosen), tuple(events),
                                  t0 + first * config.interval_s, t0 + last * config.interval_s))
    return out
