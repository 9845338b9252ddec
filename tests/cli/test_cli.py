"""The `edgeflag` command, run as a user runs it (a subprocess of the installed script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest


def edgeflag(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeflag", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "160"}, timeout=300)


def test_a_bad_signing_key_fails_model_train_before_it_trains(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    r = edgeflag("simulate", "--devices", "2", "--duration", "300", "--seed", "7", "--out", "data.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    t = time.monotonic()
    r = edgeflag("model", "train", "--data", "data.jsonl", "--out", "registry/", "--sign-key", "key.pem", cwd=tmp_path)
    assert r.returncode != 0 and "--sign-key: cannot read signing key" in r.stdout + r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "registry").exists() and "fitting" not in r.stdout
    assert time.monotonic() - t < 60


def test_the_issue_walkthrough_works_and_a_flipped_byte_fails_verify(tmp_path: Path) -> None:
    r = edgeflag("simulate", "--devices", "5", "--duration", "600", "--seed", "7", "--out", "data.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "3,000 readings" in r.stdout
    r = edgeflag("model", "train", "--data", "data.jsonl", "--out", "registry/", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "features robust-blocks-v7 (auto: a time series" in r.stdout, r.stdout
    bundle = tmp_path / "registry" / "edgeflag" / "v0001"
    assert (bundle / "model.onnx").exists()
    r = edgeflag("model", "verify", str(bundle))
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr
    r = edgeflag("model", "eval", str(bundle), "--data", str(tmp_path / "data.jsonl"), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["overall"]["rows"] == 3000 and 0 <= report["overall"]["f1"] <= 1
    assert {"precision", "recall", "f1", "roc_auc", "pr_auc"} <= set(report["overall"])
    o = report["overall"]  # one alert per event after the hysteresis: fewer alerts than flagged readings
    assert 0 < o["alerts"] < o["flagged"] and 0 <= o["false_alerts"] <= o["alerts"]
    r = edgeflag("model", "eval", str(bundle), "--data", str(tmp_path / "data.jsonl"))
    assert "PR-AUC" in r.stdout and "│ all" in r.stdout
    r = edgeflag("model", "inspect", str(tmp_path / "registry"))
    assert "fused-tree-ensemble" in r.stdout and "robust-blocks-v7" in r.stdout and "range guard   on" in r.stdout
    raw = bytearray((bundle / "model.onnx").read_bytes())
    raw[100] ^= 0x01
    (bundle / "model.onnx").write_bytes(bytes(raw))
    r = edgeflag("model", "verify", str(bundle))
    assert r.returncode == 1
    assert "REJECTED" in r.stdout and "sha256" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "--devices", "0", "--out", "x.jsonl"],
        ["simulate", "--faults", "meteor", "--out", "x.jsonl"],
        ["simulate", "--out", "x.txt"],
        ["simulate"],
        ["model", "verify", "/nonexistent/bundle"],
        ["model", "train", "--data", "/nonexistent.jsonl", "--out", "r"],
        ["model", "eval", "/nonexistent", "--data", "x.jsonl"],
        ["nosuchcommand"],
    ],
)
def test_bad_arguments_and_files_give_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    r = edgeflag(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(("edgeflag: error:", "usage:")) or "error" in r.stderr


def test_a_malformed_data_file_names_the_line(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"v":1,"device_id":"d","ts":"2026-01-01T00:00:00Z","seq":0,"values":{"a":1}}\n{oops\n')
    r = edgeflag("model", "train", "--data", str(data), "--out", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "bad.jsonl:2" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("cmd", [[], ["simulate"], ["model"], ["model", "train"], ["model", "verify"],
                                 ["model", "eval"], ["model", "inspect"], ["demo"]])
def test_every_command_explains_itself(cmd: list[str]) -> None:
    r = edgeflag(*cmd, "--help")
    assert r.returncode == 0 and "usage: edgeflag" in r.stdout
    assert len(r.stdout.splitlines()) > 3


def test_csv_output_can_be_trained_on(tmp_path: Path) -> None:
    assert edgeflag("simulate", "--devices", "2", "--duration", "400", "--out", "d.csv", cwd=tmp_path).returncode == 0
    r = edgeflag("model", "train", "--data", "d.csv", "--out", "reg", "--name", "pump", "--trees", "20", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "reg" / "pump" / "v0001" / "manifest.json").exists()


def test_agent_check_config_names_a_bad_key_and_a_missing_model(tmp_path: Path) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text('[model]\nbundle = "/nope"\n[uplink]\nprot = 1\n')
    r = edgeflag("agent", "check-config", "--config", str(cfg))
    assert r.returncode == 2 and "uplink.prot" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text('[model]\nbundle = "/nope"\n')
    r = edgeflag("agent", "check-config", "--config", str(cfg))
    assert r.returncode == 2 and "model.bundle" in r.stderr
    r = edgeflag("agent", "run", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_hub_operator_commands_talk_to_the_broker(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    common = ["--broker", f"127.0.0.1:{broker.port}", "--state", str(tmp_path / "hub")]
    r = edgeflag("hub", "twin", "set", *common, "dev-1", "threshold=0.7", 'model={"version": 2}')
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["desired"]["threshold"] == 0.7
    r = edgeflag("hub", "twin", "get", *common, "dev-1")
    twin = json.loads(r.stdout)
    assert twin["desired"]["model"] == {"version": 2} and twin["desired"]["$version"] == 2
    r = edgeflag("hub", "method", *common, "dev-1", "get_status", "--timeout", "0.5")
    assert r.returncode == 1 and json.loads(r.stdout)["status"] == 504
    r = edgeflag("hub", "device", *common, "dev-1", "--gateway", "127.0.0.9")
    assert r.stdout.startswith("HostName=edgeflag-hub.local;DeviceId=dev-1;SharedAccessKey=")
    assert "GatewayHostName=127.0.0.9" in r.stdout
    r = edgeflag("hub", "twin", "set", *common, "dev-1")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr


def test_hub_run_starts_its_broker_front_end_and_pki(tmp_path: Path) -> None:
    from hub.mosquitto import free_loopback_address, free_port

    host, port = free_loopback_address(8883), free_port()
    r = edgeflag("hub", "run", "--start-broker", "--broker", f"127.0.0.1:{port}", "--bronze", "bronze",
                 "--frontend", host, "--seconds", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hub-state" / "pki" / "ca.pem").exists()
    assert f"devices over TLS on {host}:8883" in r.stdout


def test_simulate_device_types_and_a_fleet_fault(tmp_path: Path) -> None:
    r = edgeflag("simulate", "--devices", "9", "--duration", "600", "--types", "pump,compressor,chiller",
                 "--fleet-fault", "compressor:3:120:level_shift:60", "--anomaly-rate", "0", "--out", "f.jsonl",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert len(rows) == 5400 and {r["device_id"] for r in rows} == {
        f"{t}-{i:04d}" for t in ("pump", "compressor", "chiller") for i in (1, 2, 3)}
    channels = {r["device_id"].split("-")[0]: frozenset(r["values"]) for r in rows}
    assert len(set(channels.values())) == 3  # each type has its own channel set
    hit = {r["device_id"] for r in rows if r.get("fault") == "fleet-1-compressor"}
    assert hit == {"compressor-0001", "compressor-0002", "compressor-0003"}
    for bad, msg in [(["--types", "toaster"], "--types: unknown device type 'toaster'"),
                     (["--fleet-fault", "pump:2:10"], "--fleet-fault: needs --types"),
                     (["--types", "pump", "--fleet-fault", "pump:9:10"], "needs 9 pump devices"),
                     (["--types", "pump,chiller", "--out", "x.csv"], "do not fit one CSV header")]:
        args = ["simulate", "--devices", "4", "--duration", "60", *bad]
        r = edgeflag(*args, *([] if "--out" in bad else ["--out", "x.jsonl"]), cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr, (bad, r.stderr)
    r = edgeflag("simulate", "--devices", "2", "--duration", "60", "--types", "chiller", "--out", "c.csv", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "c.csv").read_text().split("\n")[0].startswith("device_id,ts,seq,")


def test_a_plain_csv_of_your_own_trains_with_a_device_id_and_a_time_zone(tmp_path: Path) -> None:
    """`timestamp,<channels…>` with naive local times: --device-id names the device, --tz places the times,
    seq is the row's position; without them the error says what to add."""
    from contracts.files import load_blocks
    from simulators import Fleet, FleetConfig

    block = Fleet(FleetConfig(devices=1, seed=3)).generate(700)["dev-0001"]
    rows = ["timestamp," + ",".join(block.channels)]
    for ts, values in zip(block.ts, block.values, strict=True):
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts) + 3600))  # UTC+1, written naive
        rows.append(f"{local}," + ",".join(f"{v:.4f}" for v in values))
    data = tmp_path / "press.csv"
    data.write_text("\n".join(rows) + "\n")

    r = edgeflag("model", "train", "--data", str(data), "--out", str(tmp_path / "r"))
    assert r.returncode != 0 and "--device-id" in r.stderr and "Traceback" not in r.stderr
    r = edgeflag("model", "train", "--data", str(data), "--out", str(tmp_path / "r"), "--device-id", "press-7")
    assert r.returncode != 0 and "--tz" in r.stderr
    blocks = load_blocks(data, device_id="press-7", tz="Etc/GMT-1")  # UTC+1 (POSIX sign)
    got = blocks["press-7"]
    assert got.seq.tolist() == list(range(700)) and got.channels == block.channels
    assert abs(float(got.ts[0]) - float(block.ts[0])) < 1.0, "naive local times placed by --tz"
    r = edgeflag("model", "train", "--data", str(data), "--out", str(tmp_path / "r"), "--device-id", "press-7",
                 "--tz", "Etc/GMT-1", "--trees", "20", "--name", "press")
    assert r.returncode == 0, r.stderr
    # 700 readings cannot show a 0.1 % rate by counting: a tail fit, and the held-out rate is reported
    assert "pot on" in r.stdout and "held out:" in r.stdout, r.stdout
    manifest = json.loads((tmp_path / "r" / "press" / "v0001" / "manifest.json").read_text())
    training = manifest["training"]
    assert training["calibration"]["method"] == "pot" and training["calibration"]["expected_above"] < 1
    assert training["held_out"]["rows"] > 100 and training["fit_rows"] < 700
    # eval without labels, on the registry's model directory: alert rate per device and the score distribution
    r = edgeflag("model", "eval", str(tmp_path / "r" / "press"), "--data", str(data), "--device-id", "press-7",
                 "--tz", "Etc/GMT-1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"].startswith("press v1") and out["labelled"] is False
    assert out["by_device"]["press-7"]["rows"] == out["rows"]
    assert 0 <= out["alert_rate"] < 0.05 and out["flagged"] == out["by_device"]["press-7"]["flagged"]
    q = out["score_quantiles"]
    assert q["p50"] <= q["p90"] <= q["p99"] <= q["p99.9"] <= q["max"]
    r = edgeflag("model", "eval", str(tmp_path / "r" / "press"), "--data", str(data), "--device-id", "press-7",
                 "--tz", "Etc/GMT-1")
    text = " ".join(r.stdout.split())  # rich wraps to the terminal's width
    assert r.returncode == 0 and "alert rate" in text and "no labels" in text, r.stdout + r.stderr


