"""Bounded JSON decoding for control-plane input from outside (twin patches, method payloads, manifests).

`loads` either returns a value that every later step can handle — at most `max_bytes` of UTF-8, nested
at most `max_depth` deep, finite numbers only, integers within 64 bits — or raises ContractError with
the reason. It never raises RecursionError, UnicodeDecodeError or anything else, so a worker thread
that decodes outside input with it and catches ContractError cannot be killed by that input.
"""

from __future__ import annotations

from typing import Any

import orjson

from contracts.errors import ContractError

#: Twins and method payloads are small, shallow documents; 32 levels is far more than any of ours.
MAX_DEPTH = 32
#: IoT Hub's limit on a twin's desired or reported section and on a direct method payload.
MAX_CONTROL_BYTES = 32 * 1024


def loads(data: bytes | bytearray | memoryview | str, *, what: str = "payload",
          max_bytes: int = MAX_CONTROL_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Decode `data`; ContractError(what, reason) if it is too large, not JSON, or nested too deep."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise ContractError(what, f"{len(raw)} bytes, over the {max_bytes} byte limit")
    try:
        value = orjson.loads(raw)  # refuses NaN/Infinity, invalid UTF-8 and nesting past 1024
    except orjson.JSONDecodeError as exc:
        raise ContractError(what, f"not JSON: {exc}") from None
    except RecursionError:  # pragma: no cover - orjson stops at 1024 levels itself
        raise ContractError(what, "nested too deeply") from None
    check_depth(value, what=what, max_depth=max_depth)
    return value


def loads_object(data: bytes | bytearray | memoryview | str, *, what: str = "payload",
                 max_bytes: int = MAX_CONTROL_BYTES, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """`loads`, and the value must be a JSON object."""
    value = loads(data, what=what, max_bytes=max_bytes, max_depth=max_depth)
    if not isinstance(value, dict):
        raise ContractError(what, f"must be a JSON object, got {type(value).__name__}")
    return value


def check_depth(value: Any, *, what: str = "payload", max_depth: int = MAX_DEPTH) -> None:
    """ContractError if containers in `value` nest deeper than max_depth (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > max_depth:
            raise ContractError(what, f"nested deeper than {max_depth} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
