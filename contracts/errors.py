"""Errors raised by the contracts package."""

from __future__ import annotations


class ContractError(ValueError):
    """Raised when data does not match a contract.

    Attributes:
        field: the offending field (dotted path), or "" for the whole object.
        reason: a short, human-readable reason.
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)
