"""Entry points of the Databricks jobs (`python_wheel_task`), the same code as `edgeflag cloud …`.

``edgeflag-aggregate ARGS`` is ``edgeflag cloud aggregate ARGS``; ``edgeflag-retrain ARGS`` is
``edgeflag cloud retrain ARGS``. Databricks passes a task's ``parameters`` as the process arguments;
locally they run the same way (`deploy/databricks/databricks.yml`, tests/cloud_jobs/test_databricks_bundle.py).
"""

from __future__ import annotations

import sys


def _run(job: str, argv: list[str] | None) -> int:
    from edgeflag.cli import main

    return main(["cloud", job, *(sys.argv[1:] if argv is None else argv)])


def aggregate(argv: list[str] | None = None) -> int:
    code = _run("aggregate", argv)
    if argv is None:
        sys.exit(code)
    return code


def retrain(argv: list[str] | None = None) -> int:
    code = _run("retrain", argv)
    if argv is None:
        sys.exit(code)
    return code
