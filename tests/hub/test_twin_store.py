"""The hub's twin files under concurrent writers in separate processes (hub run + hub twin set)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hub.twins import TwinStore

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys
from pathlib import Path
from hub.twins import TwinStore
store, who = TwinStore(Path(sys.argv[1])), sys.argv[2]
for i in range(150):
    store.update("dev-1", "desired", {f"{who}_{i}": i})
"""


def test_two_processes_patching_one_twin_lose_no_patch(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who], cwd=ROOT,
                              env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}) for who in ("hub", "cli")]
    assert all(p.wait(60) == 0 for p in procs)
    desired = TwinStore(tmp_path).get("dev-1")["desired"]
    assert desired["$version"] == 1 + 300
    assert len([k for k in desired if not k.startswith("$")]) == 300
    assert not list(tmp_path.glob("*.tmp")), "no temporary file is left behind"
