"""Test doubles shipped with the agent: `none` (keep everything in the outbox) and `ListSink`."""

from __future__ import annotations

from typing import Any

from edge_agent.config import UplinkConfig
from edge_agent.packing import Message
from edge_agent.sinks.base import Sink, register


class NoneUplinkConfig(UplinkConfig, tag="none", frozen=True, forbid_unknown_fields=True):
    """type = "none": no uplink; everything stays in the outbox."""


@register("none")
class NullSink(Sink):
    """Never connects: readings stay in the outbox (useful offline, and in tests)."""

    Config = NoneUplinkConfig

    def connect(self, timeout: float) -> None:
        from edge_agent.errors import UplinkError

        raise UplinkError("uplink.type is 'none'")

    @property
    def connected(self) -> bool:
        return False

    def send(self, message: Message, token: int) -> bool:
        return False

    def confirmed(self) -> list[int]:
        return []

    def close(self) -> None:
        pass


class ListSink(Sink):
    """Records messages in `messages` and confirms each immediately (or never, if `confirm` is False)."""

    name = "list"

    def __init__(self, *args: Any, confirm: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[Message] = []
        self.confirm = confirm
        self.up = True
        self._done: list[int] = []

    def connect(self, timeout: float) -> None:
        from edge_agent.errors import UplinkError

        if not self.up:
            raise UplinkError("list sink is down")

    @property
    def connected(self) -> bool:
        return self.up

    def send(self, message: Message, token: int) -> bool:
        if not self.up:
            return False
        self.messages.append(message)
        if self.confirm:
            self._done.append(token)
        return True

    def confirmed(self) -> list[int]:
        out, self._done = self._done, []
        return out

    def close(self) -> None:
        pass
