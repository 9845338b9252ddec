from __future__ import annotations

import random

from edge_agent.flow import Backoff, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_the_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, clock=clock)
    granted = 0
    for _ in range(10):
        granted += bucket.acquire()
    assert granted == 10
    clock.t = 0.5
    assert bucket._tokens < 1 and bucket.acquire()  # refilled 5 tokens after half a second
    assert TokenBucket(0).acquire(), "rate 0 means unlimited"


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    b = Backoff(0.5, 8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    assert all(0 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 2.0 and len(set(delays)) > 5
    b.reset()
    assert b.next_delay() == 0.5
