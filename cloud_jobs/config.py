"""Settings of the Spark jobs: frozen dataclasses, validated once when a job is built.

Every error names the setting (`ConfigError.key`). Secrets (the Event Hubs connection string) are
kept out of `repr` and so out of logs and progress lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from cloud_jobs.errors import ConfigError
from models.features import (
    FEATURE_ALGO,
    FEATURE_ALGO_V3,
    FEATURE_ALGO_V4,
    FEATURE_ALGO_V5,
    FEATURE_ALGO_V6,
    FEATURE_ALGO_V7,
    TRAIN_ALGO,
)

#: Feature algorithms the retraining job fits (its spec comes from per-device noise estimates).
RETRAIN_ALGOS = (FEATURE_ALGO, FEATURE_ALGO_V3, FEATURE_ALGO_V4, FEATURE_ALGO_V5, FEATURE_ALGO_V6,
                 FEATURE_ALGO_V7)
#: `RetrainConfig.features` default: each type's candidate keeps its champion's algorithm (`candidate_algo`).
CHAMPION_ALGO = "champion"


def candidate_algo(requested: str, champion: str | None) -> tuple[str, str]:
    """The feature algorithm of a type's candidate, and why in words.

    `requested` is `RetrainConfig.features`: an algorithm of `RETRAIN_ALGOS` is used as named;
    ``"champion"`` keeps the champion's (``model train --features auto`` may have picked v5 for a smooth
    signal: a retrain must not silently swap it for the time-series default), falling back to
    `TRAIN_ALGO` when there is no champion or the job cannot fit its algorithm (v2 and values-v1 learn a
    baseline from the readings in one place: `model train`)."""
    if requested != CHAMPION_ALGO:
        return requested, "as configured"
    if champion is None:
        return TRAIN_ALGO, "no champion: the time-series default"
    if champion in RETRAIN_ALGOS:
        return champion, "the champion's"
    return TRAIN_ALGO, (f"the champion's {champion} needs `model train` (a baseline learned from the readings); "
                        f"the time-series default instead")


class InputFormat(str, Enum):
    BRONZE = "bronze"        # the hub's bronze landing (JSON lines, the local default)
    IOTHUB = "iothub"        # IoT Hub message routing to storage, JSON encoding (Auto Loader on Databricks)
    EVENTHUBS = "eventhubs"  # IoT Hub routing to Event Hubs, through Spark's Kafka source


class TableFormat(str, Enum):
    PARQUET = "parquet"  # local; each micro-batch lands atomically in its own batch_id= directory
    DELTA = "delta"      # Databricks; idempotent appends with txnAppId/txnVersion


@dataclass(frozen=True)
class Trigger:
    """``available-now`` (a scheduled run: process what is there, then stop) or ``processing-time=10s``."""

    available_now: bool = True
    interval_s: float = 10.0

    @classmethod
    def parse(cls, text: str) -> Trigger:
        if text == "available-now":
            return cls(True)
        m = re.fullmatch(r"processing-time=(\d+(?:\.\d+)?)(ms|s|m)?", text)
        if not m:
            raise ConfigError("trigger", f"use 'available-now' or 'processing-time=10s', got {text!r}")
        scale = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
        return cls(False, float(m.group(1)) * scale)

    def spark_args(self) -> dict[str, object]:
        """Keyword arguments of `DataStreamWriter.trigger`."""
        return {"availableNow": True} if self.available_now else {"processingTime": f"{self.interval_s} seconds"}


def _seconds(text: str, key: str) -> int:
    m = re.fullmatch(r"(\d+)(s|m|h)", text.strip())
    if not m or int(m.group(1)) == 0:
        raise ConfigError(key, f"expected a duration like 30s, 1m or 1h, got {text!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


@dataclass(frozen=True)
class WindowSpec:
    """An event-time window: tumbling (slide == duration) or sliding. Parsed from ``1m`` or ``5m/1m``."""

    duration_s: int
    slide_s: int

    def __post_init__(self) -> None:
        if self.slide_s <= 0 or self.duration_s % self.slide_s:
            raise ConfigError("windows", f"the slide must divide the window: {self.duration_s}s/{self.slide_s}s")

    @classmethod
    def parse(cls, text: str) -> WindowSpec:
        dur, _, slide = text.partition("/")
        d = _seconds(dur, "windows")
        return cls(d, _seconds(slide, "windows") if slide else d)

    @property
    def name(self) -> str:
        """Table-name suffix: ``1m`` for tumbling, ``5m_1m`` for sliding."""
        def fmt(s: int) -> str:
            return f"{s // 60}m" if s % 60 == 0 else f"{s}s"

        if self.slide_s == self.duration_s:
            return fmt(self.duration_s)
        return f"{fmt(self.duration_s)}_{fmt(self.slide_s)}"


@dataclass(frozen=True)
class EventHubsConfig:
    """IoT Hub's Event Hubs-compatible endpoint (or a routed Event Hub), read with the Kafka protocol."""

    namespace: str                     # <ns> of <ns>.servicebus.windows.net
    event_hub: str                     # the Kafka topic
    connection_string: str = field(default="", repr=False)
    consumer_group: str = "$Default"
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int | None = None
    databricks: bool = True            # Databricks ships the Kafka client shaded as kafkashaded.*

    def __post_init__(self) -> None:
        if not self.namespace or not self.event_hub:
            raise ConfigError("eventhubs", "namespace and event_hub are required")
        if not self.connection_string.startswith("Endpoint=sb://"):
            raise ConfigError("eventhubs.connection_string", "must be an Event Hubs connection string (Endpoint=sb://…)")


