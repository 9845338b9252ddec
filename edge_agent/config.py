"""Agent configuration: TOML file + environment overrides, validated once at start (msgspec).

Every section is a frozen `msgspec.Struct` with defaults that refuses unknown keys; wrong types and bad
values raise ConfigError naming the dotted key. The source and the uplink are unions tagged on
`type`: each plugin declares its own config class next to its code (`MqttUplinkConfig` in
`edge_agent/sinks/mqtt.py`, ...) and registers it with its class, so a new plugin is one module and
`check-config` knows its keys. An agent reads from one `[source]` or several `[[sources]]` (each with
a unique `name`, its own checkpoint and its own metrics).

Environment variables override the file: ``EDGEFLAG__UPLINK__PORT=8883`` sets ``[uplink] port``,
``EDGEFLAG__SOURCE__HOST`` the single source's host, ``EDGEFLAG__SOURCES__<NAME>__HOST`` a named
one's; values are parsed as the type of the setting (int, float, bool: true/false/1/0, str).
Secrets (passwords, keys, connection strings) never appear in `repr`, logs or status.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Union

import msgspec

from edge_agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "EDGEFLAG__"
SYNC_MODES = ("full", "normal")
LOG_LEVELS = ("debug", "info", "warning", "error")
SECRET_FIELDS = frozenset({"password", "connection_string", "sas_key"})


class Invalid(ValueError):
    """Raised by a section's checks: `field` names the setting within the section."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")


def check(ok: bool, field: str, reason: str) -> None:
    if not ok:
        raise Invalid(field, reason)


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A config table: frozen, unknown keys refused, secrets kept out of `repr`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.redacted().items())})"

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets replaced, safe to log and report."""
        out = msgspec.to_builtins(self)
        return {k: ("***" if k in SECRET_FIELDS and v else v) for k, v in out.items()}


class PluginConfig(Section, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """Base of every source's and uplink's config: a member of a union tagged on `type`."""

    @property
    def type(self) -> str:
        return str(type(self).__struct_config__.tag)


class SourceConfig(PluginConfig, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """Keys every source has. `name`: unique among `[[sources]]` (default: the type); it names the
    source's checkpoint and its metrics."""

    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.type


