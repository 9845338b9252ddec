"""`edgeflag agent …`: run the edge agent daemon, or check its configuration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeflag.cli._common import CliError, console


def register(sub: Any) -> None:
    p = sub.add_parser("agent", help="run the edge agent (score on the device, store and forward)",
                       description="The edge agent daemon: source -> features -> ONNX scoring -> durable "
                       "outbox -> uplink. Configured by a TOML file plus EDGEFLAG__SECTION__KEY environment "
                       "overrides (see deploy/agent.example.toml).")
    asub = p.add_subparsers(dest="agent_command", metavar="ACTION")
    asub.required = True
    fmt = argparse.ArgumentDefaultsHelpFormatter
    r = asub.add_parser("run", help="run until SIGTERM/SIGINT (flushes the outbox, then exits)", formatter_class=fmt)
    r.add_argument("--config", type=Path, required=True, help="agent TOML file")
    r.add_argument("--exit-when-drained", action="store_true",
                   help="exit once the source is exhausted and every reading was delivered")
    r.set_defaults(handler=run_cmd)
    c = asub.add_parser("check-config", help="validate a config file and the model it names", formatter_class=fmt)
    c.add_argument("--config", type=Path, required=True, help="agent TOML file")
    c.set_defaults(handler=check_cmd)


def _load(path: Path) -> Any:
    from edge_agent.config import load_config
    from edge_agent.errors import ConfigError

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(f"config {exc}") from None


def run_cmd(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.errors import AgentError

    cfg = _load(args.config)
    try:
        agent = Agent(cfg)
    except AgentError as exc:
        raise CliError(f"config {exc}" if hasattr(exc, "key") else str(exc)) from None
    return agent.run(exit_when_drained=args.exit_when_drained)


def check_cmd(args: argparse.Namespace) -> int:
    from edge_agent.agent import load_model
    from edge_agent.errors import ConfigError

    cfg = _load(args.config)
    try:
        bundle = load_model(cfg)
    except ConfigError as exc:
        raise CliError(f"config {exc}") from None
    console.print(f"config OK; model {bundle.label}")
    console.print(json.dumps(cfg.redacted(), indent=2))
    return 0
