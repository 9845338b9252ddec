"""Fleet simulator: virtual devices with realistic signals and labelled, injected faults."""

from simulators.channels import DEFAULT_CHANNELS, ChannelModel
from simulators.errors import ConfigError, SimulatorError
from simulators.faults import ALL_FAULTS, FaultType
from simulators.fleet import DeviceSimulator, Fleet, FleetConfig

__all__ = [
    "ALL_FAULTS",
    "DEFAULT_CHANNELS",
    "ChannelModel",
    "ConfigError",
    "DeviceSimulator",
    "FaultType",
    "Fleet",
    "FleetConfig",
    "SimulatorError",
]
