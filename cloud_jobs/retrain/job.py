"""The retraining job: `main(config)` trains, gates, registers and rolls out one model per device type.

1. Read silver over ``[since, until)`` (plus the simulator's labels and the aggregation's incidents when
   given); per device type: rows, devices, time range, channels; split off the newest
   ``holdout_fraction`` of each type's range as the holdout.
2. Per device (Spark, `applyInPandas`): noise estimates -> the type's feature spec (driver); then
   features for every reading with `models.features`, under the candidate's spec and the champion's.
3. Per device type (Spark, `applyInPandas`, types in parallel): fit -> export ONNX -> parity, and the
   candidate's and champion's figures on the holdout.
4. Driver, per type: the gate's verdict; an MLflow run with every figure; a passing candidate is
   signed and registered (file registry the agents fetch from + MLflow version with alias
   ``champion``).
5. Every promoted type is rolled out with a canary (`rollout.py`), all types at once (they are disjoint
   sets of devices, so the job waits for the slowest type's canary watch, not for the sum of them); a
   failed canary restores the previous champion everywhere, and so does a rollout that meets an error
   (status ``rollout_failed``: its devices are set back to the previous model, the reason is the error).

The report (every figure, verdict and rollout outcome) is returned and written to
``<out>/retrain-<UTC time>.json``. A type whose training, MLflow run, registration or rollout fails is
reported (status ``failed`` or ``rollout_failed``, the step and the error in ``reason``), never fatal to
the others; a type registered before its error is set back to its previous champion. `failed_types`
lists them (the CLI then exits 1). What cannot be checked cheaply is checked before any work (the
signing key, the MLflow store, that silver exists: `CloudJobError`, no report); an error of the job
itself after that (Spark, the file system) still writes the report, with ``error``, and raises
`CloudJobError` naming it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cloud_jobs.config import RetrainConfig, candidate_algo
from cloud_jobs.errors import CloudJobError
from cloud_jobs.retrain import transforms as T
from cloud_jobs.retrain.gate import verdict
from cloud_jobs.retrain.rollout import CanaryStats, ControlStats, Counts

log = logging.getLogger("edgeflag.cloud.retrain")


def _incident_windows(path: str | None) -> dict[str, list[tuple[int, int]]]:
    """Per device type, [start, end) epoch ms of every incident in an aggregation's incidents.jsonl."""
    from cloud_jobs.fleet.incidents import read_incidents

    out: dict[str, list[tuple[int, int]]] = {}
    if not path or not Path(path).exists():  # no incidents raised yet
        return out
    last: dict[str, dict[str, Any]] = {}
    for ev in read_incidents(Path(path)):
        last[ev["incident_id"]] = ev
    for ev in last.values():
        a = datetime.fromisoformat(ev["opened_at"].replace("Z", "+00:00"))
        b = datetime.fromisoformat(ev["last_window_end"].replace("Z", "+00:00"))
        out.setdefault(ev["device_type"], []).append((int(a.timestamp() * 1000), int(b.timestamp() * 1000)))
    return out


def _labels(spark: Any, path: str | None) -> Any:
    """Simulator ground truth (JSONL readings: device_id, ts, label, fault) as (device_id, event_time, …)."""
    if not path:
        return None
    from pyspark.sql import functions as F

    raw = spark.read.schema("device_id string, ts string, label int, fault string").json(path)
    return raw.select("device_id", F.to_timestamp("ts").alias("event_time"), "label", "fault")


def _silver(spark: Any, config: RetrainConfig) -> Any:
    from pyspark.sql.types import StructType

    from cloud_jobs import io
    from cloud_jobs.fleet.transforms import SILVER_DDL

    return io.read_table(spark, config.silver, StructType.fromDDL(SILVER_DDL), config.table_format, streaming=False)


