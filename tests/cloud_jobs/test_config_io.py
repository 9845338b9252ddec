"""Settings and the connector options built for Databricks (Kafka/Event Hubs, Delta): checked here,
run there (the Kafka and Delta jars cannot be fetched on this machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_jobs.config import EventHubsConfig, IncidentConfig, RetrainConfig, Trigger, WindowSpec
from cloud_jobs.errors import ConfigError
from cloud_jobs.io import delta_write_options, eventhubs_options

CS = "Endpoint=sb://acme-iot.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey=abc=;EntityPath=telemetry"


def test_event_hubs_options_follow_the_kafka_endpoint_recipe() -> None:
    opts = eventhubs_options(EventHubsConfig(namespace="acme-iot", event_hub="telemetry", connection_string=CS,
                                             max_offsets_per_trigger=50000))
    assert opts["kafka.bootstrap.servers"] == "acme-iot.servicebus.windows.net:9093"
    assert opts["subscribe"] == "telemetry"
    assert opts["kafka.security.protocol"] == "SASL_SSL" and opts["kafka.sasl.mechanism"] == "PLAIN"
    assert opts["kafka.sasl.jaas.config"] == (
        "kafkashaded.org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="$ConnectionString" password="{CS}";')
    assert opts["includeHeaders"] == "true" and opts["maxOffsetsPerTrigger"] == "50000"
    plain = eventhubs_options(EventHubsConfig(namespace="acme-iot", event_hub="t", connection_string=CS,
                                              databricks=False))
    assert plain["kafka.sasl.jaas.config"].startswith("org.apache.kafka.common.security.plain.PlainLoginModule ")
    assert "maxOffsetsPerTrigger" not in plain


def test_the_connection_string_stays_out_of_repr() -> None:
    cfg = EventHubsConfig(namespace="acme-iot", event_hub="t", connection_string=CS)
    assert "SharedAccessKey" not in repr(cfg)
    with pytest.raises(ConfigError, match="connection_string"):
        EventHubsConfig(namespace="acme-iot", event_hub="t", connection_string="HostName=x")


def test_delta_appends_are_idempotent_per_batch() -> None:
    assert delta_write_options("edgeflag-silver", 17) == {"txnAppId": "edgeflag-silver", "txnVersion": "17"}


def test_one_setting_switches_between_scheduled_and_continuous() -> None:
    assert Trigger.parse("available-now").spark_args() == {"availableNow": True}
    assert Trigger.parse("processing-time=10s").spark_args() == {"processingTime": "10.0 seconds"}
    assert Trigger.parse("processing-time=500ms").spark_args() == {"processingTime": "0.5 seconds"}
    with pytest.raises(ConfigError, match="trigger"):
        Trigger.parse("sometimes")


def test_window_specs_parse_and_name_their_tables() -> None:
    assert WindowSpec.parse("1m") == WindowSpec(60, 60) and WindowSpec.parse("1m").name == "1m"
    assert WindowSpec.parse("5m/1m") == WindowSpec(300, 60) and WindowSpec.parse("5m/1m").name == "5m_1m"
    with pytest.raises(ConfigError, match="windows"):
        WindowSpec.parse("5m/2m")
    with pytest.raises(ConfigError):
        WindowSpec.parse("soon")


def test_an_incident_needs_at_least_two_devices() -> None:
    with pytest.raises(ConfigError, match="min_devices"):
        IncidentConfig(min_devices=1)


def test_a_checkpoint_from_the_two_query_layout_is_warned_about(tmp_path: Path) -> None:
    from cloud_jobs.config import AggregateConfig, InputConfig
    from cloud_jobs.fleet.job import old_layout

    cfg = AggregateConfig(input=InputConfig(path=str(tmp_path / "bronze")), out=str(tmp_path / "out"))
    assert old_layout(cfg) is None
    (Path(cfg.checkpoint_root) / "silver").mkdir(parents=True)
    assert old_layout(cfg) is None
    (Path(cfg.checkpoint_root) / "gold_1m").mkdir()
    warning = old_layout(cfg)
    assert warning is not None and "gold_1m" in warning and "new --out" in warning
    (Path(cfg.checkpoint_root) / "panes" / "_meta").mkdir(parents=True)
    assert old_layout(cfg) is None


def test_retraining_keeps_the_champions_features_and_refuses_what_it_cannot_fit() -> None:
    from cloud_jobs.config import CHAMPION_ALGO, candidate_algo
    from models.features import FEATURE_ALGO_V5, FEATURE_ALGO_VALUES, TRAIN_ALGO, FeatureSpec

    cfg = RetrainConfig(silver="s", registry="r", out="o")
    assert cfg.features == CHAMPION_ALGO and cfg.range_guard
    assert RetrainConfig(silver="s", registry="r", out="o", features="robust-blocks-v1").features == "robust-blocks-v1"
    with pytest.raises(ConfigError, match="model train"):
        RetrainConfig(silver="s", registry="r", out="o", features="robust-blocks-v2")
    # a smooth signal's champion (auto picked v5) keeps v5; a retrain must not swap it silently
    assert candidate_algo(CHAMPION_ALGO, FEATURE_ALGO_V5) == (FEATURE_ALGO_V5, "the champion's")
    assert candidate_algo(CHAMPION_ALGO, None)[0] == TRAIN_ALGO == "robust-blocks-v7"
    algo, why = candidate_algo(CHAMPION_ALGO, FEATURE_ALGO_VALUES)  # needs a baseline: said, not hidden
    assert algo == TRAIN_ALGO and "values-v1 needs `model train`" in why
    assert candidate_algo("robust-blocks-v3", FEATURE_ALGO_V5) == ("robust-blocks-v3", "as configured")
    # the job's spec: floors from per-device noise, the algorithm recorded, no baseline
    spec = FeatureSpec.from_noise(("a", "b"), [np.array([0.5, 0.2])], algo=candidate_algo(cfg.features, None)[0])
    assert spec.algo == TRAIN_ALGO and spec.level is None and "level" not in spec.to_dict()
