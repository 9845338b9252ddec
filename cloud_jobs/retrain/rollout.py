"""Canary rollout of a promoted model to the agents of its device type, through device twins.

`plan_rollout` picks the canaries (the first ``ceil(canary_fraction x n)`` devices of the type in id
order, at least one) and the rest; `execute` then

1. sets the desired ``model`` ({version, url, sha256}) on the canaries;
2. waits for each to report ``model_rollout`` for that version (an agent refuses a bundle whose
   signature or hash does not verify, reports why, and keeps scoring with its old model);
3. watches the canaries' alert rates in silver, per device behind them: readings scored by the new
   model since the rollout, until `min_canary_readings` have arrived in all, beside the control group's:
   the rest of the type, still on the previous model, over the same time. A device is *over* when its
   rate is surely (one-sided Wilson bound at `canary_confidence`) above `max_canary_alert_rate` and
   above the control's rate. The canaries are rolled back when most of their devices are over. Faults
   are real in the field and alarms come in runs: one device that meets a dropout or a stuck sensor
   during the watch alerts above any limit on any model, and a fleet that meets a heat wave alerts more
   on any model. A broken model alerts more on most devices at once, and more than the old one on the
   same days;
4. on success sets the desired model on the rest (devices that refuse are recorded, not retried);
   on any failure sets the canaries' desired model back to the previous one (or, without one, calls
   their ``rollback_model`` method) and returns the reason;
5. on an error of its own (the twin service or silver unreachable) sets every device it gave the new
   model back to the previous one and returns ``failed`` with the error: it never raises, so one type's
   error neither ends the others' rollouts nor keeps the job from restoring the champion and writing
   its report.

`execute_all` runs the plans of several device types at once, one thread each: the job then waits for the
slowest type's canary watch rather than for all of them in turn.

`FleetControl` is what the job needs from a hub: devices of a type (twin tag ``device_type``), desired
properties, reported properties, a direct method. `HubControl` is the local stand-in's; on Azure IoT Hub
the same four calls are the service SDK's twin query, twin update, get twin and invoke method
(azure-iot-hub's ``IoTHubRegistryManager``), which this machine cannot reach, so it is not built here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cloud_jobs.config import RolloutConfig
from models.training.threshold import wilson_interval

log = logging.getLogger("edgeflag.cloud.retrain")


class FleetControl(Protocol):
    def devices(self, device_type: str) -> list[str]: ...

    def set_model(self, device: str, spec: dict[str, Any] | None) -> None: ...

    def reported(self, device: str) -> dict[str, Any]: ...

    def invoke(self, device: str, method: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]: ...


class HubControl:
    """`FleetControl` over the local hub (`hub/`): its registry's tags and its twin service."""

    def __init__(self, state: Path, broker: str) -> None:
        from hub.backend import BackendAuth
        from hub.frontend import DeviceRegistry
        from hub.twins import HUB_USER, TwinService

        host, _, port = broker.rpartition(":")
        auth = BackendAuth(state)
        self.registry = DeviceRegistry(state / "devices.json")
        self.twins = TwinService(host or "127.0.0.1", int(port), state,
                                 password=auth.password(HUB_USER) if auth.exists else None, serve=False)
        try:
            self.twins.start()
        except Exception:  # no broker: stop the network thread that would keep retrying it
            self.twins.stop()
            raise
        self._owned = True

    @classmethod
    def running(cls, hub: Any) -> HubControl:
        """Over a `hub.hub.Hub` running in this process: its own registry and twin service (`close`
        leaves them to the hub)."""
        self = cls.__new__(cls)
        self.registry, self.twins, self._owned = hub.registry, hub.twins, False
        return self

    def devices(self, device_type: str) -> list[str]:
        return sorted(d for d in self.registry.ids() if self.registry.tags(d).get("device_type") == device_type)

    def set_model(self, device: str, spec: dict[str, Any] | None) -> None:
        self.twins.set_desired(device, {"model": spec})

    def reported(self, device: str) -> dict[str, Any]:
        rep: dict[str, Any] = self.twins.twin(device).get("reported", {})
        return rep

    def invoke(self, device: str, method: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        return self.twins.invoke(device, method, payload, timeout)

    def close(self) -> None:
        if self._owned:
            self.twins.stop()


def model_spec(bundle_dir: Path, version: int, sha256: str, url_base: str | None) -> dict[str, Any]:
    """The desired ``model`` property for a registered bundle."""
    url = f"{url_base.rstrip('/')}/{bundle_dir.parent.name}/{bundle_dir.name}" if url_base \
        else bundle_dir.resolve().as_uri()
    return {"version": version, "url": url, "sha256": sha256}


@dataclass(frozen=True)
class RolloutPlan:
    device_type: str
    spec: dict[str, Any]
    previous: dict[str, Any] | None
    canaries: tuple[str, ...]
    rest: tuple[str, ...]

    def describe(self) -> str:
        prev = f"v{self.previous['version']}" if self.previous else "the model each device has"
        return (f"{self.device_type}: v{self.spec['version']} ({self.spec['sha256'][:12]}) from {self.spec['url']}\n"
                f"  canaries ({len(self.canaries)}): {', '.join(self.canaries) or '-'}\n"
                f"  then ({len(self.rest)}): {', '.join(self.rest) or '-'}\n"
                f"  on failure: canaries back to {prev}")

    def to_dict(self) -> dict[str, Any]:
        return {"device_type": self.device_type, "spec": self.spec, "previous": self.previous,
                "canaries": list(self.canaries), "rest": list(self.rest)}


def plan_rollout(device_type: str, devices: list[str], spec: dict[str, Any], previous: dict[str, Any] | None,
                 config: RolloutConfig) -> RolloutPlan:
    ordered = sorted(devices)
    k = min(len(ordered), max(1, math.ceil(config.canary_fraction * len(ordered)))) if ordered else 0
    return RolloutPlan(device_type, spec, previous, tuple(ordered[:k]), tuple(ordered[k:]))


@dataclass
class RolloutOutcome:
    status: str  # rolled_out | rolled_back | no_devices | failed (an error: `execute`)
    reason: str = ""
    canary_readings: int = 0
    canary_anomalies: int = 0
    control_readings: int = 0
    control_anomalies: int = 0
    canary_devices: dict[str, tuple[int, int]] = field(default_factory=dict)  # device -> (readings, anomalies)
    over: list[str] = field(default_factory=list)  # canary devices surely above the limit and the control
    refused: dict[str, str] = field(default_factory=dict)
    updated: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def canary_alert_rate(self) -> float | None:
        return self.canary_anomalies / self.canary_readings if self.canary_readings else None

    @property
    def control_alert_rate(self) -> float | None:
        return self.control_anomalies / self.control_readings if self.control_readings else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "canary_alert_rate": self.canary_alert_rate,
                "control_alert_rate": self.control_alert_rate}


