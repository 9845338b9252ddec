"""`edgeflag model …`: train, verify, evaluate and inspect model bundles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table

from contracts.files import load_blocks
from edgeflag.cli._common import CliError, console, positive_int
from models.errors import BundleError, ModelError


def register(sub: Any) -> None:
    p = sub.add_parser("model", help="train, verify, evaluate and inspect model bundles",
                       description="Model bundles: model.onnx + manifest.json, kept in a local file registry.")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION")
    msub.required = True
    fmt = argparse.ArgumentDefaultsHelpFormatter

    t = msub.add_parser("train", help="train a model from readings and store it in a registry", formatter_class=fmt,
                        description="Compute features, fit StandardScaler + IsolationForest, calibrate the "
                        "threshold, export ONNX (fused tree-ensemble form by default), check ONNX/scikit-learn "
                        "parity and store the bundle as the next version in the registry.")
    t.add_argument("--data", type=Path, required=True,
                   help="readings: .jsonl (Reading contract), the simulator's .csv, "
                        "or a plain timestamp,<channels…> .csv")
    _plain_csv_args(t)
    t.add_argument("--out", type=Path, required=True, help="registry directory")
    from models.training.trainer import TrainConfig  # no scikit-learn at import: the defaults, one place

    d = TrainConfig()
    t.add_argument("--name", default=d.name, help="model name (usually the device type)")
    t.add_argument("--trees", type=positive_int, default=d.n_estimators, help="IsolationForest n_estimators")
    t.add_argument("--max-samples", type=positive_int, default=d.max_samples, help="IsolationForest max_samples")
    t.add_argument("--target-fpr", type=float, default=d.target_fpr,
                   help="fraction of clean normal training readings allowed above the threshold")
    t.add_argument("--seed", type=int, default=d.seed, help="random_state of the forest")
    t.add_argument("--form", choices=("fused", "skl2onnx"), default=d.form, help="ONNX form to write")
    from models.features import ALGORITHMS

    t.add_argument("--features", choices=["auto", *sorted(ALGORITHMS)], default=d.features,
                   help="feature algorithm (models/features.py). auto: robust-blocks-v7 on a time series, v5 on a "
                        "smooth one, values-v1 on readings with no serial structure (independent records; "
                        "models/training/autofeatures.py). v6 is v4 with the odds of a burst of noise over the last "
                        "8 readings; v5 is v4 with noise measured on second differences; "
                        "v3 is v1 with the shift gated by the reading and stuck seen from the "
                        "third equal reading; v4 is v3 with the noise ratios bounded by the reading's own last "
                        "steps; v2 adds baseline, step and stuck features; values-v1 scores each reading's own "
                        "values against the training baseline, with no window")
    t.add_argument("--no-range-guard", action="store_true", default=not d.range_guard,
                   help="score with the forest alone: no range guard (models/training/guard.py), which scores "
                        "readings outside the range of the calibration rows higher")
    t.add_argument("--holdout", type=float, default=d.holdout_fraction,
                   help="last fraction of each device's readings held out to measure the false-alarm rate")
    t.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign the manifest")
    t.set_defaults(handler=train_cmd)

    v = msub.add_parser("verify", help="verify a bundle (exit 1 if it is rejected)", formatter_class=fmt)
    v.add_argument("bundle", type=Path, help="a bundle directory, registry/<name> or a registry (latest version)")
    v.add_argument("--name", help="model name, when the registry holds several")
    v.add_argument("--trusted-key", type=Path, help="Ed25519 public key (PEM) the manifest must be signed with")
    v.set_defaults(handler=verify_cmd)

    e = msub.add_parser("eval", help="score labelled readings and report detection quality", formatter_class=fmt)
    e.add_argument("bundle", type=Path, help="a bundle directory, registry/<name> or a registry (latest version)")
    e.add_argument("--data", type=Path, required=True,
                   help="readings (.jsonl or .csv); with labels: precision, recall, F1, AUCs, events caught; "
                        "without: alert rate per device and the score distribution")
    _plain_csv_args(e)
    e.add_argument("--name", help="model name, when the registry holds several")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    e.set_defaults(handler=eval_cmd)

    i = msub.add_parser("inspect", help="show a bundle's manifest", formatter_class=fmt)
    i.add_argument("bundle", type=Path, help="a bundle directory, registry/<name> or a registry (latest version)")
    i.add_argument("--name", help="model name, when the registry holds several")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(handler=inspect_cmd)

    k = msub.add_parser("keygen", help="create an Ed25519 key pair for signing bundles", formatter_class=fmt)
    k.add_argument("--out", type=Path, required=True, help="directory for signing.key and signing.pub")
    k.set_defaults(handler=keygen_cmd)

    ls = msub.add_parser("list", help="list the models and versions in a registry", formatter_class=fmt)
    ls.add_argument("registry", type=Path)
    ls.set_defaults(handler=list_cmd)


def _plain_csv_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-id", help="a plain timestamp,<channels…> CSV: whose readings these are")
    p.add_argument("--tz", help="a plain CSV with naive timestamps: the IANA zone they were taken in (e.g. UTC)")


def _resolve(ref: Path, name: str | None) -> Path:
    from models.registry import Registry

    try:
        return Registry(ref).resolve(ref, name)
    except ModelError as exc:
        raise CliError(str(exc)) from None


def train_cmd(args: argparse.Namespace) -> int:
    try:
        from models.training.pipeline import build_bundle
        from models.training.trainer import TrainConfig, clean_rows, feature_table, fit_spec, resolve_features
    except ImportError as exc:
        raise CliError(f"training needs the 'train' extra (pip install 'edgeflag[train]'): {exc}") from None
    from models.registry import Registry

    if not 0 < args.target_fpr < 0.5:
        raise CliError("--target-fpr must be in (0, 0.5)")
    if args.sign_key is not None:  # before training: a bad key would otherwise fail at the very end
        from models.signing import load_signing_key

        try:
            load_signing_key(args.sign_key)
        except ModelError as exc:
            raise CliError(f"--sign-key: {exc}") from None
    with console.status("loading readings") as status:
        blocks = load_blocks(args.data, device_id=args.device_id, tz=args.tz)
        try:
            config = TrainConfig(name=args.name, n_estimators=args.trees, max_samples=args.max_samples,
                                 seed=args.seed, target_fpr=args.target_fpr, form=args.form,
                                 features=args.features, holdout_fraction=args.holdout,
                                 range_guard=not args.no_range_guard)
            config = resolve_features(blocks, config)
            spec = fit_spec(blocks, config)
            status.update(f"computing {spec.n_features} features for {sum(len(b) for b in blocks.values()):,} readings")
            table = feature_table(blocks, spec)
            clean = clean_rows(blocks, spec.clean_horizon) if table.labels is not None else None
            span = (min(float(b.ts[0]) for b in blocks.values()), max(float(b.ts[-1]) for b in blocks.values()))
            status.update(f"fitting ({args.trees} trees), exporting ONNX, checking parity")
            path, cand = build_bundle(table, spec, config, Registry(args.out), sign_key=args.sign_key,
                                      clean=clean, time_range=span)
        except ModelError as exc:
            raise CliError(str(exc)) from None
    s = cand.manifest.training
    cal, held = s["calibration"], s["held_out"]
    choice = s.get("features_choice")
    console.print(
        f"trained {args.name} v{int(path.name[1:])} -> {path}\n"
        f"  features {spec.algo}" + (f" (auto: {choice['reason']})" if choice else "") + "\n"
        f"  {s['fit_rows']:,} of {s['rows']:,} readings fitted ({s['devices']} devices), "
        f"{s['estimator']['n_estimators']} trees; threshold {cand.manifest.threshold:.4f} "
        f"(target FPR {args.target_fpr:g}, {cal['method']} on {s['calibration_rows']:,} clean readings)\n"
        + (f"  held out: {held['flagged']:,} of {held['rows']:,} normal readings flagged = "
           f"{held['false_alarm_rate']:.4%} (95 % upper bound {held['upper_95']:.4%})\n" if held else "")
        + f"  ONNX vs scikit-learn max |diff| {cand.parity:.1e}"
        + (", signed" if args.sign_key else "")
    )
    for w in s.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}")
    return 0


def verify_cmd(args: argparse.Namespace) -> int:
    from models.bundle import load_bundle

    path = _resolve(args.bundle, args.name)
    try:
        bundle = load_bundle(path, trusted_key=args.trusted_key)
    except BundleError as exc:
        console.print(f"REJECTED {exc.path}: {exc.reason}")
        return 1
    m = bundle.manifest
    signed = f"signed by key {m.signature.get('key_id')}" if m.signature else "unsigned"
    checked = " (signature checked)" if args.trusted_key else ""
    console.print(f"OK {path}: {m.name} v{m.version}, {m.form}, sha256 {m.sha256[:16]}…, "
                  f"{m.model_bytes:,} bytes, {signed}{checked}")
    return 0


def _load(path: Path) -> Any:
    from models.bundle import load_bundle

    try:
        return load_bundle(path)
    except BundleError as exc:
        raise CliError(str(exc)) from None


def eval_cmd(args: argparse.Namespace) -> int:
    try:
        from models.training.evaluate import describe, evaluate
    except ImportError as exc:
        raise CliError(f"eval needs the 'train' extra (pip install 'edgeflag[train]'): {exc}") from None
    bundle = _load(_resolve(args.bundle, args.name))
    blocks = load_blocks(args.data, device_id=args.device_id, tz=args.tz)
    if not any(b.labels is not None for b in blocks.values()):
        return _describe(args, bundle, describe(bundle, blocks))
    try:
        report = evaluate(bundle, blocks)
    except ModelError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(json.dumps({"bundle": str(bundle.path), "model": bundle.label, **report.to_dict()}))
        return 0
    table = Table(title=f"{bundle.label} on {args.data.name} (threshold {report.threshold:.4f})")
    for col in ("subset", "rows", "anomalous", "flagged", "precision", "recall", "F1", "ROC-AUC", "PR-AUC",
                "events caught", "alerts (false)"):
        table.add_column(col, justify="left" if col == "subset" else "right", no_wrap=True, min_width=len(col))

    def auc(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    def row(name: str, m: Any) -> None:
        events = "-" if m.events is None else f"{m.events_caught}/{m.events}"
        alerts = "-" if m.alerts is None else f"{m.alerts} ({m.false_alerts})"
        table.add_row(name, f"{m.rows:,}", f"{m.positives:,}", f"{m.flagged:,}", f"{m.precision:.3f}",
                      f"{m.recall:.3f}", f"{m.f1:.3f}", auc(m.roc_auc), auc(m.pr_auc), events, alerts)

    row("all", report.overall)
    for kind, m in report.by_type.items():
        row(kind, m)
    console.print(table)
    console.print("Per type: that type's readings plus all normal readings (every false positive counts "
                  "against every type). Events caught: faults with at least one flagged reading. Alerts: "
                  "anomaly events after the edge's hysteresis ([events]), false when they touch no fault.")
    return 0


def _describe(args: argparse.Namespace, bundle: Any, report: Any) -> int:
    """`model eval` on unlabelled data: alert rate overall and per device, and the score distribution."""
    if args.json:
        print(json.dumps({"bundle": str(bundle.path), "model": bundle.label, **report.to_dict()}))
        return 0
    table = Table(title=f"{bundle.label} on {args.data.name} (no labels; threshold {report.threshold:.4f})")
    for col in ("device", "rows", "flagged", "alert rate"):
        table.add_column(col, justify="left" if col == "device" else "right", no_wrap=True, min_width=len(col))
    for device, (rows, flagged) in report.by_device.items():
        table.add_row(device, f"{rows:,}", f"{flagged:,}", f"{flagged / rows:.4%}" if rows else "-")
    table.add_row("all", f"{report.rows:,}", f"{report.flagged:,}", f"{report.alert_rate:.4%}")
    console.print(table)
    q = report.score_quantiles
    console.print("Scores: " + ", ".join(f"{k} {v:.4f}" for k, v in q.items())
                  + f". An alert is a score >= {report.threshold:.4f}; without labels, precision and recall "
                  "cannot be measured.")
    return 0


def inspect_cmd(args: argparse.Namespace) -> int:
    bundle = _load(_resolve(args.bundle, args.name))
    m = bundle.manifest
    if args.json:
        print(m.to_json(), end="")
        return 0
    t = m.training
    lines = [
        f"{m.name} v{m.version}  ({bundle.path})",
        f"  created       {m.created}",
        f"  form          {m.form}  opsets {dict(m.opsets)}",
        f"  model.onnx    {m.model_bytes:,} bytes  sha256 {m.sha256}",
        f"  io            {m.input_name} float32[N,{bundle.spec.n_features}] -> {m.output_name} float32[N,1]",
        f"  features      {bundle.spec.algo}: {', '.join(bundle.spec.names)} over {', '.join(bundle.spec.channels)}"
        + (f"\n                chosen by --features auto: {t['features_choice']['reason']}"
           if t.get("features_choice") else ""),
        "  range guard   " + ("on: score + widths beyond " + ", ".join(
            f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(t["range_guard"]["lo"], t["range_guard"]["hi"], strict=True))
            if t.get("range_guard") else "off (the forest's score alone)"),
        f"  feature hash  {m.feature_hash}",
        f"  threshold     {m.threshold:.6f}  (score >= threshold is an anomaly; higher = more anomalous)",
        f"  training      {t.get('fit_rows', '?'):,} rows fitted of {t.get('rows', '?'):,}, "
        f"{t.get('devices', '?')} devices, {t.get('event_time_from', '?')} .. {t.get('event_time_to', '?')}",
        f"  signature     {m.signature.get('key_id', '-') if m.signature else 'unsigned'}",
    ]
    console.print("\n".join(lines))
    return 0


def keygen_cmd(args: argparse.Namespace) -> int:
    from models.signing import generate_keypair

    args.out.mkdir(parents=True, exist_ok=True)
    priv, pub = args.out / "signing.key", args.out / "signing.pub"
    if priv.exists():
        raise CliError(f"{priv} exists; refusing to overwrite a signing key")
    kid = generate_keypair(priv, pub)
    console.print(f"wrote {priv} (keep secret) and {pub} (give to devices); key id {kid}")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    from models.registry import Registry

    reg = Registry(args.registry)
    names = reg.names()
    if not names:
        raise CliError(f"{args.registry}: no models")
    for name in names:
        vs = reg.versions(name)
        console.print(f"{name}: {', '.join(f'v{v}' for v in vs)} (latest {reg.path(name, vs[-1])})")
    return 0