def _silver_counts(spark: Any, config: RetrainConfig, agents: list[str], since_s: float, model: Any) -> Counts:
    """Readings and anomalies per device in silver from these agents, received since then, where `model`
    holds."""
    from pyspark.sql import functions as F

    df = _silver(spark, config)
    rows = (df.where(F.col("source_device").isin(agents) & model
                     & (F.col("received_at") >= F.timestamp_millis(F.lit(int(since_s * 1000)))))
            .groupBy("device_id")
            .agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("anomaly").cast("long")).alias("a")).collect())
    return {r["device_id"]: (int(r["n"]), int(r["a"] or 0)) for r in rows}


def silver_canary_stats(spark: Any, config: RetrainConfig) -> CanaryStats:
    """Readings and anomalies per device in silver from these agents, scored by this model, received since
    then."""
    from pyspark.sql import functions as F

    def stats(agents: list[str], sha256: str, version: int, since_s: float) -> Counts:
        return _silver_counts(spark, config, agents, since_s,
                              (F.col("model_sha256") == sha256) & (F.col("model_version") == version))
    return stats


def silver_control_stats(spark: Any, config: RetrainConfig) -> ControlStats:
    """Readings and anomalies per device in silver from these agents, scored by any version but this one,
    received since then: the control group of a canary rollout."""
    from pyspark.sql import functions as F

    def stats(agents: list[str], version: int, since_s: float) -> Counts:
        return _silver_counts(spark, config, agents, since_s, F.col("model_version") != version)
    return stats


def main(config: RetrainConfig, *, spark: Any = None, say: Callable[[str], None] | None = None,
         control: Any = None, canary_stats: CanaryStats | None = None,
         control_stats: ControlStats | None = None) -> dict[str, Any]:
    """Run the job; returns the report. `control` (a `rollout.FleetControl`) defaults to the hub named by
    `config.rollout.hub_state`; `canary_stats` and `control_stats` to reads of silver."""
    from cloud_jobs.retrain.tracking import Tracker
    from cloud_jobs.spark import get_spark

    say = say or (lambda m: log.info("%s", m))
    if config.sign_key:  # before any work: a bad key would otherwise fail after training, at publish
        from models.errors import ModelError
        from models.signing import load_signing_key

        try:
            load_signing_key(Path(config.sign_key))
        except ModelError as exc:
            raise CloudJobError(str(exc)) from None
    if not Path(config.silver).exists() and "://" not in config.silver:
        raise CloudJobError(f"silver table {config.silver} does not exist (run `edgeflag cloud aggregate` first)")
    if config.labels and not Path(config.labels).exists() and "://" not in config.labels:
        raise CloudJobError(f"labels {config.labels} do not exist")
    try:  # before any work: an unreachable store would otherwise fail after training, at the first run
        tracker = Tracker(config)
    except Exception as exc:
        raise CloudJobError(f"MLflow tracking store {config.tracking_uri}: {type(exc).__name__}: {exc}") from None
    spark = spark or get_spark()
    t_start = time.monotonic()
    out_dir = Path(config.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "since": config.since, "until": config.until, "types": {}}
    try:
        return _run(config, spark, tracker, report, out_dir, t_start, say, control, canary_stats, control_stats)
    except Exception as exc:  # the job's own error (Spark, the file system): the report still says how far it got
        report["error"] = f"{type(exc).__name__}: {exc}"
        done = _finish(report, out_dir, t_start, say)
        raise CloudJobError(f"retraining stopped: {report['error']} (report: {done['report_path']})") from exc


