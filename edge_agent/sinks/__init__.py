"""Sinks (uplinks): where scored readings go (registry in base.py)."""

from edge_agent.sinks import iothub, memory, mqtt  # noqa: F401  (register themselves)
from edge_agent.sinks.base import SINKS, Sink, make_sink

__all__ = ["SINKS", "Sink", "make_sink"]