class UplinkConfig(PluginConfig, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    """Keys every uplink has: message size, compression, the token bucket, in-flight window, backoff.

    rate_messages_per_s: the default (100/s) is one IoT Hub S1 unit's device-to-cloud send limit; 0 disables it.
    """

    max_message_bytes: int = 4096
    compress: bool = False
    rate_messages_per_s: float = 100.0
    max_inflight: int = 256
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        check(1024 <= self.max_message_bytes <= 256 * 1024, "max_message_bytes", "must be in 1024..262144")
        check(self.rate_messages_per_s >= 0, "rate_messages_per_s", "must be >= 0 (0 = unlimited)")
        check(self.max_inflight >= 1, "max_inflight", "must be >= 1")
        check(0 < self.backoff_initial_s <= self.backoff_max_s, "backoff_initial_s",
              "must be > 0 and <= backoff_max_s")

    @property
    def endpoint(self) -> str:
        """Where it sends, for logs (no secrets)."""
        return ""


class AgentSection(Section, frozen=True, forbid_unknown_fields=True):
    """[agent]: identity and state."""

    device_id: str = "edge-gateway"
    state_dir: str = "/var/lib/edgeflag"
    status_interval_s: float = 30.0

    def __post_init__(self) -> None:
        check(bool(self.state_dir), "state_dir", "required")


class ModelSection(Section, frozen=True, forbid_unknown_fields=True):
    """[model]: the bundle to score with (a bundle directory or a registry root)."""

    bundle: str = ""
    name: str = ""
    trusted_key: str = ""

    def __post_init__(self) -> None:
        check(bool(self.bundle), "bundle", "required: path to a model bundle or registry")


#: The bounds of [scoring] batch_size and linger_ms, in the config file and as desired properties alike.
MAX_BATCH_SIZE = 65536
MAX_LINGER_MS = 10_000


class ScoringSection(Section, frozen=True, forbid_unknown_fields=True):
    """[scoring]: micro-batching. The agent scores whatever has arrived, up to batch_size, after waiting
    up to linger_ms for more once the first reading is in (not for readings from a source that waits for
    their acknowledgement: the MQTT source). Each micro-batch is one onnxruntime call, one outbox commit
    and, on a quiet link, one uplink message: at 20 readings/s the default 200 ms saves ~40 % of the CPU
    time; 0 handles every reading as soon as it arrives.

    Readings whose channel values fall outside [min_value, max_value] are quarantined."""

    batch_size: int = 1024
    linger_ms: float = 200.0
    threads: int = 1
    min_value: float = -1e9
    max_value: float = 1e9

    def __post_init__(self) -> None:
        check(1 <= self.batch_size <= MAX_BATCH_SIZE, "batch_size", f"must be in 1..{MAX_BATCH_SIZE}")
        check(0 <= self.linger_ms <= MAX_LINGER_MS, "linger_ms", f"must be in 0..{MAX_LINGER_MS}")
        check(self.threads >= 1, "threads", "must be >= 1")
        check(self.min_value < self.max_value, "min_value", "must be below scoring.max_value")


class EventsSection(Section, frozen=True, forbid_unknown_fields=True):
    """[events]: one alert per anomaly event (`models.events`): an event opens on a flagged reading and
    closes after close_after consecutive readings below release × threshold; while open it is updated at
    most every update_every_s of event time, when it has grown. An open event of a device that has sent
    nothing for idle_close_s seconds (wall clock; 0 = never) closes as of its last reading."""

    close_after: int = 30
    release: float = 0.9
    update_every_s: float = 10.0
    idle_close_s: float = 600.0

    def __post_init__(self) -> None:
        check(self.close_after >= 1, "close_after", "must be >= 1")
        check(0 < self.release <= 1, "release", "must be in (0, 1]")
        check(self.update_every_s >= 0, "update_every_s", "must be >= 0")
        check(self.idle_close_s >= 0, "idle_close_s", "must be >= 0")


class OutboxSection(Section, frozen=True, forbid_unknown_fields=True):
    """[outbox]: the durable store between scoring and the uplink."""

    max_bytes: int = 256 * 1024 * 1024
    synchronous: str = "full"
    reserve_bytes: int = 8 * 1024 * 1024  # disk kept back for a full disk (docs/outbox.md, 8.); 0 = none

    def __post_init__(self) -> None:
        check(self.synchronous in SYNC_MODES, "synchronous", f"must be one of {', '.join(SYNC_MODES)}")
        check(self.max_bytes >= 64 * 1024, "max_bytes", "must be at least 65536")
        check(self.reserve_bytes == 0 or self.reserve_bytes >= 256 * 1024, "reserve_bytes",
              "must be 0 (no reserve) or at least 262144")


class MetricsSection(Section, frozen=True, forbid_unknown_fields=True):
    """[metrics]: Prometheus endpoint (port 0 = off)."""

    port: int = 0
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        check(0 <= self.port <= 65535, "port", "must be 0 (off) or a TCP port")


class LogSection(Section, frozen=True, forbid_unknown_fields=True):
    level: str = "info"

    def __post_init__(self) -> None:
        check(self.level.lower() in LOG_LEVELS, "level", "must be debug, info, warning or error")


class AgentConfig(msgspec.Struct, frozen=True):
    agent: AgentSection
    model: ModelSection
    sources: tuple[SourceConfig, ...]
    scoring: ScoringSection
    events: EventsSection
    outbox: OutboxSection
    uplink: UplinkConfig
    metrics: MetricsSection
    log: LogSection

    SECTIONS: ClassVar[dict[str, type[Section]]] = {
        "agent": AgentSection, "model": ModelSection, "scoring": ScoringSection, "events": EventsSection,
        "outbox": OutboxSection,
        "metrics": MetricsSection, "log": LogSection}

    @property
    def state_dir(self) -> Path:
        return Path(self.agent.state_dir)

    @property
    def source(self) -> SourceConfig:
        """The first (often the only) source."""
        return self.sources[0]

    def redacted(self) -> dict[str, Any]:
        """The config as a dict with secrets replaced, safe to log."""
        out: dict[str, Any] = {name: getattr(self, name).redacted() for name in self.SECTIONS}
        out["sources"] = [{"type": s.type, **s.redacted()} for s in self.sources]
        out["uplink"] = {"type": self.uplink.type, **self.uplink.redacted()}
        return out

    def __repr__(self) -> str:
        return f"AgentConfig({self.redacted()!r})"


_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")
_INVALID = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*): (?P<reason>.*)$", re.S)


def _convert(key: str, raw: Any, typ: Any) -> Any:
    """msgspec.convert with errors as ConfigError naming the dotted key."""
    if not isinstance(raw, Mapping):
        raise ConfigError(key, "must be a table")
    try:
        return msgspec.convert(dict(raw), type=typ, strict=False)
    except msgspec.ValidationError as exc:
        m = _PATH.match(str(exc))
        msg, path = (m["msg"], m["path"] or "") if m else (str(exc), "")
        if unknown := _UNKNOWN.match(msg):
            member = next((m for m in getattr(typ, "__args__", (typ,))
                           if getattr(m.__struct_config__, "tag", None) in (None, raw.get("type"))), typ)
            names = sorted(f.name for f in msgspec.structs.fields(member))
            raise ConfigError(f"{key}.{unknown['field']}", f"unknown setting (known: {', '.join(names)})") from None
        if (inv := _INVALID.match(msg)) and not path:
            raise ConfigError(f"{key}.{inv['field']}", inv["reason"]) from None
        if path == ".type" and msg.startswith("Invalid value"):
            raise ConfigError(f"{key}.type", f"{msg}; known: {', '.join(_known(typ))}") from None
        if path.startswith(".") and path[1:] in raw:
            msg = f"{msg} ({raw[path[1:]]!r})"
        raise ConfigError(key + path, msg) from None