#: readings and anomalies per device (the devices behind the agents asked about)
Counts = dict[str, tuple[int, int]]
#: (canary agents, model sha256, model version, since epoch s) -> `Counts` scored by that model since then
#: (a bundle that only changes the threshold keeps the ONNX sha256: the version tells them apart)
CanaryStats = Callable[[list[str], str, int, float], Counts]
#: (control agents, the new model's version, since epoch s) -> `Counts` those agents sent since then scored
#: by any other version: the previous model over the same time
ControlStats = Callable[[list[str], int, float], Counts]


def _totals(counts: Counts) -> tuple[int, int]:
    return sum(n for n, _ in counts.values()), sum(a for _, a in counts.values())


def _wait_reports(control: FleetControl, devices: list[str], version: int, before: dict[str, Any],
                  timeout_s: float, poll_s: float) -> tuple[list[str], dict[str, str]]:
    """Devices that report the new version, and those that refused (with the reason) or never answered."""
    ok: list[str] = []
    refused: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(devices)
    while pending:
        for d in list(pending):
            rep = control.reported(d)
            status = rep.get("model_rollout") or {}
            if (rep.get("model") or {}).get("version") == version and status.get("status") == "ok":
                ok.append(d)
                pending.remove(d)
            elif status != before.get(d) and status.get("status") == "refused":
                refused[d] = str(status.get("reason", "refused"))
                pending.remove(d)
        if pending and time.monotonic() > deadline:
            for d in pending:
                refused[d] = f"no rollout report within {timeout_s:g} s"
            break
        if pending:
            time.sleep(min(poll_s, 0.5))
    return ok, refused