def _run(config: RetrainConfig, spark: Any, tracker: Any, report: dict[str, Any], out_dir: Path, t_start: float,
         say: Callable[[str], None], control: Any, canary_stats: CanaryStats | None,
         control_stats: ControlStats | None) -> dict[str, Any]:
    """`main` after its checks: every step that runs on data."""
    from cloud_jobs.retrain.rollout import execute_all, model_spec, plan_rollout
    from models.bundle import load_bundle
    from models.features import FeatureSpec
    from models.registry import Registry
    from models.training.pipeline import Candidate, publish

    registry = Registry(config.registry)
    rows = T.readings(_silver(spark, config), since=config.since, until=config.until,
                      device_types=config.device_types, labels=_labels(spark, config.labels)).cache()
    ranges = T.type_ranges(rows)
    say(f"silver: {sum(r['rows'] for r in ranges.values()):,} readings of {len(ranges)} device types "
        "(" + ", ".join(f"{k} {v['rows']:,}" for k, v in sorted(ranges.items())) + ")")
    incidents = _incident_windows(config.incidents)
    plans: dict[str, T.TypePlan] = {}
    algos: dict[str, str] = {}
    for dtype, r in sorted(ranges.items()):
        if r["rows"] < config.min_rows:
            report["types"][dtype] = {"status": "skipped",
                                      "reason": f"{r['rows']} readings < min_rows {config.min_rows}"}
            continue
        champ = registry.champion(dtype)
        cb = load_bundle(registry.path(dtype, champ)) if champ is not None else None
        algo, why = candidate_algo(config.features, cb.spec.algo if cb else None)
        algos[dtype] = algo
        say(f"{dtype}: candidate features {algo} ({why})")
        plans[dtype] = T.TypePlan(
            dtype, r["channels"], int(r["t0"] + (1 - config.holdout_fraction) * (r["t1"] - r["t0"])),
            champion_spec=cb.spec.to_dict() if cb else None, champion_onnx=cb.model_bytes if cb else None,
            champion_manifest=cb.manifest.to_dict() if cb else None, incidents=tuple(incidents.get(dtype, ())))
    if not plans:
        say("nothing to train")
        return _finish(report, out_dir, t_start, say)

    t = time.monotonic()
    noise = rows.where(rows.device_type.isin(list(plans))).groupBy("device_type", "device_id") \
        .applyInPandas(T.noise_udf(plans), T.NOISE_DDL).collect()
    for dtype, tplan in list(plans.items()):
        mine = [n for n in noise if n["device_type"] == dtype]
        est = [np.asarray(n["noise"]) for n in mine if n["noise"]]
        res = [(np.asarray(n["step"]), np.asarray(n["magnitude"])) for n in mine if n["step"]]
        fspec = FeatureSpec.from_noise(tplan.channels, est, resolutions=res, algo=algos[dtype])
        plans[dtype] = T.TypePlan(**{**tplan.__dict__, "spec": fspec.to_dict()})
    say(f"feature specs for {len(plans)} types from {len(noise)} devices ({time.monotonic() - t:.1f} s)")

    t = time.monotonic()
    horizon = FeatureSpec.from_dict(next(iter(plans.values())).spec or {}).clean_horizon
    features = rows.where(rows.device_type.isin(list(plans))).groupBy("device_type", "device_id") \
        .applyInPandas(T.features_udf(plans, horizon), T.FEATURES_DDL)
    train = {"seed": config.seed, "n_estimators": config.n_estimators, "max_samples": config.max_samples,
             "target_fpr": config.target_fpr, "exclude_labelled": config.exclude_labelled,
             "exclude_flagged": config.exclude_flagged, "range_guard": config.range_guard}
    cands = features.groupBy("device_type").applyInPandas(T.candidate_udf(plans, train), T.CANDIDATE_DDL).collect()
    rows.unpersist()
    say(f"features + fit + export + holdout figures for {len(cands)} types on Spark ({time.monotonic() - t:.1f} s)")

    control_obj = control
    pending: list[tuple[Any, str, int | None]] = []  # (rollout plan, MLflow run, previous champion) per type
    try:
        for c in sorted(cands, key=lambda c: c["device_type"]):
            dtype = c["device_type"]
            entry: dict[str, Any] = {"rows": ranges[dtype]["rows"], "devices": ranges[dtype]["devices"],
                                     "features": algos[dtype]}
            report["types"][dtype] = entry
            step = "MLflow run"
            previous: int | None = None
            registered: int | None = None  # the version named champion, until its rollout is planned
            try:
                params = {"device_type": dtype, "since": config.since, "until": config.until,
                          "split_ms": plans[dtype].split_ms, "holdout_fraction": config.holdout_fraction,
                          "channels": ",".join(plans[dtype].channels), **train,
                          "champion_version": registry.champion(dtype)}
                if c["error"]:
                    entry.update(status="failed", reason=c["error"])
                    tracker.log_candidate(dtype, params=params, figures={}, verdict={"passed": False,
                                          "reasons": [c["error"]]}, onnx_bytes=None, manifest=None)
                    say(f"{dtype}: training failed: {c['error']}")
                    continue
                figs = json.loads(c["figures"])
                manifest = json.loads(c["manifest"])
                compatible = set(FeatureSpec.from_dict(manifest["feature_spec"]).channels) <= set(plans[dtype].channels)
                v = verdict(figs["candidate"], figs.get("champion"), compatible=compatible, gate=config.gate)
                entry.update(figures=figs, verdict=v.to_dict())
                run_id, model_uri = tracker.log_candidate(dtype, params=params, figures=figs, verdict=v.to_dict(),
                                                          onnx_bytes=c["onnx"], manifest=manifest)
                entry["mlflow_run_id"] = run_id
                say(f"{dtype}: candidate {_summary(figs['candidate'])} vs champion "
                    f"{_summary(figs['champion']) if 'champion' in figs else '(none)'}: "
                    + ("PASSED" if v.passed else "REFUSED: " + "; ".join(v.reasons)))
                if not v.passed:
                    entry["status"] = "refused"
                    continue
                if config.rollout.dry_run:
                    step = "rollout plan (dry run)"
                    entry["status"] = "passed (dry run: not registered)"
                    hub = config.rollout.hub_state or control is not None
                    devices = _control(config, control_obj).devices(dtype) if hub else []
                    want = {"version": (registry.versions(dtype) or [0])[-1] + 1, "url": "<registry>",
                            "sha256": manifest["sha256"]}
                    dry = plan_rollout(dtype, devices, want, None, config.rollout)
                    entry["rollout_plan"] = dry.to_dict()
                    say("rollout plan (dry run)\n" + dry.describe())
                    continue
                from contracts.manifest import ModelManifest

                step, previous = "registration", registry.champion(dtype)
                cand = Candidate(c["onnx"], ModelManifest.from_dict(manifest),
                                 manifest["training"]["onnx_parity_max_abs_diff"])
                path = publish(cand, registry, sign_key=Path(config.sign_key) if config.sign_key else None,
                               training={"gate": {"verdict": v.to_dict(), "candidate": figs["candidate"],
                                                  "champion": figs.get("champion"), "mlflow_run_id": run_id}})
                new_version = int(path.name[1:])
                registry.set_champion(dtype, new_version)
                step, registered = "MLflow registration", new_version
                assert model_uri is not None
                mlflow_version = tracker.promote(dtype, model_uri, new_version)
                entry.update(status="promoted", version=new_version, bundle=str(path), mlflow_version=mlflow_version)
                say(f"{dtype}: registered v{new_version} ({path}), MLflow {tracker.model_name(dtype)} "
                    f"v{mlflow_version} @champion")
                if not (config.rollout.hub_state or control is not None):
                    continue
                step = "rollout plan"
                control_obj = _control(config, control_obj)
                new_manifest = load_bundle(path).manifest
                desired = model_spec(path, new_version, new_manifest.sha256, config.rollout.bundle_url)
                prev_spec = None
                if previous is not None:
                    prev_path = registry.path(dtype, previous)
                    prev_spec = model_spec(prev_path, previous, load_bundle(prev_path).manifest.sha256,
                                           config.rollout.bundle_url)
                rplan = plan_rollout(dtype, control_obj.devices(dtype), desired, prev_spec, config.rollout)
                say("rollout plan\n" + rplan.describe())
                pending.append((rplan, run_id, previous))
            except Exception as exc:  # this type's outcome; the other types go on
                reason = "; ".join(filter(None, [entry.get("reason"), f"{step}: {type(exc).__name__}: {exc}"]))
                if registered is not None:  # registered and named champion, never rolled out
                    entry["version"] = registered
                    if previous is None:
                        reason += f"; v{registered} stays the latest version: there was no champion before"
                    else:
                        reason += "; " + (_restore(registry, tracker, dtype, previous)
                                          or f"champion restored to v{previous}")
                entry.update(status="failed", reason=reason)
                say(f"{dtype}: failed: {reason}")
        outcomes = execute_all([p for p, _, _ in pending], control_obj,
                               canary_stats or silver_canary_stats(spark, config), config.rollout, say,
                               control_stats or silver_control_stats(spark, config)) if pending else {}
        for rplan, run_id, previous in pending:
            dtype, outcome = rplan.device_type, outcomes[rplan.device_type]
            entry = report["types"][dtype]
            entry["rollout"] = {**rplan.to_dict(), **outcome.to_dict()}
            if outcome.status in ("rolled_back", "failed"):  # the type is back on its previous model
                entry["status"] = "rolled_back" if outcome.status == "rolled_back" else "rollout_failed"
                if previous is not None:
                    problem = _restore(registry, tracker, dtype, previous)
                    if problem:
                        entry.update(status="rollout_failed", reason=problem)
            try:
                tracker.tag_run(run_id, {"rollout": outcome.status, "rollout_reason": outcome.reason or "-"})
            except Exception as exc:  # the outcome is in the report; the run's tag is a copy
                entry["mlflow_warning"] = f"could not tag run {run_id}: {type(exc).__name__}: {exc}"
    finally:
        if control is None and control_obj is not None:
            control_obj.close()
    return _finish(report, out_dir, t_start, say)