def test_the_train_command_has_the_python_apis_defaults() -> None:
    import argparse

    from edgeflag.cli.model import register
    from models.training.trainer import TrainConfig

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["model", "train", "--data", "d.jsonl", "--out", "r"])
    d = TrainConfig()
    assert (args.name, args.trees, args.max_samples, args.target_fpr, args.seed, args.form) == (
        d.name, d.n_estimators, d.max_samples, d.target_fpr, d.seed, d.form)


@pytest.mark.broker
@pytest.mark.spark
@pytest.mark.slow
def test_the_demo_runs_the_whole_loop_and_leaves_a_report_nothing_lost_and_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "edgeflag", "demo", "--out", str(out), "--devices", "6", "--minutes", "1",
                        "--seed", "5"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"},
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    report = out / "report" / "report.html"
    assert last == f"report: {report}"
    page = report.read_text()
    pngs = sorted((out / "report").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"fleet-anomaly-rate.png", "model-versions.png", "outbox-backlog.png"} <= names, names
    assert len([n for n in names if n.startswith("readings-")]) == 3
    assert all(p.name in page and p.stat().st_size > 10_000 for p in pngs)
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert {"devices", "produced", "delivered", "duplicates", "lost", "incidents", "model_versions", "precision",
            "recall", "f1"} <= set(summary)
    assert summary["lost"] == 0 and summary["delivered"] == summary["produced"] > 5000 and summary["seed"] == 5
    assert summary["incidents"] >= 1 and any(i.startswith("inc-pump-") for i in summary["incident_ids"]), summary
    assert any(len(v) >= 2 for v in summary["model_versions"].values()), summary["model_versions"]
    assert summary["timeline_s"]["outage_end"] > summary["timeline_s"]["outage_start"]
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert left.stdout.strip() == "", f"processes still running: {left.stdout}"


def test_auto_features_score_a_table_of_independent_records_by_their_own_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = ["timestamp,temp,flow"]
    for i in range(1500):  # rows in no meaningful order: a table, not a time series
        temp, flow = rng.normal(40, 2), rng.normal(300, 25)
        rows.append(f"{1_767_225_600 + i},{temp:.3f},{flow:.2f}")
    data = tmp_path / "records.csv"
    data.write_text("\n".join(rows) + "\n")
    r = edgeflag("model", "train", "--data", str(data), "--out", str(tmp_path / "r"), "--device-id", "line-1",
                 "--trees", "20", "--name", "records")
    assert r.returncode == 0, r.stderr
    assert "features values-v1 (auto: independent records" in r.stdout, r.stdout
    r = edgeflag("model", "inspect", str(tmp_path / "r"))
    assert "values-v1: value_z_temp, value_z_flow" in r.stdout and "chosen by --features auto" in r.stdout, r.stdout
