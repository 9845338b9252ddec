"""The SparkSession the jobs run in: Databricks' own there, a small local[*] one elsewhere."""

from __future__ import annotations

import os
import sys
from typing import Any


def get_spark(app: str = "edgeflag", *, master: str = "local[*]", shuffle_partitions: int = 2) -> Any:
    """The active session (Databricks, tests), else a local one with the UI off and few shuffle partitions.

    PYSPARK_PYTHON is set to this interpreter so Python workers never pick a system Python that lacks
    pyarrow or this project.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):  # a job on a Databricks cluster: the cluster's session
        return SparkSession.builder.getOrCreate()
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(master).appName(app)
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             # a micro-batch splits into silver/quarantine by a partition column: open a writer per
             # value instead of sorting the whole batch by it first
             .config("spark.sql.maxConcurrentOutputFileWriters", "8")
             .config("spark.driver.memory", "3g")
             # on, every functions.* call makes ~13 JVM round trips to record its Python call site: the pane
             # step spent ~0.14 s per micro-batch building DataFrames, ~0.09 s off (docs/cloud.md)
             .config("spark.python.sql.dataFrameDebugging.enabled", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark
