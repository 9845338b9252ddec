"""Name -> class registries for the agent's pluggable roles (sources, sinks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from edge_agent.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes registered under the names a config's `type` setting uses.

    A plugin class declares its config (`Config`, a msgspec Struct tagged with the same name) next to
    its code; the agent's config is the union of the registered ones. `get` raises ConfigError naming
    the setting and the known names for an unknown name.
    """

    def __init__(self, setting: str, role: str) -> None:
        self.setting, self.role = setting, role
        self.classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            config = getattr(cls, "Config", None)
            tag = getattr(getattr(config, "__struct_config__", None), "tag", None)
            if tag != name:
                raise TypeError(f"{self.role} {cls.__name__}: its Config must be a config Struct tagged {name!r}")
            cls.name = name  # type: ignore[attr-defined]
            self.classes[name] = cls
            return cls

        return deco

    def get(self, name: str) -> type[T]:
        try:
            return self.classes[name]
        except KeyError:
            known = ", ".join(sorted(self.classes))
            raise ConfigError(self.setting, f"unknown {self.role} {name!r}; known: {known}") from None
