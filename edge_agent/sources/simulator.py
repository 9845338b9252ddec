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


class SimulatorSourceConfig(SourceConfig, tag="simulator", frozen=True, forbid_unknown_fields=True):
    """type = "simulator": `devices` simulated sensors (deterministic for `seed`); `rate` readings/s in
    all (0 = as fast as possible); `readings` per device (0 = forever); `anomaly_rate` of injected faults."""

    devices: int = 5
    seed: int = 0
    rate: float = 0.0
    readings: int = 0
    anomaly_rate: float = 0.004

    def __post_init__(self) -> None:
        check(self.devices >= 1, "devices", "must be >= 1")
        check(self.rate >= 0, "rate", "must be >= 0")
        check(self.readings >= 0, "readings", "must be >= 0 (0 = forever)")
        check(0 <= self.anomaly_rate <= 1, "anomaly_rate", "must be in [0, 1]")


@register("simulator")
class SimulatorSource(Source):
    Config = SimulatorSourceConfig
    config: SimulatorSourceConfig

    def run(self, emit: Emit, stop: threading.Event) -> None:
        cfg = self.config
        fleet = Fleet(FleetConfig(devices=cfg.devices, seed=cfg.seed, anomaly_rate=cfg.anomaly_rate))
        done = int(self.checkpoint.get("simulator.next", "0"))
        skip = done
        while skip > 0 and not stop.is_set():  # fast-forward the deterministic stream
            k = min(skip, 4096)
            for d in fleet.devices:
                d.next_block(k)
            skip -= k
        per_emit = max(1, self.batch_size // cfg.devices)
        if cfg.rate:
            per_emit = max(1, min(per_emit, int(cfg.rate * 0.02 / cfg.devices) or 1))
        start, sent = time.monotonic(), 0
        while not stop.is_set():
            k = per_emit if not cfg.readings else min(per_emit, cfg.readings - done)
            if k <= 0:
                return
            blocks = [d.next_block(k) for d in fleet.devices]
            done += k
            sent += k * cfg.devices
            if not emit(Batch(blocks=blocks, checkpoint={"simulator.next": str(done)})):
                return
            if cfg.rate:
                ahead = sent / cfg.rate - (time.monotonic() - start)
                if ahead > 0:
                    stop.wait(ahead)
