from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.config import build_config, load_config
from edge_agent.errors import ConfigError

BASE = {"model": {"bundle": "/models/pump"}}


def test_defaults_fill_everything_and_iot_hub_s1_is_the_default_send_rate() -> None:
    cfg = build_config(BASE, environ={})
    assert cfg.uplink.qos == 1 and cfg.uplink.max_message_bytes == 4096
    assert cfg.uplink.rate_messages_per_s == 100.0
    assert cfg.outbox.synchronous == "full"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"uplink": {"prot": 1}}, "uplink.prot"),
        ({"uplink": {"port": "eighty"}}, "uplink.port"),
        ({"uplink": {"port": 70000}}, "uplink.port"),
        ({"uplink": {"qos": 2}}, "uplink.qos"),
        ({"uplink": {"max_message_bytes": 1_000_000}}, "uplink.max_message_bytes"),
        ({"outbox": {"synchronous": "sometimes"}}, "outbox.synchronous"),
        ({"outbox": {"reserve_bytes": 4096}}, "outbox.reserve_bytes"),
        ({"source": {"type": "carrier-pigeon"}}, "source.type"),
        ({"scoring": {"batch_size": 0}}, "scoring.batch_size"),
        ({"uplink": {"compress": "maybe"}}, "uplink.compress"),
        ({"surprise": {}}, "surprise"),
    ],
)
def test_a_bad_setting_is_rejected_naming_its_key(raw: dict[str, dict[str, object]], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({**BASE, **raw}, environ={})
    assert err.value.key == key


def test_the_model_bundle_is_required() -> None:
    with pytest.raises(ConfigError, match=r"model\.bundle"):
        build_config({}, environ={})


def test_environment_overrides_the_file_with_typed_values(tmp_path: Path) -> None:
    f = tmp_path / "a.toml"
    f.write_text('[model]\nbundle = "/m"\n[uplink]\nport = 1883\n')
    cfg = load_config(f, environ={"EDGEFLAG__UPLINK__PORT": "8883", "EDGEFLAG__UPLINK__COMPRESS": "true",
                                  "EDGEFLAG__OUTBOX__MAX_BYTES": "1048576", "OTHER": "x"})
    assert (cfg.uplink.port, cfg.uplink.compress, cfg.outbox.max_bytes) == (8883, True, 1048576)
    with pytest.raises(ConfigError, match="EDGEFLAG__UPLINK__PORT"):
        load_config(f, environ={"EDGEFLAG__UPLINK__PORT": "x"})


def test_secrets_are_redacted_and_bad_toml_is_named(tmp_path: Path) -> None:
    cfg = build_config({**BASE, "uplink": {"password": "hunter2"}}, environ={})
    assert "hunter2" not in str(cfg.redacted()) and "hunter2" not in repr(cfg.redacted())
    # regression: repr() of the config itself (a traceback, a debug log) printed every secret
    secret = build_config({**BASE, "source": {"type": "mqtt", "password": "s-pw"},
                           "uplink": {"username": "u", "sas_key": "u-key", "iothub_hostname": "h", "client_id": "c"}},
                          environ={})
    hub = build_config({**BASE, "uplink": {"type": "iothub", "connection_string": "HostName=h;DeviceId=d;"
                                                                                 "SharedAccessKey=u-cs"}}, environ={})
    for text in (repr(secret), repr(hub), repr(secret.uplink), repr(hub.uplink), str(secret.redacted()),
                 str(hub.redacted())):
        assert not any(x in text for x in ("s-pw", "u-key", "u-cs")), text
    assert secret.uplink.sas_key == "u-key"  # type: ignore[attr-defined]
    bad = tmp_path / "bad.toml"
    bad.write_text("[uplink\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        # regression: an iothub uplink with no identity passed check-config, then retried forever
        ({"uplink": {"type": "iothub"}}, "uplink.connection_string"),
        ({"uplink": {"type": "iothub", "connection_string": "SharedAccessKey=x"}}, "uplink.connection_string"),
        ({"uplink": {"type": "iothub", "cert_file": "c.pem"}}, "uplink.connection_string"),
        # each plugin has its own keys: another plugin's are unknown here
        ({"uplink": {"type": "mqtt", "connection_string": "x"}}, "uplink.connection_string"),
        ({"uplink": {"type": "none", "host": "x"}}, "uplink.host"),
        ({"source": {"type": "jsonl", "host": "x"}}, "source.host"),
        ({"uplink": {"sas_key": "k"}}, "uplink.username"),
        ({"uplink": {"cert_file": "c.pem"}}, "uplink.cert_file"),
        ({"source": {"type": "simulator", "devices": 0}}, "source.devices"),
        ({"sources": [{"type": "simulator"}, {"type": "simulator"}]}, "sources"),
        ({"sources": [{"type": "simulator"}, {"type": "mqtt", "port": 0}]}, "sources[1].port"),
        ({"sources": []}, "sources"),
        ({"source": {}, "sources": [{}]}, "sources"),
    ],
)
def test_each_plugin_checks_its_own_keys(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({**BASE, **raw}, environ={})
    assert err.value.key == key, err.value


def test_an_unknown_plugin_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known: iothub, mqtt, none"):
        build_config({**BASE, "uplink": {"type": "pigeon"}}, environ={})


def test_several_sources_each_with_a_name_and_environment_overrides_by_name() -> None:
    cfg = build_config({**BASE, "sources": [{"type": "mqtt", "name": "sensors"},
                                            {"type": "jsonl", "name": "backfill", "path": "/data/old.jsonl"}]},
                       environ={"EDGEFLAG__SOURCES__SENSORS__PORT": "8883"})
    assert [(s.type, s.label) for s in cfg.sources] == [("mqtt", "sensors"), ("jsonl", "backfill")]
    assert cfg.sources[0].port == 8883  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="EDGEFLAG__SOURCES__SENSORS__PORT"):
        build_config({**BASE, "sources": [{"type": "mqtt", "name": "sensors"}]},
                     environ={"EDGEFLAG__SOURCES__SENSORS__PORT": "x"})
    with pytest.raises(ConfigError, match="no source named 'radar'"):
        build_config({**BASE, "sources": [{"type": "mqtt", "name": "sensors"}]},
                     environ={"EDGEFLAG__SOURCES__RADAR__PORT": "1"})


def test_every_plugin_ships_a_sample_config_that_loads_and_shows_every_key() -> None:
    import msgspec

    from edge_agent.sinks import SINKS
    from edge_agent.sources import SOURCES

    root = Path(__file__).resolve().parents[2]
    for role, registry, section in (("source", SOURCES, "source"), ("uplink", SINKS, "uplink")):
        for name, cls in registry.classes.items():
            sample = root / "deploy" / "plugins" / f"{role}-{name}.toml"
            assert sample.exists(), f"{cls.__name__} has no sample config {sample.name}"
            cfg = load_config(sample, environ={})
            plugin = cfg.source if role == "source" else cfg.uplink
            assert isinstance(plugin, cls.Config)
            text = sample.read_text()
            shown = {f.name for f in msgspec.structs.fields(cls.Config) if re.search(rf"^{f.name} = ", text, re.M)}
            missing = {f.name for f in msgspec.structs.fields(cls.Config)} - shown
            assert not missing, f"{sample.name} does not show {sorted(missing)}"
            assert section in text


def test_the_shipped_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "deploy" / "agent.example.toml", environ={})
    assert cfg.source.type == "mqtt" and cfg.uplink.rate_messages_per_s == 100.0
