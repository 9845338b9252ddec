"""The demo's figures after the run: every reading counted by its dedup key, detection quality against
the simulator's labels, and the report (plots + tables + summary.json).

- produced: per agent, the readings per device its source stored (the checkpoint in the outbox it left
  behind) x its devices; every one of them has a known (device, seq).
- delivered: distinct (device, boot, seq) in the hub's bronze landing; duplicates: landed minus distinct
  (resends after lost acknowledgements and reconnects; the cloud job drops them); lost: produced keys
  that never landed.
- detection: the flags in silver (what the agents decided, with the model version they used) against
  the labels of the same fleet regenerated from its seed.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from edgeflag.cli.demo_fleet import TYPES, Gateway, produced


def delivery(wd: Path, gateways: list[Gateway]) -> tuple[dict[str, Any], dict[str, int]]:
    from hub.bronze import read_bronze

    per_device: dict[str, int] = {}
    for gw in gateways:
        n = produced(gw)
        for d in gw.devices:
            per_device[d] = n
    landed = 0
    keys: set[tuple[str, str, int]] = set()
    for rec in read_bronze(wd / "bronze"):
        body = rec.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("readings"), list):
            continue
        for r in body["readings"]:
            keys.add((body["device_id"], body["boot_id"], int(r["seq"])))
            landed += 1
    got = {(d, s) for d, _, s in keys}
    lost = sum(1 for d, n in per_device.items() for s in range(n) if (d, s) not in got)
    total = sum(per_device.values())
    return ({"produced": total, "delivered": len(keys), "landed in bronze (with resends)": landed,
             "duplicates": landed - len(keys), "lost": lost,
             "unexpected (not produced)": sum(1 for d, s in got if s >= per_device.get(d, 0))}, per_device)


def silver_rows(spark: Any, silver: str) -> Any:
    from pyspark.sql import functions as F

    return spark.read.parquet(silver).select(
        "device_id", "device_type", "source_device", "seq", F.unix_millis("event_time").alias("t_ms"),
        F.unix_millis("received_at").alias("rx_ms"), "score", "anomaly", "threshold", "model_version",
        "channels", "values").toPandas()


def detection(rows: Any, truth: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Precision / recall / F1 per reading and event recall (an event: one fault's run of readings on one
    device; found when at least one of them is flagged), over every reading that reached silver."""
    from cloud_jobs.retrain.gate import events

    tp = fp = fn = 0
    found = total = 0
    by_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for dev, grp in rows.groupby("device_id"):
        b = truth.get(dev)
        if b is None:
            continue
        seq = grp["seq"].to_numpy()
        keep = seq < len(b.faults)
        seq, flags = seq[keep], grp["anomaly"].to_numpy()[keep].astype(bool)
        faults = np.asarray(b.faults, dtype=object)[seq]
        order = np.argsort(seq)
        seq, flags, faults = seq[order], flags[order], faults[order]
        label = faults != ""
        tp += int((flags & label).sum())
        fp += int((flags & ~label).sum())
        fn += int((~flags & label).sum())
        for a, z in events(np.zeros(len(faults)), faults):
            kind = str(faults[a])
            kind = "fleet fault" if kind.startswith("fleet-") else kind
            hit = bool(flags[a:z].any())
            total += 1
            found += hit
            by_kind[kind][0] += hit
            by_kind[kind][1] += 1
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {"readings in silver": len(rows), "labelled anomalous": tp + fn, "flagged": tp + fp,
           "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
           "events": total, "events found": found, "event_recall": round(found / total, 4) if total else None}
    kinds = {k: f"{h}/{n} found" for k, (h, n) in sorted(by_kind.items())}
    return out, kinds


