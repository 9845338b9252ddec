"""Errors raised by the simulators."""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of the simulator errors."""


class ConfigError(SimulatorError, ValueError):
    """Raised when a simulation setting is invalid.

    Attributes:
        key: the offending setting.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        super().__init__(f"{key}: {reason}")