def _known(typ: Any) -> list[str]:
    members = getattr(typ, "__args__", (typ,))
    return sorted(str(m.__struct_config__.tag) for m in members)


def _plugin_union(role: str) -> Any:
    """The tagged union of every registered source or uplink config."""
    if role == "source":
        from edge_agent.sources import SOURCES as registry
    else:
        from edge_agent.sinks import SINKS as registry  # type: ignore[assignment]
    configs = tuple(cls.Config for cls in registry.classes.values())
    return Union[configs]  # noqa: UP007 - built at run time from the registry


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """EDGEFLAG__SECTION__KEY (and EDGEFLAG__SOURCES__NAME__KEY) as nested dicts of strings."""
    out: dict[str, Any] = {}
    for k, v in environ.items():
        if not k.startswith(ENV_PREFIX):
            continue
        parts = k[len(ENV_PREFIX):].lower().split("__")
        if not all(parts) or not (len(parts) == 2 or (len(parts) == 3 and parts[0] == "sources")):
            raise ConfigError(k, "environment overrides look like EDGEFLAG__SECTION__KEY "
                                 "(or EDGEFLAG__SOURCES__NAME__KEY)")
        if len(parts) == 3:
            out.setdefault("sources", {}).setdefault(parts[1], {})[parts[2]] = v
        else:
            out.setdefault(parts[0], {})[parts[1]] = v
    return out


def _source_tables(merged: dict[str, Any], env: dict[str, Any], from_env: dict[str, str]) -> list[tuple[str, Any]]:
    """[(dotted key, table)] for `[source]` or `[[sources]]`, with environment overrides applied."""
    if "source" in merged and "sources" in merged:
        raise ConfigError("sources", "use either [source] or [[sources]], not both")
    if "sources" in merged:
        tables = merged["sources"]
        if not isinstance(tables, list) or not tables:
            raise ConfigError("sources", "must be a non-empty array of tables ([[sources]])")
        out = [(f"sources[{i}]", dict(t) if isinstance(t, Mapping) else t) for i, t in enumerate(tables)]
    else:
        src = merged.get("source", {})
        out = [("source", dict(src) if isinstance(src, Mapping) else src)]
    for _key, table in out:
        if isinstance(table, dict):
            table.setdefault("type", "simulator")
    if "source" in env:
        if len(out) != 1:
            raise ConfigError("EDGEFLAG__SOURCE__", "several [[sources]]: use EDGEFLAG__SOURCES__<NAME>__KEY")
        out[0][1].update(env["source"])
        from_env.update({f"{out[0][0]}.{k}": f"{ENV_PREFIX}SOURCE__{k.upper()}" for k in env["source"]})
    for name, values in env.get("sources", {}).items():
        match = [(k, t) for k, t in out if isinstance(t, dict) and (t.get("name") or t.get("type")) == name]
        if not match:
            raise ConfigError(f"EDGEFLAG__SOURCES__{name.upper()}__", f"no source named {name!r}")
        match[0][1].update(values)
        from_env.update({f"{match[0][0]}.{k}": f"{ENV_PREFIX}SOURCES__{name.upper()}__{k.upper()}" for k in values})
    return out


def build_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Validated AgentConfig from a parsed TOML mapping plus environment overrides."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    env = env_overrides(os.environ if environ is None else environ)
    from_env: dict[str, str] = {}  # dotted key -> the environment variable that set it
    for section, values in env.items():
        if section not in ("source", "sources"):
            merged.setdefault(section, {}).update(values)
            from_env.update({f"{section}.{k}": f"{ENV_PREFIX}{section.upper()}__{k.upper()}" for k in values})
    known = [*AgentConfig.SECTIONS, "source", "sources", "uplink"]
    for name in merged:
        if name not in known:
            raise ConfigError(name, f"unknown section (known: {', '.join(known)})")
    try:
        sections = {name: _convert(name, merged.get(name, {}), cls) for name, cls in AgentConfig.SECTIONS.items()}
        sources = tuple(_convert(key, table, _plugin_union("source"))
                        for key, table in _source_tables(merged, env, from_env))
        labels = [s.label for s in sources]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError("sources", f"source names must be unique; set `name` (repeated: {', '.join(dup)})")
        uplink = dict(merged.get("uplink", {})) if isinstance(merged.get("uplink", {}), Mapping) else merged["uplink"]
        if isinstance(uplink, dict):
            uplink.setdefault("type", "mqtt")
        return AgentConfig(sources=sources, uplink=_convert("uplink", uplink, _plugin_union("uplink")), **sections)
    except ConfigError as exc:
        if exc.key in from_env:  # say where the bad value came from
            raise ConfigError(exc.key, f"{exc.reason} (from environment variable {from_env[exc.key]})") from None
        raise


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and validate a TOML config file (plus environment overrides)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(str(p), "config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"not valid TOML: {exc}") from None
    return build_config(raw, environ)
