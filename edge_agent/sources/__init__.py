"""Sources: where the agent's readings come from (registry in base.py).

Every module of this package is imported here, so a new source registers itself by being a module in
it: no list to edit.
"""

import importlib
import pkgutil

from edge_agent.sources.base import SOURCES, Batch, Source, make_source

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SOURCES", "Batch", "Source", "make_source"]
