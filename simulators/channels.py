"""Channel signal models: what a healthy sensor channel looks like.

A channel's clean signal for device d at time t (seconds) is::

    base + offset_d + daily_amp * sin(2π t / 86400 + phase_d) + wear_d * hours + wander(t) + noise

where offset_d, phase_d, wear_d are fixed per device (drawn from the device seed),
wander is a slow random walk and noise is white Gaussian with sd ``noise``.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulators.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ChannelModel:
    """Parameters of one healthy channel (all in the channel's unit)."""

    name: str
    unit: str
    base: float
    device_offset_sd: float
    daily_amp: float
    noise: float
    wander: float = 0.0
    wear_per_hour: float = 0.0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError("channels", f"channel name must be an identifier, got {self.name!r}")
        if self.noise <= 0:
            raise ConfigError(f"channels.{self.name}.noise", "must be > 0")


DEFAULT_CHANNELS: tuple[ChannelModel, ...] = (
    ChannelModel("temperature", "degC", base=55.0, device_offset_sd=5.0, daily_amp=4.0, noise=0.25,
                 wander=0.01, wear_per_hour=0.05),
    ChannelModel("vibration", "mm/s", base=2.5, device_offset_sd=0.4, daily_amp=0.1, noise=0.08,
                 wander=0.002, wear_per_hour=0.02),
    ChannelModel("pressure", "bar", base=3.2, device_offset_sd=0.2, daily_amp=0.05, noise=0.02,
                 wander=0.001),
    ChannelModel("current", "A", base=12.0, device_offset_sd=1.0, daily_amp=0.8, noise=0.15,
                 wander=0.005, wear_per_hour=0.01),
)

CHANNELS_BY_NAME = {c.name: c for c in DEFAULT_CHANNELS}


def pick_channels(names: list[str] | tuple[str, ...] | None) -> tuple[ChannelModel, ...]:
    """Select channel models by name; unknown names raise ConfigError listing the known ones."""
    if not names:
        return DEFAULT_CHANNELS
    out = []
    for n in names:
        if n not in CHANNELS_BY_NAME:
            raise ConfigError("channels", f"unknown channel {n!r}; known: {', '.join(CHANNELS_BY_NAME)}")
        out.append(CHANNELS_BY_NAME[n])
    return tuple(out)
