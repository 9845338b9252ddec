"""MQTT topic layout and property-bag encoding, shared by agent, hub and simulator.

Telemetry follows Azure IoT Hub's MQTT layout so one cloud side serves both uplinks:
``devices/{device_id}/messages/events/{property_bag}`` where the property bag is
URL-encoded ``key=value&key=value`` (system properties use IoT Hub's ``$.ct``,
``$.ce`` names). Local sensors publish readings to ``edgeflag/sensors/{device_id}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import parse_qsl, quote, urlencode

from contracts.errors import ContractError

SENSOR_PREFIX = "edgeflag/sensors"
TELEMETRY_FILTER = "devices/+/messages/events/#"

#: IoT Hub system property names in the property bag.
CONTENT_TYPE_KEY = "$.ct"
CONTENT_ENCODING_KEY = "$.ce"


def sensor_topic(device_id: str, prefix: str = SENSOR_PREFIX) -> str:
    """Topic a local sensor (or the simulator) publishes one device's readings to."""
    return f"{prefix}/{device_id}"


def sensor_filter(prefix: str = SENSOR_PREFIX) -> str:
    return f"{prefix}/+"


def encode_property_bag(props: Mapping[str, str]) -> str:
    """URL-encode application/system properties as IoT Hub expects (no leading '?')."""
    return urlencode({k: str(v) for k, v in props.items()}, quote_via=quote, safe="")


def decode_property_bag(bag: str) -> dict[str, str]:
    return dict(parse_qsl(bag, keep_blank_values=True))


def telemetry_topic(device_id: str, props: Mapping[str, str] | None = None) -> str:
    """``devices/{id}/messages/events/`` followed by the URL-encoded property bag."""
    base = f"devices/{device_id}/messages/events/"
    return base + encode_property_bag(props) if props else base


def parse_telemetry_topic(topic: str) -> tuple[str, dict[str, str]]:
    """Split a telemetry topic into (device_id, properties)."""
    parts = topic.split("/", 4)
    if len(parts) < 4 or parts[0] != "devices" or parts[2] != "messages" or parts[3] != "events":
        raise ContractError("topic", f"not a telemetry topic: {topic!r}")
    bag = parts[4] if len(parts) == 5 else ""
    return parts[1], decode_property_bag(bag)


_RID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._:")


def valid_rid(rid: str) -> bool:
    """A twin/method request id we answer on: 1..64 characters of [A-Za-z0-9-._:] (no wildcards, no '/').

    A reply topic is built from the request id, so an id such as ``#`` or ``a/b`` would make the reply
    an invalid or a foreign topic; such requests are dropped (there is nowhere valid to answer them)."""
    return 0 < len(rid) <= 64 and set(rid) <= _RID_CHARS


# ---- twin and direct-method topics ---------------------------------------------------------------
# IoT Hub's grammar, relative to a control prefix: ``$iothub/`` on IoT Hub and the hub's front end, or
# ``edgeflag/iothub/<device_id>/`` (the "scoped" dialect) on a plain broker and the hub's backend. The
# device's uplink and the hub's twin service both build and parse these topics here, and nowhere else.

#: what a device subscribes to under its control prefix: twin replies, desired patches, method calls
DEVICE_CONTROL_FILTERS = ("twin/res/#", "twin/PATCH/properties/desired/#", "methods/POST/#")
#: what a service that invokes methods subscribes to under each device's prefix: the devices' replies
METHOD_RESPONSE_FILTER = "methods/res/#"
#: what the twin service subscribes to under each device's prefix: twin requests and method replies
SERVICE_CONTROL_FILTERS = ("twin/GET/#", "twin/PATCH/properties/reported/#", METHOD_RESPONSE_FILTER)


def twin_get_topic(rid: str) -> str:
    return f"twin/GET/?$rid={rid}"


def reported_patch_topic(rid: str) -> str:
    return f"twin/PATCH/properties/reported/?$rid={rid}"


def twin_response_topic(status: int, rid: str, version: int | None = None) -> str:
    return f"twin/res/{status}/?$rid={rid}" + (f"&$version={version}" if version is not None else "")


def desired_patch_topic(version: int) -> str:
    return f"twin/PATCH/properties/desired/?$version={version}"


def method_request_topic(name: str, rid: str) -> str:
    return f"methods/POST/{name}/?$rid={rid}"


def method_response_topic(status: int, rid: str) -> str:
    return f"methods/res/{status}/?$rid={rid}"


class ControlTopic(NamedTuple):
    """A parsed control topic. kind: twin_get, reported, twin_res, desired, method, method_res, or ""
    when unknown; arg: the status (twin_res, method_res) or the method name (method); query: its parameters."""

    kind: str
    arg: str
    query: dict[str, str]

    @property
    def rid(self) -> str:
        return self.query.get("$rid", "")


_KINDS = (("twin/GET", "twin_get", None), ("twin/PATCH/properties/reported", "reported", None),
          ("twin/PATCH/properties/desired", "desired", None), ("twin/res/", "twin_res", 2),
          ("methods/POST/", "method", 2), ("methods/res/", "method_res", 2))


def parse_control_topic(rest: str) -> ControlTopic:
    """Parse a control topic with its prefix removed, e.g. ``methods/POST/flush/?$rid=7``."""
    path, _, query = rest.partition("?")
    q = dict(parse_qsl(query))
    for start, kind, arg_at in _KINDS:
        if path.startswith(start):
            parts = path.split("/")
            arg = parts[arg_at] if arg_at is not None and len(parts) > arg_at else ""
            return ControlTopic(kind, arg, q)
    return ControlTopic("", "", q)
