"""The allocator tuning the agent applies to its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from edge_agent.tuning import tune_allocator
    applied = tune_allocator() if sys.argv[1] == "tune" else False
    rng = np.random.default_rng(0)
    for _ in range(30):  # warm up: the same mix of temporaries a micro-batch makes
        [rng.random(int(n)) for n in rng.integers(20_000, 120_000, size=12)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        [rng.random(int(n)) for n in rng.integers(20_000, 120_000, size=12)]
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def probe(mode: str, **env: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT, **env}).stdout.split()
    return out[0] == "True", int(out[1])


def test_tuned_process_stops_page_faulting_its_batch_temporaries() -> None:
    applied, tuned = probe("tune")
    assert applied, "glibc's mallopt should be available on this Linux machine"
    _, untuned = probe("plain")
    assert tuned * 10 < untuned, (tuned, untuned)


def test_operator_malloc_settings_win() -> None:
    applied, _ = probe("tune", MALLOC_TRIM_THRESHOLD_="1000000")
    assert not applied
