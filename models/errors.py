"""Errors raised by the models package."""

from __future__ import annotations


class ModelError(Exception):
    """Root of the models errors."""


class BundleError(ModelError):
    """Raised when a model bundle is missing, malformed, tampered with or mismatched.

    Attributes:
        path: the bundle directory.
        reason: why it was rejected, in one line.
    """

    def __init__(self, path: object, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class FeatureError(ModelError, ValueError):
    """Raised when readings cannot be turned into features (wrong channels, bad shape)."""


class TrainingError(ModelError):
    """Raised when a model cannot be trained from the given data."""


class ScoringError(ModelError):
    """Raised when a model cannot score the given features (shape, NaN, session failure)."""
