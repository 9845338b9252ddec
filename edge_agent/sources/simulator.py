"""`simulator` source: the in-process fleet simulator (deterministic for a seed).

Checkpoint `simulator.next`: readings per device already stored. On restart the fleet is
regenerated from the seed and fast-forwarded, so the stream continues where it stopped.
"""

from __future__ import annotations

import threading
import time

from edge_agent.config import SourceConfig, check
from edge_agent.sources.base import Batch, Emit, Source, register
from simulators import Fleet, FleetConfig
from simulators.errors import ConfigError as SimulatorConfigError
from simulators.faults import FleetFault
from simulators.types import pick_types


class SimulatorSourceConfig(SourceConfig, tag="simulator", frozen=True, forbid_unknown_fields=True):
    """type = "simulator": `devices` simulated sensors (deterministic for `seed`); `rate` readings/s in
    all (0 = as fast as possible); `readings` per device (0 = forever); `anomaly_rate` of injected faults.

    A fleet of several device types: `device_types` (e.g. ``["pump", "compressor", "chiller"]``; device i
    is of type i mod len, with that type's channels and the id ``<type>-<nnnn>``) and `fleet_faults`
    (``TYPE:DEVICES:START_S[:KIND[:SPAN]]``, correlated faults over several devices of one type). One
    agent can serve part of such a fleet: `only_type` keeps the devices of one type, and `shard` /
    `shards` keep every `shards`-th of those from the `shard`-th on. Every agent given the same fleet
    settings simulates the same fleet, so the agents of a demo or test split one fleet between them
    (ids unique, a fleet fault across agents in the same minutes) and its labels can be regenerated.
    """

    devices: int = 5
    seed: int = 0
    rate: float = 0.0
    readings: int = 0
    anomaly_rate: float = 0.004
    device_types: tuple[str, ...] = ()
    fleet_faults: tuple[str, ...] = ()
    only_type: str = ""
    shard: int = 0
    shards: int = 1

    def __post_init__(self) -> None:
        check(self.devices >= 1, "devices", "must be >= 1")
        check(self.rate >= 0, "rate", "must be >= 0")
        check(self.readings >= 0, "readings", "must be >= 0 (0 = forever)")
        check(0 <= self.anomaly_rate <= 1, "anomaly_rate", "must be in [0, 1]")
        check(self.shards >= 1 and 0 <= self.shard < self.shards, "shard", "must be in 0..shards-1")
        check(not self.only_type or self.only_type in self.device_types, "only_type",
              "must be one of device_types")
        try:
            self.fleet_config()
        except SimulatorConfigError as exc:
            check(False, exc.key, str(exc).split(": ", 1)[-1])
        check(bool(self.selected()), "shard", "selects no device of the fleet")

    def fleet_config(self) -> FleetConfig:
        """The whole simulated fleet (before `only_type` and the shard pick devices of it)."""
        faults = tuple(FleetFault.parse(f, i + 1) for i, f in enumerate(self.fleet_faults))
        return FleetConfig(devices=self.devices, seed=self.seed, anomaly_rate=self.anomaly_rate,
                           device_types=pick_types(self.device_types), fleet_faults=faults)

    def selected(self) -> list[int]:
        """Indices of the fleet's devices this source emits."""
        types = self.fleet_config().type_names()
        mine = [i for i, t in enumerate(types) if not self.only_type or t == self.only_type]
        return mine[self.shard::self.shards]


@register("simulator")
class SimulatorSource(Source):
    Config = SimulatorSourceConfig
    config: SimulatorSourceConfig

    def run(self, emit: Emit, stop: threading.Event) -> None:
        cfg = self.config
        fleet = Fleet(cfg.fleet_config())
        devices = [fleet.devices[i] for i in cfg.selected()]
        done = int(self.checkpoint.get("simulator.next", "0"))
        skip = done
        while skip > 0 and not stop.is_set():  # fast-forward the deterministic stream
            k = min(skip, 4096)
            for d in devices:
                d.next_block(k)
            skip -= k
        per_emit = max(1, self.batch_size // len(devices))
        if cfg.rate:
            per_emit = max(1, min(per_emit, int(cfg.rate * 0.02 / len(devices)) or 1))
        start, sent = time.monotonic(), 0
        while not stop.is_set():
            k = per_emit if not cfg.readings else min(per_emit, cfg.readings - done)
            if k <= 0:
                return
            blocks = [d.next_block(k) for d in devices]
            done += k
            sent += k * len(devices)
            if not emit(Batch(blocks=blocks, checkpoint={"simulator.next": str(done)})):
                return
            if cfg.rate:
                ahead = sent / cfg.rate - (time.monotonic() - start)
                if ahead > 0:
                    stop.wait(ahead)
