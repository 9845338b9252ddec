"""Errors raised by the edge agent."""

from __future__ import annotations


class AgentError(Exception):
    """Root of the agent errors."""


class ConfigError(AgentError, ValueError):
    """Raised when the agent configuration is invalid.

    Attributes:
        key: dotted path of the offending setting ("uplink.port").
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class OutboxError(AgentError):
    """Raised when the outbox cannot be opened or written (disk full, corrupt file, wrong format)."""


class UplinkError(AgentError):
    """Raised when an uplink cannot connect or send (the agent retries; this is for reporting)."""