def _verdict(out: RolloutOutcome, config: RolloutConfig) -> str:
    """Why the canaries go back, or "" when they pass: most canary devices with readings must be over,
    each one's one-sided Wilson lower bound above the limit and, when the control group sent readings,
    above the control's upper bound (`out.over` lists them)."""
    conf = config.canary_confidence
    limit, why_control = config.max_canary_alert_rate, "; no control readings to compare with"
    crate = out.control_alert_rate
    if crate is not None:
        high = wilson_interval(crate, out.control_readings, conf)[1]
        limit = max(limit, high)
        why_control = (f", and above the control's {crate:.4f} over {out.control_readings} readings on the "
                       f"previous model (at most {high:.4f})")
    lows = {d: wilson_interval(a / n, n, conf)[0] for d, (n, a) in sorted(out.canary_devices.items()) if n}
    out.over = [d for d, low in lows.items() if low > limit]
    if not lows or 2 * len(out.over) <= len(lows):
        return ""
    rate = out.canary_alert_rate or 0.0
    each = ", ".join(f"{d} {out.canary_devices[d][1] / out.canary_devices[d][0]:.4f} (at least {lows[d]:.4f})"
                     for d in out.over)
    return (f"canary alert rate {rate:.4f} over {out.canary_readings} readings: {len(out.over)} of {len(lows)} "
            f"canary devices alert above {config.max_canary_alert_rate:.4f} at {conf:.0%} confidence{why_control}: "
            f"{each}")


def execute(plan: RolloutPlan, control: FleetControl, canary_stats: CanaryStats, config: RolloutConfig,
            say: Callable[[str], None] = lambda _m: None,
            control_stats: ControlStats | None = None) -> RolloutOutcome:
    """Run the plan: canaries, watch, rest or roll back. Never raises.

    `control_stats` counts the rest of the type over the canaries' watch; without it (or without a rest,
    or when the rest sent nothing) the canaries are judged against the limit alone.

    An error on the way (the hub's twin service or silver unreachable, a bug) ends the rollout with
    status ``failed``: every device this rollout set the new model on is set back to the previous one
    (best effort; what could not be set back is in the reason), so the type is left on the model it ran
    before, and the caller restores that model as the champion."""
    t0 = time.monotonic()
    if not plan.canaries:
        return RolloutOutcome("no_devices", f"no device of type {plan.device_type} in the hub's registry")
    touched: list[str] = []
    try:
        return _execute(plan, control, canary_stats, config, say, control_stats, touched, t0)
    except Exception as exc:  # reported as the type's outcome, with the traceback in the log
        log.exception("%s: rollout failed", plan.device_type)
        reason = f"rollout error: {type(exc).__name__}: {exc}"
        stuck = _set_back(plan, control, touched, config)
        reason += _not_set_back(stuck)
        say(f"{plan.device_type}: {reason}; " + (f"set {len(touched) - len(stuck)} of {len(touched)} devices back "
                                                 "to the previous model" if touched else "no device was changed"))
        return RolloutOutcome("failed", reason, updated=[d for d in touched if d in stuck],
                              seconds=round(time.monotonic() - t0, 1))


def _set_back(plan: RolloutPlan, control: FleetControl, devices: list[str], config: RolloutConfig) -> dict[str, str]:
    """Every device in `devices` back on the previous model (or its own rollback without one); the devices
    that could not be, with why."""
    failed: dict[str, str] = {}
    for d in devices:
        try:
            if plan.previous is not None:
                control.set_model(d, plan.previous)
            else:
                control.invoke(d, "rollback_model", None, config.report_timeout_s)
        except Exception as exc:  # the others are still set back
            failed[d] = f"{type(exc).__name__}: {exc}"
    return failed


def _not_set_back(stuck: dict[str, str]) -> str:
    """The reason's tail naming the devices `_set_back` could not set back ("" when none)."""
    return f"; could not set back {', '.join(f'{d} ({e})' for d, e in sorted(stuck.items()))}" if stuck else ""


