"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console

# Wide enough for the eval table when output is piped (rich assumes 80 columns then).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
errconsole = Console(stderr=True, highlight=False)


class CliError(Exception):
    """Raised by a command to exit with a one-line message and `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def host_port(text: str, default_port: int = 1883) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(default_port))
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None


def add_help_formatter(parser: Any) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
