"""The retraining job's transforms: silver -> per-device features -> a candidate per device type.

All feature work is `models.features` (the agent's own code) inside `groupBy(...).applyInPandas`, per
device, readings in (event time, seq) order; fitting, ONNX export and the parity check are
`models.training.pipeline.make_candidate` inside `groupBy("device_type").applyInPandas`, so the types
train in parallel across the cluster. Nothing here touches the registry, MLflow or the hub: that is
the driver's part (`job.py`), after the gate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

READING_COLUMNS = ("device_type", "device_id", "event_ms", "seq", "anomaly", "channels", "values", "label", "fault")
NOISE_DDL = ("device_type string, device_id string, noise array<double>, step array<double>, "
             "magnitude array<double>, rows long")
FEATURES_DDL = ("device_type string, device_id string, event_ms long, holdout boolean, excluded boolean, "
                "label int, fault string, clean boolean, x array<float>, xc array<float>")
CANDIDATE_DDL = "device_type string, onnx binary, manifest string, figures string, error string"


@dataclass(frozen=True)
class TypePlan:
    """What the executors need to know about one device type (small; shipped in the task closure)."""

    device_type: str
    channels: tuple[str, ...]
    split_ms: int                          # rows at or after this event time are the holdout
    spec: dict[str, Any] | None = None     # the candidate's feature spec (after the noise pass)
    champion_spec: dict[str, Any] | None = None
    champion_onnx: bytes | None = None
    champion_manifest: dict[str, Any] | None = None
    incidents: tuple[tuple[int, int], ...] = ()  # [start_ms, end_ms) of this type's incidents


def readings(silver: Any, *, since: str | None, until: str | None, device_types: tuple[str, ...],
             labels: Any | None) -> Any:
    """Silver rows of the range, as (device_type, device_id, event_ms, seq, anomaly, channels, values, label,
    fault); label/fault from an optional labels DataFrame (device_id, event_time, label, fault). A sensor sent
    by a gateway is the stream ``<gateway>/<sensor>``."""
    from pyspark.sql import functions as F

    from cloud_jobs.fleet.transforms import stream_id

    df = silver
    if since:
        df = df.where(F.col("event_time") >= F.to_timestamp(F.lit(since)))
    if until:
        df = df.where(F.col("event_time") < F.to_timestamp(F.lit(until)))
    if device_types:
        df = df.where(F.col("device_type").isin(list(device_types)))
    df = df.select("device_type", "source_device", "device_id", F.unix_millis("event_time").alias("event_ms"), "seq",
                   "anomaly", "channels", "values")
    if labels is None:
        df = df.withColumn("label", F.lit(None).cast("int")).withColumn("fault", F.lit(None).cast("string"))
    else:
        lab = labels.select("device_id", F.unix_millis("event_time").alias("event_ms"),
                            F.col("label").cast("int").alias("label"), F.col("fault").cast("string").alias("fault"))
        df = df.join(lab.dropDuplicates(["device_id", "event_ms"]), ["device_id", "event_ms"], "left")
    # one stream per sensor and sender: two gateways may serve sensors of the same name
    return df.withColumn("device_id", stream_id()).select(*READING_COLUMNS)


def type_ranges(rows: Any) -> dict[str, dict[str, Any]]:
    """Per device type: rows, devices, event-time range and its most common channel list."""
    from pyspark.sql import functions as F

    out: dict[str, dict[str, Any]] = {}
    for r in rows.groupBy("device_type").agg(F.count(F.lit(1)).alias("rows"),
                                             F.countDistinct("device_id").alias("devices"),
                                             F.min("event_ms").alias("t0"), F.max("event_ms").alias("t1")).collect():
        out[r["device_type"]] = {"rows": r["rows"], "devices": r["devices"], "t0": r["t0"], "t1": r["t1"]}
    counts = rows.groupBy("device_type", "channels").count().collect()
    for dtype in out:
        best = max((c for c in counts if c["device_type"] == dtype), key=lambda c: c["count"])
        out[dtype]["channels"] = tuple(best["channels"])
    return out


def _stream(pdf: Any, channels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """One device's readings in (event time, seq) order as a (n, C) value matrix in `channels` order;
    returns it and the row order (rows lacking a channel are dropped)."""
    pdf = pdf.sort_values(["event_ms", "seq"], kind="stable")
    vals = []
    keep = []
    for i, (chs, vs) in enumerate(zip(pdf["channels"], pdf["values"], strict=True)):
        chs = tuple(chs)
        if chs == channels:
            vals.append(np.asarray(vs, dtype=np.float64))
            keep.append(i)
        elif set(channels) <= set(chs):
            pos = {c: j for j, c in enumerate(chs)}
            vals.append(np.asarray([vs[pos[c]] for c in channels], dtype=np.float64))
            keep.append(i)
    order = pdf.index.to_numpy()[keep]
    return (np.vstack(vals) if vals else np.empty((0, len(channels)))), order


def noise_udf(plans: Mapping[str, TypePlan]) -> Any:
    """Per device: `models.features.stream_noise` and `stream_resolution` of its readings (the input of
    the type's spec: the same floors as `FeatureSpec.fit` over the same devices' streams)."""
    def run(pdf: Any) -> Any:
        import pandas as pd

        from models.features import stream_noise, stream_resolution

        dtype = str(pdf["device_type"].iloc[0])
        values, _ = _stream(pdf, plans[dtype].channels)
        est, res = stream_noise(values), stream_resolution(values)
        return pd.DataFrame({"device_type": [dtype], "device_id": [str(pdf["device_id"].iloc[0])],
                             "noise": [None if est is None else est.tolist()],
                             "step": [None if res is None else res[0].tolist()],
                             "magnitude": [None if res is None else res[1].tolist()], "rows": [len(values)]})
    return run


def features_udf(plans: Mapping[str, TypePlan], clean_horizon: int) -> Any:
    """Per device: features under the candidate's spec (and the champion's, when it differs), holdout
    and exclusion flags; one output row per reading."""
    def run(pdf: Any) -> Any:
        import pandas as pd

        from models.features import FeatureSpec, columns_for, compute_features

        dtype = str(pdf["device_type"].iloc[0])
        plan = plans[dtype]
        assert plan.spec is not None
        values, order = _stream(pdf.reset_index(drop=True), plan.channels)
        src = pdf.reset_index(drop=True).loc[order]
        spec = FeatureSpec.from_dict(plan.spec)
        x = compute_features(spec, values[:, columns_for(spec, plan.channels)]).astype(np.float32)
        xc = None
        if plan.champion_spec is not None:
            cspec = FeatureSpec.from_dict(plan.champion_spec)
            if cspec.hash == spec.hash:
                xc = x
            elif set(cspec.channels) <= set(plan.channels):
                xc = compute_features(cspec, values[:, columns_for(cspec, plan.channels)]).astype(np.float32)
        ts = src["event_ms"].to_numpy(dtype=np.int64)
        label = src["label"].fillna(-1).to_numpy(dtype=np.int64)
        excluded = src["anomaly"].fillna(False).to_numpy(dtype=bool).copy()
        for a, b in plan.incidents:
            excluded |= (ts >= a) & (ts < b)
        hits = np.convolve((label == 1).astype(np.int64), np.ones(clean_horizon + 1, dtype=np.int64))[: len(label)]
        return pd.DataFrame({
            "device_type": dtype, "device_id": src["device_id"].to_numpy(), "event_ms": ts,
            "holdout": ts >= plan.split_ms, "excluded": excluded, "label": label.astype(np.int32),
            "fault": src["fault"].fillna("").to_numpy(), "clean": hits == 0,
            "x": list(x), "xc": list(xc) if xc is not None else [None] * len(x),
        })
    return run


def candidate_udf(plans: Mapping[str, TypePlan], train: Mapping[str, Any]) -> Any:
    """Per device type: fit -> export -> parity on the training rows, then the candidate's and the
    champion's figures on the holdout. One output row; a failure becomes its `error`, never a crash."""
    def run(pdf: Any) -> Any:
        import pandas as pd

        from cloud_jobs.retrain.gate import figures
        from contracts.manifest import ModelManifest
        from models.errors import ModelError
        from models.features import FeatureSpec
        from models.training.pipeline import make_candidate, onnx_scores
        from models.training.trainer import FeatureTable, TrainConfig

        dtype = str(pdf["device_type"].iloc[0])
        plan = plans[dtype]

        def row(onnx: bytes | None = None, manifest: str | None = None, figs: str | None = None,
                error: str | None = None) -> Any:
            return pd.DataFrame({"device_type": [dtype], "onnx": [onnx], "manifest": [manifest], "figures": [figs],
                                 "error": [error]})

        pdf = pdf.sort_values(["device_id", "event_ms"], kind="stable")
        hold = pdf["holdout"].to_numpy(dtype=bool)
        tr, ho = pdf[~hold], pdf[hold]
        labelled = bool((pdf["label"] >= 0).all()) and bool((pdf["label"] == 1).any())
        try:
            assert plan.spec is not None
            spec = FeatureSpec.from_dict(plan.spec)
            x = np.vstack(tr["x"].to_numpy()) if len(tr) else np.empty((0, spec.n_features), np.float32)
            table = FeatureTable(x=x, labels=tr["label"].to_numpy().clip(0) if labelled else None,
                                 faults=list(tr["fault"]) if labelled else None, devices=list(tr["device_id"]))
            config = TrainConfig(name=dtype, seed=train["seed"], n_estimators=train["n_estimators"],
                                 max_samples=train["max_samples"], target_fpr=train["target_fpr"],
                                 exclude_labelled=train["exclude_labelled"], channels=plan.channels,
                                 holdout_fraction=0.0,  # the job holds out by time itself (the gate's holdout)
                                 range_guard=train["range_guard"],
                                 extra={"device_type": dtype, "trained_by": "edgeflag cloud retrain"})
            t0, t1 = int(pdf["event_ms"].min()), int(pdf["event_ms"].max())
            cand = make_candidate(table, spec, config, clean=tr["clean"].to_numpy(dtype=bool),
                                  exclude=tr["excluded"].to_numpy(dtype=bool) if train["exclude_flagged"] else None,
                                  time_range=(t0 / 1000, t1 / 1000))
        except (ModelError, ValueError) as exc:
            return row(error=f"{type(exc).__name__}: {exc}")
        fit_rows = ~tr["excluded"].to_numpy(dtype=bool)
        lab = ho["label"].to_numpy().clip(0) if labelled else None
        devs, faults = ho["device_id"].to_numpy(), ho["fault"].to_numpy()
        xh = np.vstack(ho["x"].to_numpy()) if len(ho) else np.empty((0, x.shape[1]), np.float32)
        out: dict[str, Any] = {"train_rows": len(tr), "fit_rows": int(cand.manifest.training["fit_rows"]),
                               "holdout_rows": len(ho), "labelled": labelled}
        out["candidate"] = figures(cand.scores(xh), cand.manifest.threshold, cand.scores(x[fit_rows]),
                                   labels=lab, devices=devs, faults=faults)
        if plan.champion_onnx is not None and plan.champion_manifest is not None and ho["xc"].notna().all():
            cm = ModelManifest.from_dict(plan.champion_manifest)
            width = FeatureSpec.from_dict(cm.feature_spec).n_features
            xch = np.vstack(ho["xc"].to_numpy()) if len(ho) else np.empty((0, width), np.float32)
            xct = np.vstack(tr["xc"].to_numpy()[fit_rows]) if fit_rows.any() else xch[:0]
            out["champion"] = figures(onnx_scores(plan.champion_onnx, cm, xch), cm.threshold,
                                      onnx_scores(plan.champion_onnx, cm, xct), labels=lab, devices=devs,
                                      faults=faults)
            out["champion_version"] = cm.version
        return row(cand.onnx_bytes, json.dumps(cand.manifest.to_dict()), json.dumps(out))
    return run
