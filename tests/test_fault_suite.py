"""The short form of `benchmarks/faults.py`: each fault once, small, with the real agent, broker and proxy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_the_fault_suite_loses_nothing_and_every_drop_is_counted(trained_small) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--short",
                           "--bundle", str(trained_small[0])], cwd=ROOT, capture_output=True, text=True, timeout=400)
    print(done.stdout)
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert {x["fault"] for x in lines} == {"agent_kill", "broker_kill", "lost_pubacks", "flapping_link",
                                            "outage_at_capacity", "bit_flip"}, done.stderr[-2000:]
    for x in lines:
        assert x["lost"] == 0, x
        # only a SIGKILLed Mosquitto may lose what it acknowledged (it acks before it persists): the broker's
        # loss, seen by the proxy; anywhere else every reading is delivered or counted as dropped
        broker_loss = x["lost_after_broker_ack"] or 0
        assert broker_loss == 0 or x["fault"] == "broker_kill", x
        assert x["delivered"] + x["dropped"] + broker_loss == x["produced"], x
        if x["drop_policy"]:
            assert x["dropped"] > 0, f"{x['fault']}: the fault must make the outbox drop for this to mean anything"
        else:
            assert x["dropped"] == 0, x
    by = {x["fault"]: x for x in lines}
    assert by["lost_pubacks"]["swallowed_pubacks"] > 0 and by["lost_pubacks"]["duplicates"] > 0, \
        "PUBACKs were swallowed, so the agent must have sent those readings again"
    assert done.returncode == 0