@dataclass(frozen=True)
class InputConfig:
    format: InputFormat = InputFormat.BRONZE
    path: str = "bronze"
    max_files_per_trigger: int = 1000
    eventhubs: EventHubsConfig | None = None

    def __post_init__(self) -> None:
        if self.format is InputFormat.EVENTHUBS and self.eventhubs is None:
            raise ConfigError("input.eventhubs", "the eventhubs input needs its settings")
        if self.max_files_per_trigger < 1:
            raise ConfigError("input.max_files_per_trigger", "must be >= 1")


@dataclass(frozen=True)
class IncidentConfig:
    """When a device type has a fleet incident in a window, and where incidents go.

    A device is anomalous in a window when at least `device_anomaly_rate` of its readings there are
    flagged. A window of a type raises (or extends) an incident when at least `min_devices` of its
    devices are anomalous, or at least `min_fraction` of those reporting (and never fewer than two:
    one device is not a fleet event), **and** that many anomalous devices at once would come by
    chance with probability at most `max_chance` if each device were anomalous independently at the
    type's own baseline rate (binomial tail; the baseline is learned from the type's earlier windows
    without the condition, `baseline_windows` of them weighing most, starting from `baseline_prior`).
    So independent faults that coincide in a large fleet are not an incident; correlated ones are.
    `max_chance = 1` keeps the count and fraction rule alone. An open incident closes after
    `close_after_windows` windows of that type without the condition.
    """

    min_devices: int = 3
    min_fraction: float = 0.3
    device_anomaly_rate: float = 0.1
    max_chance: float = 1e-3
    baseline_windows: int = 60
    baseline_prior: float = 0.01
    close_after_windows: int = 2
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0
    webhook_attempts: int = 5
    webhook_backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.min_devices < 2:
            raise ConfigError("incidents.min_devices", "must be >= 2 (one device is not a fleet event)")
        if not 0 < self.min_fraction <= 1 or not 0 < self.device_anomaly_rate <= 1:
            raise ConfigError("incidents", "min_fraction and device_anomaly_rate must be in (0, 1]")
        if not 0 < self.max_chance <= 1 or not 0 < self.baseline_prior < 1:
            raise ConfigError("incidents", "max_chance must be in (0, 1] and baseline_prior in (0, 1)")
        if self.baseline_windows < 1:
            raise ConfigError("incidents.baseline_windows", "must be >= 1")
        if self.close_after_windows < 1 or self.webhook_attempts < 1:
            raise ConfigError("incidents", "close_after_windows and webhook_attempts must be >= 1")


