"""Sources: where the agent's readings come from (registry in base.py)."""

from edge_agent.sources import jsonl, mqtt, simulator  # noqa: F401  (register themselves)
from edge_agent.sources.base import SOURCES, Batch, Source, make_source

__all__ = ["SOURCES", "Batch", "Source", "make_source"]