def build_report(demo: Any, spark: Any, gateways: list[Gateway]) -> tuple[Path, dict[str, Any]]:
    from cloud_jobs.fleet.incidents import read_incidents
    from edgeflag.cli.report import DeviceTrace, plot_backlog, plot_fleet_rate, plot_model_versions, write_report
    from simulators import Fleet
    from simulators.types import DEVICE_TYPES

    wd, plan = demo.wd, demo.plan
    out = wd / "report"
    out.mkdir(parents=True, exist_ok=True)
    deliv, per_device = delivery(wd, gateways)
    fleet_cfg = plan.fleet_config()
    truth = Fleet(fleet_cfg).generate(max(per_device.values()) if per_device else 1)
    rows = silver_rows(spark, demo.agg_config.table("silver"))
    det, kinds = detection(rows, truth)
    events = Path(demo.agg_config.table("events"))
    if events.exists() and any(events.glob("batch_id=*")):  # the agents' own events, counted by the cloud job
        det["anomaly events opened (cloud count)"] = spark.read.parquet(str(events)).where("reason = 'open'").count()

    # a few devices: a pump the fleet fault hit, and one device of each other type (one with a fault if any)
    units = {c.name: c.unit for t in DEVICE_TYPES.values() for c in t.channels}
    show = []
    faults_of = {d: list(b.faults or []) for d, b in truth.items()}
    present = set(rows["device_id"])
    for dtype in TYPES:
        devs = [d for d in sorted(truth) if d.startswith(dtype + "-") and d in present]
        if dtype == plan.fault_type:
            faulted = [d for d in devs if any(f.startswith("fleet-") for f in faults_of[d])]
        else:
            faulted = [d for d in devs if any(faults_of[d])]
        show += (faulted or devs)[:1]
    traces = []
    t_start = fleet_cfg.start.timestamp()
    for dev in show:
        g = rows[rows["device_id"] == dev].sort_values("seq")
        seq = g["seq"].to_numpy()
        faults = [faults_of[dev][s] for s in seq]
        traces.append(DeviceTrace(dev, g["t_ms"].to_numpy() / 1000.0, tuple(g["channels"].iloc[0]),
                                  np.vstack(g["values"].to_numpy()), g["score"].to_numpy(),
                                  g["anomaly"].to_numpy().astype(bool), faults, units,
                                  thresholds=g["threshold"].to_numpy()))

    plots = []
    incidents = read_incidents(Path(demo.agg_config.out) / "incidents.jsonl")
    spans = _incident_spans(incidents, t_start)
    gold = Path(demo.agg_config.table("gold_fleet_1m"))
    if gold.exists() and any(gold.glob("batch_id=*")):
        fw = spark.read.parquet(str(gold)).toPandas()
        fw["m"] = fw["window_start"].map(lambda x: (x.timestamp() - t_start) / 60.0)
        agg = fw.groupby(["device_type", "m"], as_index=False)[["anomalies", "readings"]].sum()
        series = {t: (g["m"].to_numpy(), (g["anomalies"] / g["readings"]).to_numpy())
                  for t, g in agg.sort_values("m").groupby("device_type")}
        plots.append(plot_fleet_rate({t: series[t] for t in TYPES if t in series}, spans,
                                     out / "fleet-anomaly-rate.png"))
    t0_ms = demo.wall_t0 * 1000
    versions: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for gw in gateways:
        g = rows[rows["source_device"] == gw.name].sort_values("rx_ms")
        if len(g):
            versions.setdefault(gw.device_type, {})[gw.name] = ((g["rx_ms"].to_numpy() - t0_ms) / 1000.0,
                                                                g["model_version"].to_numpy().astype(int))
    marks = {k.replace("_", " "): v for k, v in demo.timeline.items()
             if k in ("retrain_start", "outage_start", "outage_end")}
    plots.append(plot_model_versions({t: versions[t] for t in TYPES if t in versions}, marks,
                                     out / "model-versions.png"))
    backlog = {gw.name: [(s.t, s.backlog) for s in demo.watcher.history.get(gw.name, []) if s.up] for gw in gateways}
    outage = [demo.timeline[k] for k in ("outage_start", "outage_end") if k in demo.timeline]
    plots.append(plot_backlog(backlog, outage, out / "outbox-backlog.png"))

    model_versions = {t: sorted({int(v) for v in rows.loc[rows["device_type"] == t, "model_version"]}) for t in TYPES}
    opened = [e for e in incidents if e.get("event") == "open"]
    retrain = _retrain_table(demo)
    inc_table = {e["incident_id"]: f"{e['device_type']}: {len(e['devices'])} devices ({', '.join(e['devices'])})"
                 for e in opened} or {"-": "none raised"}
    summary = {"devices": plan.devices, "seed": plan.seed, "agents": len(gateways),
               **{k: deliv[k] for k in ("produced", "delivered", "duplicates", "lost")},
               "incidents": len(opened), "incident_ids": [e["incident_id"] for e in opened],
               "model_versions": model_versions,
               **{k: det[k] for k in ("precision", "recall", "f1", "event_recall")},
               "detection": det, "events_by_fault": kinds, "delivery": deliv, "retrain": retrain,
               "timeline_s": {k: round(v, 1) for k, v in demo.timeline.items()},
               # delivered but not in silver: older than the watermark when they landed (silver is exactly-once)
               "late_readings_dropped": deliv["delivered"] - len(rows),
               "fleet_fault": plan.fleet_fault}
    deliv["late (in bronze, dropped from silver by the watermark)"] = summary["late_readings_dropped"]
    page = write_report(out, title=f"edgeflag demo: {plan.devices} devices, {len(gateways)} agents", traces=traces,
                        threshold=0.0,
                        sections={"Delivery (every reading counted by its dedup key in bronze)": deliv,
                                  "Detection at the edge against the simulator's labels": det,
                                  "Events found, per fault type": kinds,
                                  "Fleet incidents raised by the cloud job": inc_table,
                                  "Retraining and rollout": retrain,
                                  "Timeline (seconds since the agents started)": summary["timeline_s"]},
                        summary=summary, plots=plots)
    return page, summary


