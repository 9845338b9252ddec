from __future__ import annotations

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
                           "uplink": {"password": "u-pw", "sas_key": "u-key", "connection_string": "u-cs"}}, environ={})
    assert not any(x in repr(secret) for x in ("s-pw", "u-pw", "u-key", "u-cs"))
    assert secret.uplink.sas_key == "u-key"
    bad = tmp_path / "bad.toml"
    bad.write_text("[uplink\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_the_shipped_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "deploy" / "agent.example.toml", environ={})
    assert cfg.source.type == "mqtt" and cfg.uplink.rate_messages_per_s == 100.0