@dataclass(frozen=True)
class AggregateConfig:
    """The fleet aggregation job: bronze -> silver (+ quarantine) -> gold windows -> incidents.

    Tables under `out`: silver, quarantine, gold_device_<w>, gold_fleet_<w> (one pair per window
    spec), incidents (+ incidents.jsonl). Checkpoints under `checkpoint` (default ``<out>/_checkpoints``).
    Incidents come from the first window spec.
    """

    input: InputConfig
    out: str
    table_format: TableFormat = TableFormat.PARQUET
    trigger: Trigger = Trigger()
    watermark_s: int = 120
    windows: tuple[WindowSpec, ...] = (WindowSpec(60, 60), WindowSpec(300, 60))
    incidents: IncidentConfig = IncidentConfig()
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if not self.windows:
            raise ConfigError("windows", "at least one window spec")
        if self.watermark_s < 0:
            raise ConfigError("watermark_s", "must be >= 0")

    @property
    def checkpoint_root(self) -> str:
        return self.checkpoint or f"{self.out.rstrip('/')}/_checkpoints"

    def table(self, name: str) -> str:
        return f"{self.out.rstrip('/')}/{name}"


@dataclass(frozen=True)
class GateConfig:
    """When a candidate may replace the production model of its type (figures on a holdout it never saw).

    With labels in the holdout: its F1 and event recall may trail the champion's by at most
    `f1_tolerance` / `event_recall_tolerance`; without a champion, F1 must reach `min_f1`.
    Without labels and with a champion measured on the same holdout: its alert *events* (one per fault,
    as the agent announces them) at most `alert_rate_factor` x the champion's, or one per 1,000 readings,
    and its alert rate per reading at most `max_alert_rate`, or `alert_rate_factor` x the champion's when
    the champion alerts more than that (a holdout with real faults in it raises both models; a candidate
    that flags more of a fault's readings is not noisier: `cloud_jobs.retrain.gate._against_champion`).
    Without labels and without a champion: its alert rate at most `max_alert_rate`. Either way a rate is
    refused only when its one-sided Wilson lower bound at `alert_rate_confidence` is above the limit, so a
    few chance alerts on a small holdout do not refuse a sound model; and its score distribution may shift
    from training to the holdout by a PSI of at most `max_psi`. Always: its channels are sent by every device
    of the type, and ONNX matches its reference (checked when the bundle is built).
    """

    f1_tolerance: float = 0.02
    event_recall_tolerance: float = 0.05
    min_f1: float = 0.2
    max_alert_rate: float = 0.02
    alert_rate_factor: float = 2.0
    max_psi: float = 0.25
    min_holdout_rows: int = 200
    alert_rate_confidence: float = 0.99

    def __post_init__(self) -> None:
        for k in ("f1_tolerance", "event_recall_tolerance", "min_f1", "max_alert_rate", "max_psi"):
            if not 0 <= getattr(self, k) <= 1:
                raise ConfigError(f"gate.{k}", "must be in [0, 1]")
        if not 0.5 <= self.alert_rate_confidence < 1:
            raise ConfigError("gate.alert_rate_confidence", "must be in [0.5, 1)")
        if self.alert_rate_factor < 1 or self.min_holdout_rows < 1:
            raise ConfigError("gate", "alert_rate_factor must be >= 1 and min_holdout_rows >= 1")


