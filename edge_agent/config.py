"""Agent configuration: TOML file + environment overrides, validated once at start.

Every section is a frozen dataclass with defaults. Unknown keys, wrong types and bad
values raise ConfigError naming the dotted key. Environment variables override the file:
``EDGEFLAG__UPLINK__PORT=8883`` sets ``[uplink] port``; values are parsed as the type
of the setting (int, float, bool: true/false/1/0, str).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from edge_agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "EDGEFLAG__"
SOURCES = ("simulator", "mqtt", "jsonl")
UPLINKS = ("mqtt", "iothub", "none")
SYNC_MODES = ("full", "normal")


@dataclass(frozen=True)
class AgentSection:
    """[agent]: identity and state."""

    device_id: str = "edge-gateway"
    state_dir: str = "/var/lib/edgeflag"
    status_interval_s: float = 30.0


@dataclass(frozen=True)
class ModelSection:
    """[model]: the bundle to score with (a bundle directory or a registry root)."""

    bundle: str = ""
    name: str = ""
    trusted_key: str = ""


@dataclass(frozen=True)
class SourceSection:
    """[source]: where readings come from.

    type = simulator: `devices`, `seed`, `rate` (readings/s, 0 = as fast as possible),
    `readings` (per device, 0 = forever), `anomaly_rate`.
    type = mqtt: `host`, `port`, `topic_prefix`, `client_id`, `ca_file`, `username`, `password`.
    type = jsonl: `path` ("-" = stdin).
    """

    type: str = "simulator"
    devices: int = 5
    seed: int = 0
    rate: float = 0.0
    readings: int = 0
    anomaly_rate: float = 0.004
    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "edgeflag/sensors"
    client_id: str = "edgeflag-agent-source"
    ca_file: str = ""
    username: str = ""
    password: str = field(default="", repr=False)  # secrets never in repr (logs, tracebacks)
    path: str = "-"


@dataclass(frozen=True)
class ScoringSection:
    """[scoring]: micro-batching. The agent scores whatever has arrived, up to batch_size."""

    batch_size: int = 1024
    threads: int = 1
    # readings whose channel values fall outside [min_value, max_value] are quarantined
    min_value: float = -1e9
    max_value: float = 1e9


@dataclass(frozen=True)
class OutboxSection:
    """[outbox]: the durable store between scoring and the uplink."""

    max_bytes: int = 256 * 1024 * 1024
    synchronous: str = "full"


@dataclass(frozen=True)
class UplinkSection:
    """[uplink]: where scored readings go.

    type = mqtt: any MQTT broker, IoT Hub topic layout. type = iothub: Azure IoT Hub via the
    azure-iot-device SDK (connection_string, or cert_file/key_file + iothub_hostname + device_id;
    ca_file = server verification certificate). type = none: keep everything in the outbox.
    rate_messages_per_s: token bucket; the default (100/s) is one IoT Hub S1 unit's
    device-to-cloud send limit; 0 disables it.
    """

    type: str = "mqtt"
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    qos: int = 1
    max_message_bytes: int = 4096
    compress: bool = False
    rate_messages_per_s: float = 100.0
    max_inflight: int = 256
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    keepalive_s: int = 30
    connection_string: str = field(default="", repr=False)
    iothub_hostname: str = ""
    device_id: str = ""
    gateway_hostname: str = ""
    dialect: str = "scoped"
    # mqtt: sign a fresh SAS token per connection (IoT Hub or the hub's front end)
    sas_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class MetricsSection:
    """[metrics]: Prometheus endpoint (port 0 = off)."""

    port: int = 0
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class LogSection:
    level: str = "info"


@dataclass(frozen=True)
class AgentConfig:
    agent: AgentSection = field(default_factory=AgentSection)
    model: ModelSection = field(default_factory=ModelSection)
    source: SourceSection = field(default_factory=SourceSection)
    scoring: ScoringSection = field(default_factory=ScoringSection)
    outbox: OutboxSection = field(default_factory=OutboxSection)
    uplink: UplinkSection = field(default_factory=UplinkSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    log: LogSection = field(default_factory=LogSection)

    @property
    def state_dir(self) -> Path:
        return Path(self.agent.state_dir)

    def redacted(self) -> dict[str, Any]:
        """The config as a dict with secrets replaced, safe to log."""
        out = dataclasses.asdict(self)
        for section in out.values():
            for k in list(section):
                if k in ("password", "connection_string", "sas_key") and section[k]:
                    section[k] = "***"
        return out


def _coerce(key: str, value: Any, typ: Any) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(key, f"expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return value


def _section(name: str, cls: type, raw: Mapping[str, Any]) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(name, "must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for k in raw:
        if k not in known:
            raise ConfigError(f"{name}.{k}", f"unknown setting (known: {', '.join(sorted(known))})")
    return cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in raw.items()})


def _validate(cfg: AgentConfig) -> None:
    def check(ok: bool, key: str, reason: str) -> None:
        if not ok:
            raise ConfigError(key, reason)

    check(cfg.source.type in SOURCES, "source.type", f"must be one of {', '.join(SOURCES)}")
    check(cfg.uplink.type in UPLINKS, "uplink.type", f"must be one of {', '.join(UPLINKS)}")
    check(cfg.outbox.synchronous in SYNC_MODES, "outbox.synchronous", f"must be one of {', '.join(SYNC_MODES)}")
    check(cfg.outbox.max_bytes >= 64 * 1024, "outbox.max_bytes", "must be at least 65536")
    check(1 <= cfg.scoring.batch_size <= 65536, "scoring.batch_size", "must be in 1..65536")
    check(cfg.scoring.threads >= 1, "scoring.threads", "must be >= 1")
    check(cfg.scoring.min_value < cfg.scoring.max_value, "scoring.min_value", "must be below scoring.max_value")
    check(1024 <= cfg.uplink.max_message_bytes <= 256 * 1024, "uplink.max_message_bytes", "must be in 1024..262144")
    check(cfg.uplink.qos in (0, 1), "uplink.qos", "must be 0 or 1")
    check(cfg.uplink.dialect in ("scoped", "iothub"), "uplink.dialect", "must be scoped or iothub")
    check(cfg.uplink.rate_messages_per_s >= 0, "uplink.rate_messages_per_s", "must be >= 0 (0 = unlimited)")
    check(cfg.uplink.max_inflight >= 1, "uplink.max_inflight", "must be >= 1")
    check(0 < cfg.uplink.backoff_initial_s <= cfg.uplink.backoff_max_s, "uplink.backoff_initial_s",
          "must be > 0 and <= uplink.backoff_max_s")
    check(1 <= cfg.uplink.port <= 65535, "uplink.port", "must be a TCP port")
    check(1 <= cfg.source.port <= 65535, "source.port", "must be a TCP port")
    check(cfg.source.devices >= 1, "source.devices", "must be >= 1")
    check(cfg.source.rate >= 0, "source.rate", "must be >= 0")
    check(0 <= cfg.metrics.port <= 65535, "metrics.port", "must be 0 (off) or a TCP port")
    check(cfg.log.level.lower() in ("debug", "info", "warning", "error"), "log.level",
          "must be debug, info, warning or error")
    check(bool(cfg.model.bundle), "model.bundle", "required: path to a model bundle or registry")
    check(bool(cfg.agent.state_dir), "agent.state_dir", "required")


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for k, v in environ.items():
        if not k.startswith(ENV_PREFIX):
            continue
        parts = k[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(k, "environment overrides look like EDGEFLAG__SECTION__KEY")
        out.setdefault(parts[0], {})[parts[1]] = v
    return out


def build_config(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Validated AgentConfig from a parsed TOML mapping plus environment overrides."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    from_env: set[str] = set()
    for section, values in env_overrides(os.environ if environ is None else environ).items():
        merged.setdefault(section, {}).update(values)
        from_env |= {f"{section}.{k}" for k in values}
    sections = {f.name: get_type_hints(AgentConfig)[f.name] for f in fields(AgentConfig)}
    for name in merged:
        if name not in sections:
            raise ConfigError(name, f"unknown section (known: {', '.join(sections)})")
    try:
        kwargs = {name: _section(name, cls, merged.get(name, {})) for name, cls in sections.items()}
        cfg = AgentConfig(**kwargs)
        _validate(cfg)
    except ConfigError as exc:
        if exc.key in from_env:  # say where the bad value came from
            env = ENV_PREFIX + exc.key.upper().replace(".", "__")
            raise ConfigError(exc.key, f"{exc.reason} (from environment variable {env})") from None
        raise
    return cfg


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
