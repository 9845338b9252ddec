"""The demo's live terminal view (rich): per device type, the agents' own figures; incidents; the phase."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgeflag.cli.demo_fleet import TYPES, Gateway, Watcher


def render(*, phase: str, elapsed: float, stream_s: float, gateways: Sequence[Gateway], watcher: Watcher,
           incidents: Sequence[dict[str, Any]], notes: Sequence[str]) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    t = Table(title="edge fleet (each agent's Prometheus endpoint)", expand=True,
              caption="flagged: readings above the threshold · events: anomaly events opened (one alert per "
                      "event) · backlog: readings waiting in the agents' outboxes")
    for col, just in (("device type", "left"), ("devices online", "right"), ("agents online", "right"),
                      ("readings/s", "right"), ("sent", "right"), ("flagged", "right"), ("events", "right"),
                      ("outbox backlog", "right"), ("model", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for dtype in TYPES:
        mine = [g for g in gateways if g.device_type == dtype]
        latest = [(g, watcher.latest(g.name)) for g in mine]
        up = [(g, s) for g, s in latest if s is not None and s.connected]
        versions = sorted({s.model_version for _, s in latest if s is not None and s.model_version is not None})
        backlog = sum(s.backlog for _, s in latest if s is not None)
        t.add_row(dtype, f"{sum(len(g.devices) for g, _ in up)}/{sum(len(g.devices) for g in mine)}",
                  f"{len(up)}/{len(mine)}",
                  f"{sum(watcher.rate(g.name) for g in mine):,.0f}",
                  f"{sum(s.sent for _, s in latest if s is not None):,}",
                  f"{sum(s.flagged for _, s in latest if s is not None):,}",
                  f"{sum(s.events for _, s in latest if s is not None):,}",
                  f"[bold red]{backlog:,}[/]" if backlog > 500 else f"{backlog:,}",
                  ", ".join(f"v{v}" for v in versions) or "-")
    inc = Table(title="fleet incidents (cloud aggregation job)", expand=True)
    for col in ("incident", "event", "type", "devices"):
        inc.add_column(col)
    for ev in list(incidents)[-5:]:
        inc.add_row(str(ev.get("incident_id")), str(ev.get("event")), str(ev.get("device_type")),
                    f"{len(ev.get('devices') or [])}: " + ", ".join((ev.get("devices") or [])[:6]))
    if not incidents:
        inc.add_row("-", "none yet", "", "")
    head = Panel(f"[bold]{phase}[/]  ·  {elapsed:,.0f} s of ~{stream_s:,.0f} s of streaming",
                 title="edgeflag demo", border_style="cyan")
    tail = Panel("\n".join(list(notes)[-6:]) or "-", title="log", border_style="dim")
    return Group(head, t, inc, tail)
