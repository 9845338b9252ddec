"""Flow control: a token bucket for the send rate, capped exponential backoff with jitter."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second, bursts up to `capacity`. rate 0 = unlimited.

    `try_acquire` takes a token if one is there and otherwise says how long until one is (it never
    blocks: the sender's `step()` stays testable on a fake clock); `acquire` blocks until a token is
    available or `stop` is set (then returns False).
    """

    def __init__(self, rate: float, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def set_rate(self, rate: float) -> None:
        """Change the rate (0 = unlimited); the burst follows it."""
        self.rate = rate
        self.capacity = max(1.0, rate)

    def fill(self) -> None:
        """Allow a full burst now (an operator asked to flush)."""
        self._tokens = self.capacity

    def try_acquire(self, n: float = 1.0) -> float:
        """Take `n` tokens and return 0.0, or take nothing and return the seconds until they are there."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate

    def acquire(self, stop: threading.Event | None = None, n: float = 1.0) -> bool:
        while True:
            wait = self.try_acquire(n)
            if wait == 0.0:
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


class Backoff:
    """Capped exponential backoff with full jitter: delay k is uniform in [0, min(cap, base·2^k)]."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return self._rng.uniform(0, ceiling) if ceiling > self.base else ceiling

    def reset(self) -> None:
        self.attempt = 0
