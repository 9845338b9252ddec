"""docs/plugins.md stays true: its example source, uplink and config run, as written, through a real agent."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import tomllib
from prometheus_client import generate_latest

from contracts.block import ReadingBlock
from edge_agent.agent import Agent
from edge_agent.config import build_config
from edge_agent.sinks import SINKS
from edge_agent.sources import SOURCES
from tests.edge_agent.helpers import wait_for

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def example(kind: str) -> str:
    """The fenced block of docs/plugins.md that starts with `# example: <kind>`."""
    blocks = re.findall(r"```(?:python|toml)\n(# example: (\w+)\n.*?)```", PAGE.read_text(), re.S)
    found = [code for code, k in blocks if k == kind]
    assert len(found) == 1, f"docs/plugins.md has {len(found)} '# example: {kind}' blocks"
    return found[0]


@pytest.fixture
def plugins() -> Iterator[None]:
    """Load the page's plugins as modules (they register themselves); unregister them afterwards."""
    try:
        for kind in ("source", "uplink"):
            module = types.ModuleType(f"plugins_doc_{kind}")
            sys.modules[module.__name__] = module
            exec(compile(example(kind), f"docs/plugins.md ({kind})", "exec"), module.__dict__)
        yield
    finally:
        SOURCES.classes.pop("csv", None)
        SINKS.classes.pop("file", None)
        for kind in ("source", "uplink"):
            sys.modules.pop(f"plugins_doc_{kind}", None)


def write_csv(path: Path, block: ReadingBlock) -> None:
    rows = [",".join(["timestamp", *block.channels])]
    for ts, values in zip(block.ts, block.values, strict=True):
        stamp = datetime.fromtimestamp(float(ts), timezone.utc).isoformat()
        rows.append(",".join([stamp, *(repr(float(v)) for v in values)]))
    path.write_text("\n".join(rows) + "\n")


def readings_by_device(path: Path) -> Counter[tuple[str, int]]:
    out: Counter[tuple[str, int]] = Counter()
    for line in path.read_text().splitlines():
        body = json.loads(line)
        out.update((body["device_id"], r["seq"]) for r in body["readings"])
    return out


def test_the_pages_source_uplink_and_config_run_in_an_agent(plugins: None, tmp_path: Path,
                                                            trained_small: tuple[Path, dict[str, Any]]) -> None:
    bundle, blocks = trained_small
    block = next(iter(blocks.values())).slice(0, 300)
    write_csv(tmp_path / "line-3.csv", block)
    text = example("config").replace("/var/lib/edgeflag/models", str(bundle))
    text = text.replace("/var/lib/edgeflag/", f"{tmp_path}/")
    raw = tomllib.loads(text)
    raw["agent"] = {"state_dir": str(tmp_path / "state"), "status_interval_s": 3600.0}
    raw["log"] = {"level": "warning"}

    agent = Agent(build_config(raw, environ={}))
    agent.start()
    try:
        wait_for(agent.drained, 60, "the agent to send everything")
        checkpoint = agent.outbox.checkpoint()
        components = agent.status()["components"]
        exposition = generate_latest(agent.metrics.registry).decode()
    finally:
        agent.stop()
    got = readings_by_device(tmp_path / "messages.jsonl")
    press = sorted(seq for dev, seq in got if dev == "press-07")
    assert press == list(range(300)), "every CSV row once, in order"
    assert len(got) == 300 + 2 * 300 and set(got.values()) == {1}
    assert checkpoint["line-3/csv.rows"] == "300" and checkpoint["sim/simulator.next"] == "300"
    assert components["source/line-3"]["received"] == 300 and components["source/sim"]["received"] == 600
    assert components["transform/score"]["sent"] == 900 and components["sink/uplink"]["sent"] == 900
    # the same counts under Vector's names in Prometheus
    assert ('edgeflag_component_received_events_total{component_id="line-3",component_kind="source",'
            'component_type="csv"} 300.0') in exposition
    assert ('edgeflag_component_sent_events_total{component_id="uplink",component_kind="sink",'
            'component_type="file"} 900.0') in exposition

    # a restart resumes each source from its own checkpoint: nothing is read or sent twice
    again = Agent(build_config(raw, environ={}))
    again.start()
    try:
        wait_for(again.drained, 30, "the restarted agent to find nothing new")
    finally:
        again.stop()
    assert readings_by_device(tmp_path / "messages.jsonl") == got
