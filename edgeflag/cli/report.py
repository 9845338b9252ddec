"""The demo's report: PNG plots (matplotlib, headless) and an HTML page that shows them with the
detection and delivery tables, plus the same figures in ``summary.json``.

`write_report` takes plain data (per-device traces, tables as dicts), so any run can produce one.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DeviceTrace:
    """One device's readings over time with the model's verdicts and, when known, the ground truth."""

    device_id: str
    ts: np.ndarray  # epoch seconds
    channels: tuple[str, ...]
    values: np.ndarray  # (n, channels)
    scores: np.ndarray
    flags: np.ndarray
    faults: Sequence[str] | None = None  # "" = normal
    units: Mapping[str, str] | None = None  # channel -> unit, for the axis labels
    thresholds: np.ndarray | None = None  # per reading, when the model (and so its threshold) changed mid-trace


def _fault_spans(faults: Sequence[str]) -> list[tuple[int, int, str]]:
    spans, start = [], 0
    for i in range(1, len(faults) + 1):
        if i == len(faults) or faults[i] != faults[start]:
            if faults[start]:
                spans.append((start, i - 1, str(faults[start])))
            start = i
    return spans


def plot_trace(trace: DeviceTrace, threshold: float, path: Path) -> Path:
    """Each channel over time with flagged readings marked and true faults shaded; the score below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = (trace.ts - trace.ts[0]) / 60.0
    step = float(np.median(np.diff(minutes))) if len(minutes) > 1 else 1 / 60
    # a fault covers its readings' whole intervals, at least 0.4 % of the axis so a one-reading spike shows
    step = max(step, 0.004 * float(minutes[-1] - minutes[0]) if len(minutes) else 0.0)
    rows = len(trace.channels) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(11, 1.9 * rows), sharex=True, constrained_layout=True)
    spans = _fault_spans(trace.faults) if trace.faults is not None else []
    for ax, (c, name) in zip(axes[:-1], enumerate(trace.channels), strict=True):
        ax.plot(minutes, trace.values[:, c], lw=0.7, color="#3465a4", label="reading")
        f = trace.flags.astype(bool)
        ax.scatter(minutes[f], trace.values[f, c], s=10, color="#cc0000", zorder=3, label="flagged reading")
        for a, b, _kind in spans:
            ax.axvspan(minutes[a] - step / 2, minutes[b] + step / 2, color="#f5a623", alpha=0.25, lw=0)
        unit = (trace.units or {}).get(name)
        ax.set_ylabel(f"{name} ({unit})" if unit else name)
    axes[-1].plot(minutes, trace.scores, lw=0.7, color="#555753", label="score")
    if trace.thresholds is not None and len(np.unique(trace.thresholds)) > 1:
        axes[-1].step(minutes, trace.thresholds, where="post", color="#cc0000", ls="--", lw=1,
                      label="threshold of the model in use")
    else:
        th = float(trace.thresholds[0]) if trace.thresholds is not None and len(trace.thresholds) else threshold
        axes[-1].axhline(th, color="#cc0000", ls="--", lw=1, label=f"threshold {th:.3f}")
    for a, b, _kind in spans:
        axes[-1].axvspan(minutes[a] - step / 2, minutes[b] + step / 2, color="#f5a623", alpha=0.25, lw=0)
    axes[-1].set_ylabel("anomaly score")
    axes[-1].set_xlabel("minutes since the first reading")
    from matplotlib.patches import Patch

    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Patch(color="#f5a623", alpha=0.25))
    labels.append("true fault (simulator label)")
    axes[0].legend(handles, labels, loc="upper right", fontsize=8, ncol=3)
    axes[-1].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{trace.device_id}: readings, flagged points and true faults")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_backlog(backlog: Mapping[str, Sequence[tuple[float, int]]], outage: Sequence[float], path: Path) -> Path:
    """Readings waiting in each agent's outbox over time, the uplink outage shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.6), constrained_layout=True)
    top = 1
    for name, series in backlog.items():
        t = np.array([x for x, _ in series])
        n = np.array([y for _, y in series])
        ax.plot(t, n, lw=1.2, label=name)
        top = max(top, int(n.max()) if len(n) else 1)
    if len(outage) == 2:
        ax.axvspan(outage[0], outage[1], color="#cc0000", alpha=0.15, lw=0, label="hub front end down (outage)")
    ax.set_xlabel("seconds since the agents started")
    ax.set_ylabel("readings waiting in the outbox")
    ax.set_ylim(bottom=0, top=top * 1.25)
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    ax.set_title("Outbox backlog through the uplink outage: it grows while the hub is unreachable, then drains")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(title: str, rows: Mapping[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<h2>{html.escape(title)}</h2><table>{cells}</table>"


def write_report(out: Path, *, title: str, traces: Sequence[DeviceTrace], threshold: float,
                 sections: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any],
                 plots: Sequence[Path] = ()) -> Path:
    """``out/report.html`` (tables of `sections`, one plot per trace, then `plots` already written in
    `out`) and ``out/summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    images = [plot_trace(t, threshold, out / f"readings-{t.device_id}.png") for t in traces] + list(plots)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    body = "".join(_table(name, rows) for name, rows in sections.items())
    body += "".join(f'<h2>{html.escape(p.stem)}</h2><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}">'
                    for p in images)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
            "th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}img{max-width:100%}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n")
    path = out / "report.html"
    path.write_text(page)
    return path


