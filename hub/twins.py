"""Device twins and direct methods for the local hub, spoken in IoT Hub's MQTT protocol.

The service connects to the backend broker as ``edgeflag-hub`` and serves every device's
scoped namespace (``edgeflag/iothub/<device>/…``, which the front end maps to the device's
own ``$iothub/…``):

* ``twin/GET/?$rid=R``  -> ``twin/res/200/?$rid=R`` with ``{"desired": …, "reported": …}``
* ``twin/PATCH/properties/reported/?$rid=R`` -> merge (JSON merge patch), version + 1,
  ``twin/res/204/?$rid=R&$version=V``
* `set_desired(device, patch)` -> merge, version + 1, publish
  ``twin/PATCH/properties/desired/?$version=V`` with the patch and ``$version``
* `invoke(device, method, payload)` -> ``methods/POST/<method>/?$rid=R``; the device answers on
  ``methods/res/<status>/?$rid=R``.

Twins are kept in ``<state>/twins/<device>.json`` (written atomically) so they survive restarts.

Hostile input: a reported patch must be a JSON object of at most 32 KB, nested at most 32 levels, and
the reported section it yields at most 32 KB (IoT Hub's limits); anything else is answered
``twin/res/400`` with the reason and changes nothing. The same limits hold for desired patches set by
operators (`set_desired` raises ContractError). A request whose ``$rid`` could not be answered on (``#``,
``a/b``, over 64 characters) is dropped and counted. Method replies are accepted only from the device
the method was sent to, for a request id that is random per call. No message can raise out of the
service's network thread (`errors` counts what was refused; `alive` says the thread runs).
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from contracts.errors import ContractError
from contracts.jsonsafe import MAX_CONTROL_BYTES, check_depth, loads, loads_object
from contracts.mqtt import MqttSettings, make_client, subscribe_on_connect
from contracts.topics import (
    METHOD_RESPONSE_FILTER,
    SERVICE_CONTROL_FILTERS,
    desired_patch_topic,
    method_request_topic,
    parse_control_topic,
    twin_response_topic,
    valid_rid,
)
from hub.frontend import SCOPE
from hub.statefile import write_private

log = logging.getLogger("edgeflag.hub.twins")

HUB_USER = "edgeflag-hub"
_CONTROL_IDS = itertools.count(1)


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch (null deletes), returning a new dict."""
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_patch(out[k], v)
        else:
            out[k] = v
    return out


class TwinStore:
    """Twins as one JSON file per device under `root`.

    `update` is a read-modify-write under an exclusive file lock (``<device>.lock``), so the hub
    and an `edgeflag hub twin set` in another process never lose each other's patches; the new
    file is written to a private temporary, fsynced and renamed into place (readers see the old
    or the new twin, never half of one).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, device: str) -> Path:
        return self.root / f"{device}.json"

    def get(self, device: str) -> dict[str, Any]:
        p = self._path(device)
        if p.exists():
            data: dict[str, Any] = json.loads(p.read_text())
            return data
        return {"desired": {"$version": 1}, "reported": {"$version": 1}}

    def update(self, device: str, side: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge `patch` into one side of the twin; ContractError (nothing written) if the patch is not a
        JSON object, is nested too deep, holds NaN/Infinity, or the side would exceed 32 KB."""
        if not isinstance(patch, dict):
            raise ContractError(side, f"a patch must be a JSON object, got {type(patch).__name__}")
        check_depth(patch, what=side)
        path = self._path(device)
        with self._lock, open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            twin = self.get(device)
            version = int(twin[side].get("$version", 1)) + 1
            merged = {**merge_patch({k: v for k, v in twin[side].items() if k != "$version"}, patch),
                      "$version": version}
            try:
                size = len(json.dumps(merged, separators=(",", ":"), allow_nan=False))
            except ValueError as exc:
                raise ContractError(side, str(exc)) from None
            if size > MAX_CONTROL_BYTES:
                raise ContractError(side, f"would be {size} bytes, over the {MAX_CONTROL_BYTES} byte limit")
            twin[side] = merged
            write_private(path, json.dumps(twin, indent=1))
            return twin


