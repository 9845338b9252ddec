"""The control plane's work queue: reports never pile up in front of a desired patch.

The status thread asks for a report every `status_interval_s`; when the hub's twin service answers
slowly (a loaded gateway, a busy hub), each report takes longer than the interval. Reports used to
queue without bound, and a desired patch carrying a rollout waited behind all of them (39 s in one
demo run, past the rollout's report timeout, so the canary was rolled back). The uplink here is a
stand-in for the `Controllable` interface with a slow `patch_reported`; the real uplinks and hub are
exercised in test_control_plane.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from edge_agent.control import ControlPlane, SettingsPlan
from edge_agent.sinks.base import Controllable, DesiredHandler, MethodHandler


class SlowTwin(Controllable):
    """patch_reported takes `delay` seconds, like a hub that answers slowly; records every patch."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.patches: list[dict[str, Any]] = []
        self.on_desired: DesiredHandler | None = None

    def set_control_handlers(self, on_desired: DesiredHandler, on_method: MethodHandler) -> None:
        self.on_desired = on_desired

    def get_twin(self, timeout: float) -> dict[str, Any]:
        return {"desired": {}, "reported": {}}

    def patch_reported(self, patch: dict[str, Any], timeout: float) -> None:
        time.sleep(self.delay)
        self.patches.append(patch)


class Agent:
    """The part of the agent the control plane drives (`edge_agent.control.Managed`)."""

    def __init__(self) -> None:
        self.log = logging.getLogger("test.control")
        self.slot: Any = None
        self.applied: list[SettingsPlan] = []

    def apply_settings(self, plan: SettingsPlan) -> None:
        self.applied.append(plan)

    def status(self) -> dict[str, Any]:
        return {"agent_version": "test", "model": {}, "config": {}, "outbox": {}, "dropped_total": {},
                "quarantined": {}, "last_error": "", "components": {}}

    def flush_now(self) -> dict[str, int]:
        return {}


def test_a_desired_patch_waits_for_at_most_one_report_however_often_reports_are_asked(tmp_path: Path) -> None:
    agent, twin = Agent(), SlowTwin(delay=0.2)
    control = ControlPlane(agent, state_dir=tmp_path)
    try:
        control.attach(twin)
        deadline = time.monotonic() + 5
        while twin.on_desired is None or control.control_status.get("status") != "applied":
            assert time.monotonic() < deadline, "the initial twin sync did not complete"
            time.sleep(0.01)
        sent_before = len(twin.patches)
        for _ in range(50):  # the status thread asking every interval while the hub is slow
            control.request_report()
        assert twin.on_desired is not None
        t0 = time.monotonic()
        twin.on_desired({"$version": 7, "log_level": "debug"})
        while control.desired_version != 7:
            assert time.monotonic() - t0 < 3, "the desired patch is stuck behind queued reports"
            time.sleep(0.01)
        waited = time.monotonic() - t0
        assert waited < 0.2 * 3, waited  # one report in flight, at most one queued: not 50
        assert agent.applied[-1].log_level == "debug"
        time.sleep(1.0)  # the queue drains: each report takes 0.2 s
        # 50 requests became at most two reports, plus the one the patch sends with its outcome
        assert len(twin.patches) - sent_before <= 3, len(twin.patches) - sent_before
        assert twin.patches[-1]["control"] == {"desired_version": 7, "status": "applied", "error": ""}
    finally:
        control.close()