def _execute(plan: RolloutPlan, control: FleetControl, canary_stats: CanaryStats, config: RolloutConfig,
             say: Callable[[str], None], control_stats: ControlStats | None, touched: list[str],
             t0: float) -> RolloutOutcome:
    """`execute`'s steps; `touched` collects the devices given the new model, for `execute` to set back."""
    version = int(plan.spec["version"])
    before = {d: control.reported(d).get("model_rollout") for d in plan.canaries + plan.rest}
    started = time.time()
    for d in plan.canaries:
        touched.append(d)
        control.set_model(d, plan.spec)
    say(f"{plan.device_type}: v{version} to {len(plan.canaries)} canaries ({', '.join(plan.canaries)})")
    ok, refused = _wait_reports(control, list(plan.canaries), version, before, config.report_timeout_s, config.poll_s)
    out = RolloutOutcome("rolled_back", refused=refused, updated=list(ok))
    if refused:
        out.reason = "; ".join(f"canary {d}: {r}" for d, r in sorted(refused.items()))
    else:
        deadline = time.monotonic() + config.watch_timeout_s
        while True:
            out.canary_devices = canary_stats(list(plan.canaries), plan.spec["sha256"], version, started)
            out.canary_readings, out.canary_anomalies = _totals(out.canary_devices)
            if out.canary_readings >= config.min_canary_readings:
                break
            if time.monotonic() > deadline:
                out.reason = (f"only {out.canary_readings} readings scored by v{version} on the canaries "
                              f"reached silver within {config.watch_timeout_s:g} s (need "
                              f"{config.min_canary_readings}; is the aggregation job running?)")
                break
            time.sleep(config.poll_s)
        if control_stats is not None and plan.rest:
            out.control_readings, out.control_anomalies = _totals(control_stats(list(plan.rest), version, started))
        if not out.reason:
            out.reason = _verdict(out, config)
        rate, crate = out.canary_alert_rate, out.control_alert_rate
        say(f"{plan.device_type}: canaries scored {out.canary_readings} readings with v{version}, alert rate "
            + (f"{rate:.4f}" if rate is not None else "n/a")
            + (f"; the rest on the previous model {crate:.4f} over {out.control_readings}" if crate is not None
               else ""))
    if out.reason:
        out.reason += _not_set_back(_set_back(plan, control, list(plan.canaries), config))
        touched.clear()
        say(f"{plan.device_type}: rolled back the canaries: {out.reason}")
        out.seconds = round(time.monotonic() - t0, 1)
        return out
    for d in plan.rest:
        touched.append(d)
        control.set_model(d, plan.spec)
    ok_rest, refused_rest = _wait_reports(control, list(plan.rest), version, before, config.report_timeout_s,
                                          config.poll_s)
    out.status, out.updated, out.refused = "rolled_out", ok + ok_rest, refused_rest
    say(f"{plan.device_type}: v{version} on {len(out.updated)} devices"
        + (f"; refused by {len(refused_rest)}: {', '.join(sorted(refused_rest))}" if refused_rest else ""))
    out.seconds = round(time.monotonic() - t0, 1)
    return out


def execute_all(plans: list[RolloutPlan], control: FleetControl, canary_stats: CanaryStats,
                config: RolloutConfig, say: Callable[[str], None] = lambda _m: None,
                control_stats: ControlStats | None = None) -> dict[str, RolloutOutcome]:
    """`execute` every plan at once, one thread per device type; the outcomes by device type.

    The plans are for different types, so disjoint sets of devices: each canary watch is judged as if it
    ran alone, and the wall time is the slowest type's, not the sum. `control`, `canary_stats` and
    `control_stats` are called from several threads (the hub's twin service and Spark sessions are
    thread-safe). An error in one type's rollout is that type's ``failed`` outcome; the others run on."""
    types = [p.device_type for p in plans]
    if len(set(types)) != len(types):
        raise ValueError(f"one rollout per device type at a time, got {types}")
    with ThreadPoolExecutor(max_workers=max(1, len(plans)), thread_name_prefix="rollout") as pool:
        futures = {p.device_type: pool.submit(execute, p, control, canary_stats, config, say, control_stats)
                   for p in plans}
        wait(futures.values())
    return {t: f.result() for t, f in futures.items()}
