"""deploy/databricks/databricks.yml: every entry point, parameter and variable resolves to real code."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "deploy" / "databricks" / "databricks.yml"


def _scripts() -> dict[str, str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


def _options(command: str) -> dict[str, argparse.Action]:
    from edgeflag.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["cloud"]  # type: ignore[union-attr]
    job = sub._subparsers._group_actions[0].choices[command]
    return {s: a for a in job._actions for s in a.option_strings}


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(BUNDLE.read_text())
    return doc


def test_the_jobs_are_one_continuous_aggregation_and_one_scheduled_retraining(bundle: dict[str, Any]) -> None:
    jobs = bundle["resources"]["jobs"]
    assert set(jobs) == {"fleet_aggregate", "retrain"}
    assert jobs["fleet_aggregate"]["continuous"]["pause_status"] == "UNPAUSED"
    assert jobs["retrain"]["schedule"]["quartz_cron_expression"]
    assert set(bundle["targets"]) == {"dev", "prod"}
    assert bundle["targets"]["dev"]["mode"] == "development" and bundle["targets"]["prod"]["mode"] == "production"
    art = bundle["artifacts"]["edgeflag_wheel"]
    assert art["type"] == "whl" and (BUNDLE.parent / art["path"] / "pyproject.toml").exists()


def test_every_entry_point_and_parameter_resolves_to_real_code(bundle: dict[str, Any]) -> None:
    scripts = _scripts()
    variables = set(bundle["variables"])
    for key, job in bundle["resources"]["jobs"].items():
        job_params = {p["name"] for p in job.get("parameters", [])}
        for task in job["tasks"]:
            wheel = task["python_wheel_task"]
            assert wheel["package_name"] == "edgeflag"
            target = scripts[wheel["entry_point"]]  # the entry point is in the wheel's metadata
            module, func = target.split(":")
            assert callable(getattr(importlib.import_module(module), func))
            command = {"edgeflag-aggregate": "aggregate", "edgeflag-retrain": "retrain"}[wheel["entry_point"]]
            options = _options(command)
            params = [str(p) for p in wheel["parameters"]]
            flags = [p for p in params if p.startswith("--")]
            assert flags and all(f in options for f in flags), (key, set(flags) - set(options))
            required = {s for s, a in options.items() if a.required}
            assert required <= set(flags), (key, required - set(flags))
            for p in params:
                for var in re.findall(r"\$\{var\.(\w+)\}", p):
                    assert var in variables, (key, var)
                for jp in re.findall(r"\{\{job\.parameters\.(\w+)\}\}", p):
                    assert jp in job_params, (key, jp)
            # the values parse: substitute defaults and let the job's own parser and config check them
            values = [re.sub(r"\$\{var\.(\w+)\}", lambda m: str(bundle["variables"][m.group(1)]["default"]), p)
                      for p in params]
            values = [re.sub(r"\{\{job\.parameters\.\w+\}\}", "", v) for v in values]
            from edgeflag.cli import build_parser
            from edgeflag.cli.cloud import build_config, build_retrain_config

            args = build_parser().parse_args(["cloud", command, *values])
            cfg = build_config(args) if command == "aggregate" else build_retrain_config(args)
            assert cfg.table_format.value == "delta"


def test_the_entry_points_run_here_as_they_run_there(capsys: Any) -> None:
    from edgeflag.cli.jobs import aggregate, retrain

    with pytest.raises(SystemExit) as exc:
        aggregate(["--help"])
    assert exc.value.code == 0 and "--bronze" in capsys.readouterr().out
    assert retrain(["--silver", "/nonexistent/silver", "--registry", "r", "--out", "o"]) == 2
    assert "--silver: /nonexistent/silver does not exist" in capsys.readouterr().err
