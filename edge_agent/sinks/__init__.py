"""Sinks (uplinks): where scored readings go (registry in base.py).

Every module of this package is imported here, so a new uplink registers itself by being a module in
it: no list to edit.
"""

import importlib
import pkgutil

from edge_agent.sinks.base import SINKS, Sink, make_sink

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SINKS", "Sink", "make_sink"]
