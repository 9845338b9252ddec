"""Sink role (uplinks): deliver telemetry messages and report which ones were confirmed.

Guarantees an implementation gives: `send` never blocks on the network for long; a message
counts as delivered only when `confirmed()` returns its token (QoS 1 PUBACK, SDK
completion); after `connected` turns False, unconfirmed tokens are never confirmed — the
agent resends them from the outbox. The agent owns retry: sinks do not reconnect or resend
on their own, so our backoff and a library's retries never fight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from edge_agent.config import UplinkConfig
from edge_agent.packing import Message
from edge_agent.plugins import Registry


class Sink(ABC):
    name: ClassVar[str]
    Config: ClassVar[type[UplinkConfig]]  # the plugin's own settings, tagged with its name

    def __init__(self, config: UplinkConfig) -> None:
        self.config = config

    @abstractmethod
    def connect(self, timeout: float) -> None:
        """Connect or raise UplinkError."""

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    def send(self, message: Message, token: int) -> bool:
        """Queue a message; False if the connection is gone (nothing was queued)."""

    @abstractmethod
    def confirmed(self) -> list[int]:
        """Tokens of messages confirmed since the last call."""

    @abstractmethod
    def close(self) -> None: ...


SINKS: Registry[Sink] = Registry("uplink.type", "uplink")
register = SINKS.register


def make_sink(config: UplinkConfig) -> Sink:
    return SINKS.get(config.type)(config)


DesiredHandler = Callable[[dict[str, Any]], None]
MethodHandler = Callable[[str, Any], tuple[int, Any]]


class Controllable(ABC):
    """Optional ability of an uplink: device twin and direct methods (IoT Hub's control plane).

    Handlers are called on the uplink's network thread and must return quickly; the agent's
    control plane queues the work to its own thread.
    """

    @abstractmethod
    def set_control_handlers(self, on_desired: DesiredHandler, on_method: MethodHandler) -> None: ...

    @abstractmethod
    def get_twin(self, timeout: float) -> dict[str, Any]:
        """{"desired": {...}, "reported": {...}} (raises UplinkError)."""

    @abstractmethod
    def patch_reported(self, patch: dict[str, Any], timeout: float) -> None:
        """Merge `patch` into the reported properties (raises UplinkError)."""
