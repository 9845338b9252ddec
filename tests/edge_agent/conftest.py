"""Agent-test housekeeping: no collector process outlives its test, even a failing one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import RUNNING


@pytest.fixture(autouse=True)
def _reap_collectors() -> Iterator[None]:
    yield
    while RUNNING:
        proc = RUNNING.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
