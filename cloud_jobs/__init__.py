"""The Spark jobs: fleet aggregation (`cloud_jobs.fleet`) and, next, retraining.

Transforms are pure DataFrame -> DataFrame functions; every read and write is in `cloud_jobs.io`,
settings in `cloud_jobs.config`. The same code runs on local[*] Spark and on Databricks.
"""
