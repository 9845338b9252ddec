"""Structured logs: one JSON object per line on stderr. Secrets never reach here (config is redacted)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, default=str)


def setup_logging(level: str) -> logging.Logger:
    logger = logging.getLogger("edgeflag")
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    logger.log(level, msg, extra={"fields": fields})


class Throttle:
    """A repeating event summarised: its first occurrence is logged at once; later ones are added
    up and logged at most once per `interval_s`, with the totals since the previous line. During a
    long outage that keeps the journal to a line per interval instead of one per micro-batch.
    Call `flush` at shutdown so no total is left unsaid."""

    def __init__(self, logger: logging.Logger, level: int, msg: str, interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.level, self.msg, self.interval_s, self.clock = logger, level, msg, interval_s, clock
        self._pending: Counter[str] = Counter()
        self._since: float | None = None
        self._last = -float("inf")
        self._lock = threading.RLock()  # ingest and sender both report evictions

    def add(self, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        with self._lock:
            now = self.clock()
            if self._since is None:
                self._since = now
            self._pending.update(counts)
            if now - self._last >= self.interval_s:
                self.flush()

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if not self._pending or self._since is None:
            return
        now = self.clock()
        event(self.logger, self.level, self.msg, counts=dict(self._pending), total=sum(self._pending.values()),
              over_s=round(now - self._since, 1))
        self._pending.clear()
        self._since = None
        self._last = now