def _incident_spans(incidents: list[dict[str, Any]], t_start: float) -> list[tuple[str, float, float]]:
    from datetime import datetime

    last: dict[str, dict[str, Any]] = {}
    for ev in incidents:
        last[ev["incident_id"]] = ev
    out = []
    for ev in sorted(last.values(), key=lambda e: (e["device_type"], e["opened_at"])):
        a = datetime.fromisoformat(ev["opened_at"]).timestamp()
        b = datetime.fromisoformat(ev.get("closed_at") or ev["last_window_end"]).timestamp()
        out.append((ev["device_type"], (a - t_start) / 60.0, (b - t_start) / 60.0))
    return out


def _retrain_table(demo: Any) -> dict[str, Any]:
    if demo.retrain_error:
        return {"error": demo.retrain_error}
    rep = demo.retrain_report
    if not rep:
        return {"-": "did not run"}

    def _rate(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2%}"

    out: dict[str, Any] = {}
    for dtype, e in sorted(rep.get("types", {}).items()):
        r = e.get("rollout") or {}
        text = e.get("status", "?")
        if e.get("version"):
            text += f" v{e['version']}"
        if r:
            text += (f"; rollout {r.get('status')}: canary {', '.join(r.get('canaries', []))} "
                     f"({r.get('canary_readings')} readings, alert rate {_rate(r.get('canary_alert_rate'))}; "
                     f"the rest on the old model {_rate(r.get('control_alert_rate'))} over "
                     f"{r.get('control_readings', 0)}; devices over: {len(r.get('over') or [])} of "
                     f"{len(r.get('canary_devices') or {})}), then {', '.join(r.get('rest', [])) or '-'}")
        reasons = e.get("reason") or "; ".join((e.get("verdict") or {}).get("reasons") or [])
        if reasons:
            text += f" ({reasons})"
        out[dtype] = text
    out["seconds"] = rep.get("seconds")
    return out
