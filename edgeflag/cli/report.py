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
    axes[-1].axhline(threshold, color="#cc0000", ls="--", lw=1, label=f"threshold {threshold:.3f}")
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


def plot_backlog(backlog: Sequence[tuple[float, int]], outage: Sequence[float], path: Path) -> Path:
    """Readings waiting in the agent's outbox over time, the uplink outage shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([x for x, _ in backlog])
    n = np.array([y for _, y in backlog])
    fig, ax = plt.subplots(figsize=(11, 3.2), constrained_layout=True)
    ax.plot(t, n, color="#3465a4", lw=1.2, label="readings in the outbox")
    if len(outage) == 2:
        ax.axvspan(outage[0], outage[1], color="#cc0000", alpha=0.15, lw=0, label="broker stopped (outage)")
    ax.set_xlabel("seconds since the agent started")
    ax.set_ylabel("readings waiting")
    ax.set_ylim(bottom=0, top=max(1, int(n.max()) if len(n) else 1) * 1.25)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Outbox backlog through the uplink outage: it grows while the broker is down, then drains")
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
