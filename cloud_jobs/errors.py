"""Errors of the Spark jobs."""

from __future__ import annotations


class CloudJobError(Exception):
    """Root of the cloud jobs' errors."""


class ConfigError(CloudJobError, ValueError):
    """Raised when a job setting is invalid; `key` names it."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        super().__init__(f"{key}: {reason}")


class UnavailableHere(CloudJobError):
    """Raised when a path needs a connector this Spark lacks (Kafka or Delta jars): it runs on Databricks."""