#: The report statuses of a type whose job did not finish: training or rollout met an error.
FAILED = ("failed", "rollout_failed")


def failed_types(report: dict[str, Any]) -> list[str]:
    """The device types whose training or rollout met an error (status in `FAILED`)."""
    return sorted(t for t, e in report["types"].items() if e.get("status") in FAILED)


def _restore(registry: Any, tracker: Any, dtype: str, previous: int) -> str | None:
    """Name `previous` champion again in the file registry and in MLflow; returns what failed (None: both
    done)."""
    try:
        registry.set_champion(dtype, previous)
    except Exception as exc:
        return f"could not restore champion v{previous} in the registry: {type(exc).__name__}: {exc}"
    try:
        tracker.restore_champion(dtype, previous)
    except Exception as exc:
        return (f"could not restore MLflow's champion alias to v{previous} (the registry names it): "
                f"{type(exc).__name__}: {exc}")
    return None


def _control(config: RetrainConfig, existing: Any) -> Any:
    if existing is not None:
        return existing
    from cloud_jobs.retrain.rollout import HubControl

    assert config.rollout.hub_state is not None
    return HubControl(Path(config.rollout.hub_state), config.rollout.broker)


def _summary(f: dict[str, Any]) -> str:
    if "f1" in f:
        return f"F1 {f['f1']:.3f} event recall {f.get('event_recall', 0):.2f}"
    return f"alert rate {f['alert_rate']:.4f} PSI {f['psi']:.3f}"


def _finish(report: dict[str, Any], out_dir: Path, t_start: float, say: Callable[[str], None]) -> dict[str, Any]:
    report["seconds"] = round(time.monotonic() - t_start, 1)
    path = out_dir / f"retrain-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)
    report["report_path"] = str(path)
    say(f"report: {path}")
    return report