class TwinService:
    """Answers twin requests, pushes desired patches and invokes methods over the backend broker."""

    def __init__(self, host: str, port: int, state: Path, password: str | None = None, *, serve: bool = True) -> None:
        """`serve=False`: a control client beside the running hub (CLI commands, the retraining job's
        rollout): it sets desired properties and invokes methods but leaves twin GET / reported PATCH to
        the hub's own service, under a client id of its own so neither takes the other's session over."""
        import os

        self.store = TwinStore(state / "twins")
        self._waiting: dict[str, tuple[str, threading.Event, dict[str, Any]]] = {}  # rid -> device, ...
        self.errors = 0
        self._lock = threading.Lock()
        self.connected = threading.Event()
        cid = "edgeflag-hub-twins" if serve else f"edgeflag-hub-ctl-{os.getpid()}-{next(_CONTROL_IDS)}"
        c = self.client = make_client(MqttSettings(host=host, port=port, client_id=cid, username=HUB_USER,
                                                   password=password))
        filters = SERVICE_CONTROL_FILTERS if serve else (METHOD_RESPONSE_FILTER,)
        topics = [(f"{SCOPE}/+/{f}", 1) for f in filters]

        subscribe_on_connect(c, topics, self.connected)  # ready once subscribed: no request is dropped
        c.on_message = self._on_message
        c.reconnect_delay_set(0.2, 5)
        c.connect_async(host, port, 30)

    def start(self) -> None:
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("twin service cannot reach the backend broker")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def alive(self) -> bool:
        """True while the network thread runs (it is started by `start`)."""
        thread = getattr(self.client, "_thread", None)
        return thread is not None and thread.is_alive()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            self._handle(msg)
        except Exception as exc:  # nothing a device sends may stop the service
            self.errors += 1
            log.error("twin service refused a message on %.200s: %s: %.300s", msg.topic, type(exc).__name__, exc)

    def _handle(self, msg: Any) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 5 or "/".join(parts[:2]) != SCOPE:
            return
        device = parts[2]
        topic = parse_control_topic("/".join(parts[3:]))
        rid = topic.rid
        base = f"{SCOPE}/{device}/"
        if not valid_rid(rid):
            self.errors += 1
            log.warning("dropped a request from %.128s with an unusable $rid %.40r", device, rid)
            return
        if topic.kind == "twin_get":
            twin = self.store.get(device)
            self.client.publish(base + twin_response_topic(200, rid), json.dumps(twin), qos=1)
        elif topic.kind == "reported":
            try:
                patch = loads_object(msg.payload or b"{}", what="reported")
                twin = self.store.update(device, "reported", patch)
            except ContractError as exc:
                self.errors += 1
                self.client.publish(base + twin_response_topic(400, rid), json.dumps({"error": str(exc)}), qos=1)
                return
            v = twin["reported"]["$version"]
            self.client.publish(base + twin_response_topic(204, rid, v), b"", qos=1)
        elif topic.kind == "method_res":
            with self._lock:
                waiter = self._waiting.get(rid)
            if waiter is None or waiter[0] != device:  # late, unknown, or another device answering
                self.errors += waiter is not None
                return
            try:
                status = int(topic.arg)
                payload = loads(msg.payload or b"null", what="method response")
            except (ValueError, IndexError) as exc:  # ContractError is a ValueError
                status, payload = 502, {"error": f"device {device} answered unusably: {exc}"}
            waiter[2].update(status=status, payload=payload)
            waiter[1].set()

    def twin(self, device: str) -> dict[str, Any]:
        return self.store.get(device)

    def set_desired(self, device: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge and push a desired patch; ContractError (nothing stored or sent) if it breaks the limits."""
        twin = self.store.update(device, "desired", patch)
        v = twin["desired"]["$version"]
        self.client.publish(f"{SCOPE}/{device}/" + desired_patch_topic(v),
                            json.dumps({**patch, "$version": v}), qos=1)
        return twin

    def invoke(self, device: str, method: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        rid = secrets.token_hex(8)  # unguessable: another device cannot answer for this one
        done: tuple[str, threading.Event, dict[str, Any]] = (device, threading.Event(), {})
        with self._lock:
            self._waiting[rid] = done
        try:
            self.client.publish(f"{SCOPE}/{device}/" + method_request_topic(method, rid), json.dumps(payload),
                                qos=1)
            if not done[1].wait(timeout):
                return 504, {"error": f"device {device} did not answer {method} within {timeout:g}s"}
            return int(done[2]["status"]), done[2]["payload"]
        finally:
            with self._lock:
                self._waiting.pop(rid, None)

    def wait_reported(self, device: str, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Poll the stored reported properties until pred(reported); TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            rep: dict[str, Any] = self.store.get(device)["reported"]
            if pred(rep):
                return rep
            if time.monotonic() > deadline:
                raise TimeoutError(f"reported properties of {device} did not match within {timeout:g}s: {rep}")
            time.sleep(0.05)
