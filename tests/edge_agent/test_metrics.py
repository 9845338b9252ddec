"""The Prometheus endpoint exposes the agent's counters under the documented names."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from helpers import wait_for

from edge_agent.agent import Agent
from edge_agent.config import build_config
from hub.mosquitto import free_port


def test_metrics_endpoint_reports_counts_outbox_model_and_connection(tmp_path: Path, trained_small) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    cfg = build_config({
        "agent": {"state_dir": str(tmp_path / "state")}, "model": {"bundle": str(trained_small[0])},
        "source": {"type": "simulator", "devices": 2, "readings": 300},
        "uplink": {"type": "none"}, "metrics": {"port": port}, "log": {"level": "warning"},
    }, environ={})
    agent = Agent(cfg)
    agent.start()
    try:
        wait_for(lambda: agent.metrics.snapshot()["readings_in"] == 600, 20, "the stream")
        wait_for(lambda: agent.metrics.snapshot()["outbox"]["readings"] == 600, 5, "the gauges")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        agent.stop(flush_timeout=0)
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines()
              if line and not line.startswith("#")}
    assert values["edgeflag_readings_in_total"] == 600
    assert values["edgeflag_readings_scored_total"] == 600
    assert values["edgeflag_readings_sent_total"] == 0
    assert values["edgeflag_outbox_readings"] == 600 and values["edgeflag_outbox_bytes"] > 0
    assert values["edgeflag_uplink_connected"] == 0
    # one observation per scored micro-batch (regression: every ingest observed it twice)
    assert values["edgeflag_scoring_batch_seconds_count"] == len(agent.metrics.batch_ms) >= 1
    assert any(k.startswith("edgeflag_model_info{") and 'name="small"' in k for k in values)
    assert "edgeflag_outbox_oldest_age_seconds" in values
