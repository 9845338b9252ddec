"""`edgeflag` command-line entry point.

Every command group lives in its own module with `register(subparsers)`; the
handler it sets returns an exit code. Expected failures (bad arguments, bad files,
unreachable brokers, rejected bundles) print one line and exit non-zero — 2 for bad
input, 1 for "ran fine, answer is no" (e.g. a bundle that fails verification) — and
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from contracts.errors import ContractError
from edgeflag import __version__
from edgeflag.cli import agent, cloud, demo, hub, model, simulate
from edgeflag.cli._common import CliError

GROUPS = (simulate, model, agent, hub, cloud, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeflag",
        description="Edge-to-cloud IoT anomaly streaming: simulate a fleet, train and verify ONNX models, "
        "score readings on the device.",
        epilog="Run 'edgeflag COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"edgeflag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except CliError as exc:
        print(f"edgeflag: error: {exc}", file=sys.stderr)
        return exc.code
    except (ContractError, ValueError, OSError) as exc:
        print(f"edgeflag: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgeflag: interrupted", file=sys.stderr)
        return 130
