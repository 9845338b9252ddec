"""Device types: each kind of machine has its own channels and healthy signal model.

| type       | channels (unit)                                                                  |
|------------|----------------------------------------------------------------------------------|
| pump       | temperature (degC), vibration (mm/s), pressure (bar), current (A)                |
| compressor | discharge_temp (degC), suction_pressure (bar), discharge_pressure (bar), vibration (mm/s), power (kW) |
| chiller    | supply_temp (degC), return_temp (degC), flow (l/s), power (kW)                   |

A fleet built with device types gives device i the type ``types[i % len(types)]`` and the id
``<type>-<nnnn>`` (numbered within its type). The hub registry carries the same name as the twin
tag ``device_type``; the cloud jobs aggregate and retrain per type.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulators.channels import DEFAULT_CHANNELS, ChannelModel
from simulators.errors import ConfigError


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A kind of device: a name (a valid device-id prefix) and its channel models."""

    name: str
    channels: tuple[ChannelModel, ...]

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or not self.channels:
            raise ConfigError("device_types", f"a device type needs an identifier name and channels: {self.name!r}")

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.channels)


PUMP = DeviceType("pump", DEFAULT_CHANNELS)
COMPRESSOR = DeviceType("compressor", (
    ChannelModel("discharge_temp", "degC", base=85.0, device_offset_sd=4.0, daily_amp=3.0, noise=0.4,
                 wander=0.02, wear_per_hour=0.04),
    ChannelModel("suction_pressure", "bar", base=2.4, device_offset_sd=0.15, daily_amp=0.08, noise=0.02,
                 wander=0.001),
    ChannelModel("discharge_pressure", "bar", base=11.5, device_offset_sd=0.6, daily_amp=0.4, noise=0.06,
                 wander=0.003),
    ChannelModel("vibration", "mm/s", base=4.0, device_offset_sd=0.5, daily_amp=0.1, noise=0.12,
                 wander=0.003, wear_per_hour=0.03),
    ChannelModel("power", "kW", base=30.0, device_offset_sd=2.0, daily_amp=2.5, noise=0.3, wander=0.01),
))
CHILLER = DeviceType("chiller", (
    ChannelModel("supply_temp", "degC", base=7.0, device_offset_sd=0.5, daily_amp=0.6, noise=0.05, wander=0.002),
    ChannelModel("return_temp", "degC", base=12.0, device_offset_sd=0.6, daily_amp=1.2, noise=0.08,
                 wander=0.003),
    ChannelModel("flow", "l/s", base=25.0, device_offset_sd=2.0, daily_amp=1.0, noise=0.2, wander=0.01),
    ChannelModel("power", "kW", base=120.0, device_offset_sd=10.0, daily_amp=15.0, noise=1.0, wander=0.05,
                 wear_per_hour=0.05),
))

DEVICE_TYPES: dict[str, DeviceType] = {t.name: t for t in (PUMP, COMPRESSOR, CHILLER)}


def pick_types(names: str | list[str] | tuple[str, ...]) -> tuple[DeviceType, ...]:
    """Device types by name; an unknown name raises ConfigError listing the known ones."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        if n not in DEVICE_TYPES:
            raise ConfigError("device_types", f"unknown device type {n!r}; known: {', '.join(DEVICE_TYPES)}")
        out.append(DEVICE_TYPES[n])
    return tuple(out)