@dataclass(frozen=True)
class RolloutConfig:
    """How a promoted model reaches the agents of its type through the hub's twins.

    A canary set (`canary_fraction` of the type's devices, at least one) gets the desired ``model``
    first. Each must report ``model_rollout.status == "ok"`` for the new version within
    `report_timeout_s`; then, once `min_canary_readings` scored by the new version have arrived in silver
    (waiting at most `watch_timeout_s`, polling every `poll_s`), each device behind the canaries is judged
    as the gate judges alert rates: *over* when its rate's one-sided Wilson lower bound at
    `canary_confidence` is above `max_canary_alert_rate` and above the control group's upper bound (the
    rest of the type, on the previous model over the same time). The canaries are rolled back when most
    of their devices are over, so a canary device that meets real faults in its few hundred readings is
    not taken for a broken model. Pass: the rest of the type follows. Fail: the canaries go back to the
    previous model and the reason is recorded.
    """

    hub_state: str | None = None          # the hub's state directory (registry tags, twins); None: no rollout
    broker: str = "127.0.0.1:1883"
    bundle_url: str | None = None         # base URL agents fetch bundles from (default: file:// of the registry)
    canary_fraction: float = 0.2
    report_timeout_s: float = 60.0
    min_canary_readings: int = 200
    max_canary_alert_rate: float = 0.05
    canary_confidence: float = 0.99
    watch_timeout_s: float = 180.0
    poll_s: float = 2.0
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.canary_fraction <= 1:
            raise ConfigError("rollout.canary_fraction", "must be in (0, 1]")
        if not 0 <= self.max_canary_alert_rate <= 1:
            raise ConfigError("rollout.max_canary_alert_rate", "must be in [0, 1]")
        if not 0.5 <= self.canary_confidence < 1:
            raise ConfigError("rollout.canary_confidence", "must be in [0.5, 1)")
        if min(self.report_timeout_s, self.watch_timeout_s, self.poll_s) <= 0 or self.min_canary_readings < 1:
            raise ConfigError("rollout", "timeouts, poll_s and min_canary_readings must be positive")


@dataclass(frozen=True)
class RetrainConfig:
    """The retraining job: silver over [since, until) -> features per device -> a model per device type ->
    gate against the type's champion -> register (file registry + MLflow) -> rollout.

    `holdout_fraction`: the newest part of each type's time range, never fitted, on which the gate
    compares candidate and champion. `exclude_flagged`: drop readings the edge flagged from fitting;
    labelled readings (from `labels`, e.g. the simulator's JSONL) and readings of a type inside one of
    its incidents (`incidents`, the aggregation's incidents.jsonl) are excluded too. Features are still
    computed over every reading, in seq order per device, so windows see the whole history.
    """

    silver: str
    registry: str
    out: str
    table_format: TableFormat = TableFormat.PARQUET
    since: str | None = None              # ISO-8601 event time, inclusive
    until: str | None = None              # exclusive
    device_types: tuple[str, ...] = ()    # empty: every type in the range
    labels: str | None = None
    incidents: str | None = None
    holdout_fraction: float = 0.25
    exclude_flagged: bool = True
    exclude_labelled: bool = True
    min_rows: int = 1000
    n_estimators: int = 100
    max_samples: int = 256
    target_fpr: float = 0.001
    seed: int = 0
    # "champion" (each type keeps its champion's algorithm: `candidate_algo`) or one of RETRAIN_ALGOS
    features: str = CHAMPION_ALGO
    range_guard: bool = True                # models.training.guard: score rows outside the fitted range higher
    sign_key: str | None = None
    mlflow_tracking_uri: str | None = None  # default: sqlite under `out`; "databricks" on Databricks
    mlflow_registry_uri: str | None = None  # "databricks-uc" for Unity Catalog
    model_name_prefix: str = "edgeflag-"    # Unity Catalog: "<catalog>.<schema>.edgeflag-"
    experiment: str = "edgeflag-retrain"
    gate: GateConfig = GateConfig()
    rollout: RolloutConfig = RolloutConfig()

    def __post_init__(self) -> None:
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError("holdout_fraction", "must be in (0, 1)")
        if not 0 < self.target_fpr < 0.5:
            raise ConfigError("target_fpr", "must be in (0, 0.5)")
        if self.min_rows < 100 or self.n_estimators < 1:
            raise ConfigError("min_rows", "min_rows must be >= 100 and n_estimators >= 1")
        if self.features not in (CHAMPION_ALGO, *RETRAIN_ALGOS):
            raise ConfigError("features", f"must be {CHAMPION_ALGO} or one of {', '.join(RETRAIN_ALGOS)} "
                                          f"(robust-blocks-v2 and values-v1 learn a baseline from the readings "
                                          f"themselves: train them with `model train`)")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{Path(self.out).resolve() / 'mlflow.db'}"
