"""Structured log helpers (edge_agent/logs.py)."""

from __future__ import annotations

import json
import logging

from edge_agent.logs import JsonFormatter, Throttle


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, object]] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_a_repeating_event_is_logged_once_per_interval_with_totals() -> None:
    logger = logging.getLogger("edgeflag.test.throttle")
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    now = [1000.0]
    t = Throttle(logger, logging.WARNING, "outbox full", interval_s=30, clock=lambda: now[0])
    t.add({"normal": 5})  # the first one is logged at once
    for _ in range(100):  # a minute of evictions, one every 0.5 s
        now[0] += 0.5
        t.add({"normal": 2})
    t.add({})  # nothing to add: no line
    t.flush()
    assert [line["msg"] for line in handler.lines] == ["outbox full"] * len(handler.lines)
    assert 2 <= len(handler.lines) <= 4
    assert sum(line["counts"]["normal"] for line in handler.lines) == 5 + 200  # type: ignore[index]
    assert handler.lines[0]["counts"] == {"normal": 5} and handler.lines[0]["total"] == 5
    t.flush()
    assert len(handler.lines) <= 4, "nothing left to flush"
