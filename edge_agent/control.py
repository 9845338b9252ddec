"""The agent's control plane: device twin and direct methods, the same over both uplinks.

Desired properties (validated as a whole, then applied as a whole — or not at all):

| key | value | effect |
|---|---|---|
| `threshold` | number in (0, 1], or null for the bundle's | flag when score >= threshold, from the next batch |
| `batch_size` | int 1..65536 | micro-batch limit |
| `linger_ms` | number 0..10000 | wait for more readings after the first of a micro-batch |
| `send_rate` | messages/s >= 0 (0 = unlimited) | the uplink token bucket |
| `log_level` | debug, info, warning, error | agent log level |
| `model` | {version, url, sha256} | rollout: fetch, verify, canary, swap between batches |

Reported properties: agent version, model (name, version, sha256, threshold), effective
config, outbox depth/bytes/oldest age, drops and quarantine by reason, last error, and the
outcome of the last desired patch (`control`) and rollout (`model_rollout`). They are sent after
every patch and method and every `status_interval_s`, from one work queue that holds at most one
pending report, so a desired patch (a rollout) never waits behind a backlog of reports when the hub
answers slowly.

Direct methods: `get_status`, `flush` (send now, returns what is pending), `rollback_model`
(back to the previous model), `set_log_level` ({"level": …}).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from contracts.errors import ContractError
from contracts.jsonsafe import check_depth
from edge_agent.config import MAX_BATCH_SIZE, MAX_LINGER_MS
from edge_agent.errors import UplinkError
from edge_agent.logs import event
from edge_agent.model_slot import ModelSlot
from edge_agent.rollout import RolloutError, parse_spec, prepare
from edge_agent.scoring import ScoringStage
from edge_agent.sinks.base import Controllable
from models.bundle import Bundle

LOG_LEVELS = ("debug", "info", "warning", "error")
KNOWN = ("threshold", "batch_size", "linger_ms", "send_rate", "log_level", "model")


class PatchError(ValueError):
    """Raised when a desired patch is invalid (nothing of it is applied)."""


class Unchanged(Enum):
    UNCHANGED = 0


UNCHANGED = Unchanged.UNCHANGED


@dataclass(frozen=True)
class SettingsPlan:
    """A validated desired patch: each field is a new value, or UNCHANGED (threshold None = the bundle's)."""

    threshold: float | Unchanged | None = UNCHANGED
    batch_size: int | Unchanged = UNCHANGED
    linger_ms: float | Unchanged = UNCHANGED
    send_rate: float | Unchanged = UNCHANGED
    log_level: str | Unchanged = UNCHANGED
    model: tuple[Bundle, ScoringStage] | Unchanged = UNCHANGED  # a prepared (verified, canaried) model

    def keys(self) -> list[str]:
        """The settings this plan changes."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not UNCHANGED]


class Managed(Protocol):
    """What the control plane needs from the agent it runs in (the agent satisfies it; tests may fake it)."""

    log: logging.Logger
    slot: ModelSlot

    def apply_settings(self, plan: SettingsPlan) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def flush_now(self) -> dict[str, int]: ...


class ControlPlane:
    def __init__(self, agent: Managed, *, state_dir: Path, trusted_key: Path | None = None) -> None:
        self.agent = agent
        self.state_dir = state_dir
        self.trusted_key = trusted_key
        self.desired_version: int | None = None
        self.control_status: dict[str, Any] = {}
        self.rollout_status: dict[str, Any] = {}
        self._jobs: queue.Queue[tuple[str, Any]] = queue.Queue()
        # at most one report waits in the queue: the status thread asks every few seconds, and when the
        # hub answers slowly, queued reports would hold a desired patch (a rollout) back behind them
        self._report_lock = threading.Lock()
        self._report_queued = False
        self._sink: Controllable | None = None
        self._thread = threading.Thread(target=self._work, name="edgeflag-control", daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    # -- wiring --------------------------------------------------------------------------------
    def attach(self, sink: Any) -> None:
        """Called after every (re)connect: install handlers, then sync the full twin."""
        if not isinstance(sink, Controllable):
            return
        self._sink = sink
        sink.set_control_handlers(lambda patch: self._jobs.put(("desired", patch)), self.method)
        self._jobs.put(("sync", None))

    def close(self) -> None:
        self._stop.set()
        self._jobs.put(("stop", None))
        self._thread.join(0.5)  # it may be waiting on the network; it is a daemon thread

    def _work(self) -> None:
        while not self._stop.is_set():
            kind, arg = self._jobs.get()
            try:
                if kind == "sync" and self._sink is not None:
                    twin = self._sink.get_twin(10.0)
                    self.apply_desired(twin.get("desired", {}), full=True)
                elif kind == "desired":
                    self.apply_desired(arg)
                elif kind == "report":
                    with self._report_lock:  # a request from now on queues a new report (fresh state)
                        self._report_queued = False
                    self.report()
            except UplinkError as exc:  # e.g. a plain broker with no twin service behind it
                if self.control_status.get("status") != "unavailable":
                    event(self.agent.log, logging.INFO, "control plane unavailable", error=str(exc))
                self.control_status = {"status": "unavailable", "error": str(exc)}
            except Exception as exc:  # no input may kill this thread: log it, report it, keep serving
                self.control_status = {"status": "error", "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
                event(self.agent.log, logging.ERROR, "control job failed; the control plane keeps running",
                      job=kind, error=self.control_status["error"])

    # -- desired properties --------------------------------------------------------------------
    def apply_desired(self, patch: dict[str, Any], *, full: bool = False) -> None:
        """Validate a desired patch (or the full desired section) as a whole, then apply all of it or none.

        Never raises on what the patch holds: a rejected patch is logged and reported (`control`)."""
        version = patch.get("$version") if isinstance(patch, dict) else None
        if type(version) is not int:
            version = None
        try:
            if not isinstance(patch, dict):
                raise PatchError(f"desired properties must be an object, got {type(patch).__name__}")
            if "$invalid" in patch:  # the uplink could not decode the patch (see sinks)
                raise PatchError(str(patch["$invalid"]))
            check_depth(patch, what="desired")
            body = {k: v for k, v in patch.items() if not str(k).startswith("$")}
            if full:  # a full twin: only the keys we manage, and only if they changed
                body = {k: v for k, v in body.items() if k in KNOWN}
            plan = self.validate(body)
        except (PatchError, RolloutError, ContractError) as exc:
            self.control_status = {"desired_version": version, "status": "rejected", "error": str(exc)[:500]}
            if isinstance(patch, dict) and "model" in patch:
                self.rollout_status = {"status": "refused", "reason": str(exc)}
            event(self.agent.log, logging.WARNING, "desired patch rejected", version=version, error=str(exc))
            self.report()
            return
        self.agent.apply_settings(plan)
        if isinstance(plan.model, tuple):
            bundle = plan.model[0]
            self.rollout_status = {"status": "ok", "version": bundle.manifest.version, "sha256": bundle.manifest.sha256}
        self.desired_version = version
        self.control_status = {"desired_version": version, "status": "applied", "error": ""}
        event(self.agent.log, logging.INFO, "desired patch applied", version=version, keys=plan.keys())
        self.report()

    def validate(self, body: dict[str, Any]) -> SettingsPlan:
        """Check every key; prepare a rollout (fetch, verify, canary). Raises without side effects."""
        unknown = sorted(set(body) - set(KNOWN))
        if unknown:
            raise PatchError(f"unknown desired properties: {', '.join(unknown)} (known: {', '.join(KNOWN)})")
        plan: dict[str, Any] = {}
        if "threshold" in body:
            t = body["threshold"]
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1):
                raise PatchError(f"threshold: must be a number in (0, 1] or null, got {t!r}")
            plan["threshold"] = None if t is None else float(t)
        if "batch_size" in body:
            b = body["batch_size"]
            if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BATCH_SIZE:
                raise PatchError(f"batch_size: must be an integer in 1..{MAX_BATCH_SIZE}, got {b!r}")
            plan["batch_size"] = b
        if "linger_ms" in body:
            g = body["linger_ms"]
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 <= g <= MAX_LINGER_MS:  # NaN too
                raise PatchError(f"linger_ms: must be a number in 0..{MAX_LINGER_MS}, got {g!r}")
            plan["linger_ms"] = float(g)
        if "send_rate" in body:
            r = body["send_rate"]
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < math.inf:  # NaN too
                raise PatchError(f"send_rate: must be a number >= 0, got {r!r}")
            plan["send_rate"] = float(r)
        if "log_level" in body:
            lv = body["log_level"]
            if lv not in LOG_LEVELS:
                raise PatchError(f"log_level: must be one of {', '.join(LOG_LEVELS)}, got {lv!r}")
            plan["log_level"] = lv
        if body.get("model") is not None:
            version, _url, sha = parse_spec(body["model"])
            slot = self.agent.slot
            current = slot.bundle.manifest
            if (version, sha) != (current.version, current.sha256):
                stage = slot.stage
                plan["model"] = prepare(body["model"], self.state_dir, trusted_key=self.trusted_key,
                                        current=stage, canary=stage.recent)
        return SettingsPlan(**plan)

    # -- methods ---------------------------------------------------------------------------------
    def method(self, name: str, payload: Any) -> tuple[int, Any]:
        """Handle a direct method quickly (called on the uplink's network thread).

        Never raises: bad input is a 400, an unexpected failure a 500, both with an "error"."""
        try:
            check_depth(payload, what="method payload")
            return self._method(name, payload)
        except ContractError as exc:
            return 400, {"error": str(exc)}
        except Exception as exc:
            event(self.agent.log, logging.ERROR, "direct method failed", method=name[:64], error=str(exc)[:500])
            return 500, {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}

    def _method(self, name: str, payload: Any) -> tuple[int, Any]:
        agent = self.agent
        if name == "get_status":
            return 200, agent.status()
        if name == "flush":
            return 200, agent.flush_now()
        if name == "set_log_level":
            level = (payload or {}).get("level") if isinstance(payload, dict) else payload
            if not isinstance(level, str) or level not in LOG_LEVELS:
                return 400, {"error": f"level must be one of {', '.join(LOG_LEVELS)}"}
            agent.apply_settings(SettingsPlan(log_level=level))
            self.request_report()
            return 200, {"log_level": level}
        if name == "rollback_model":
            try:
                bundle = agent.slot.rollback()
            except RolloutError as exc:
                return 409, {"error": str(exc)}
            self.rollout_status = {"status": "rolled_back", "version": bundle.manifest.version,
                                   "sha256": bundle.manifest.sha256}
            self.request_report()
            return 200, {"model": {"name": bundle.manifest.name, "version": bundle.manifest.version}}
        return 404, {"error": f"unknown method {name[:64]!r}; known: get_status, flush, rollback_model, set_log_level"}

    # -- reported properties -------------------------------------------------------------------
    def reported(self) -> dict[str, Any]:
        s = self.agent.status()
        return {
            "agent_version": s["agent_version"], "model": s["model"], "config": s["config"],
            "outbox": s["outbox"], "dropped": s["dropped_total"], "quarantined": s["quarantined"],
            "last_error": s["last_error"], "components": s["components"], "control": self.control_status,
            "model_rollout": self.rollout_status,
        }

    def report(self) -> None:
        if self._sink is None:
            return
        try:
            self._sink.patch_reported(self.reported(), 10.0)
        except UplinkError as exc:
            self.control_status = {**self.control_status, "report_error": str(exc)}

    def request_report(self) -> None:
        """Queue a report of the reported properties, unless one is already waiting (it will carry the
        state as it is when it is sent): the queue never holds a backlog of reports."""
        with self._report_lock:
            if self._report_queued:
                return
            self._report_queued = True
        self._jobs.put(("report", None))