def plot_fleet_rate(windows: Mapping[str, tuple[np.ndarray, np.ndarray]], incidents: Sequence[tuple[str, float, float]],
                    path: Path) -> Path:
    """Per device type, the share of readings flagged in each 1-minute window (minutes of simulated time),
    with the fleet incidents the cloud job raised shaded in their type's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.8), constrained_layout=True)
    colours = {}
    for dtype, (minutes, rate) in windows.items():
        (line,) = ax.plot(minutes, 100 * rate, lw=1.3, marker=".", ms=3, label=f"{dtype}: flagged readings")
        colours[dtype] = line.get_color()
    for i, (dtype, a, b) in enumerate(incidents):
        ax.axvspan(a, b, color=colours.get(dtype, "#cc0000"), alpha=0.18, lw=0,
                   label=f"fleet incident ({dtype})" if i == 0 or incidents[i - 1][0] != dtype else None)
    ax.set_xlabel("simulated minutes since the fleet started (1-minute windows, event time)")
    ax.set_ylabel("flagged readings (%)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Fleet anomaly rate per device type (gold_fleet_1m) with the incidents raised")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_model_versions(series: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
                        marks: Mapping[str, float], path: Path) -> Path:
    """Per device type (one panel each), the model version each gateway scored with over wall-clock time
    (from silver: every reading carries its model version), with the demo's phases marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(11, 1.6 + 1.4 * len(series)), sharex=True,
                             constrained_layout=True, squeeze=False)
    top = 1
    styles = ("#75507b", "#cc0000", "#4e9a06", "#c4a000")
    for row, (ax, (dtype, gws)) in enumerate(zip(axes[:, 0], series.items(), strict=True)):
        for k, (name, (t, v)) in enumerate(gws.items()):
            ax.step(t, v + 0.04 * k, where="post", lw=1.6, label=name)  # a small offset: both lines stay visible
            top = max(top, int(v.max()) if len(v) else 1)
        for (label, x), colour in zip(marks.items(), styles, strict=False):
            ax.axvline(x, color=colour, ls=":", lw=1.2, label=label if row == 0 else None)
        ax.set_ylabel(f"{dtype}\nmodel version")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    for ax in axes[:, 0]:
        ax.set_yticks(range(1, top + 1))
        ax.set_ylim(0.5, top + 0.5)
    axes[-1, 0].set_xlabel("seconds since the agents started (when silver received the reading)")
    fig.suptitle("Model version in use per gateway: v2 reaches a canary first, then the rest of its type")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
