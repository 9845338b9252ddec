"""Source role: where readings come from.

A source runs in its own thread and hands the agent `Batch`es. The agent calls
`batch.ack()` only after the batch's readings are durable in the outbox (or were
quarantined), and commits `batch.checkpoint` in the same transaction — so a source that
can replay (file offset, simulator position, MQTT redelivery) resumes exactly after what
was stored, and a reading is never acknowledged before it is safe.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from contracts.block import ReadingBlock
from edge_agent.config import SourceConfig
from edge_agent.plugins import Registry


@dataclass
class Batch:
    """Readings from a source: columnar `blocks` (trusted shape) and/or `raw` readings to validate."""

    blocks: list[ReadingBlock] = field(default_factory=list)
    raw: list[Any] = field(default_factory=list)
    checkpoint: dict[str, str] = field(default_factory=dict)
    ack: Callable[[], None] | None = None

    def __len__(self) -> int:
        return sum(len(b) for b in self.blocks) + len(self.raw)


Emit = Callable[[Batch], bool]  # returns False once the agent is stopping


class Source(ABC):
    """One source of readings. `run` blocks until `stop` is set or the source is exhausted."""

    name: ClassVar[str]
    Config: ClassVar[type[SourceConfig]]  # the plugin's own settings, tagged with its name

    def __init__(self, config: SourceConfig, checkpoint: dict[str, str], batch_size: int) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.batch_size = batch_size

    @abstractmethod
    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Produce batches until stopped or exhausted (then return)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called once after `run` returned."""


SOURCES: Registry[Source] = Registry("source.type", "source")
register = SOURCES.register


def make_source(config: SourceConfig, checkpoint: dict[str, str], batch_size: int) -> Source:
    return SOURCES.get(config.type)(config, checkpoint, batch_size)
