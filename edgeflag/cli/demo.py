"""`edgeflag demo`: the whole edge-to-cloud loop on this machine, live, ending in a report.

1. models: a v1 model per device type (pump, compressor, chiller), trained on simulated data, signed
   into a registry; a tampered copy is shown to be refused.
2. hub: the IoT Hub stand-in (private Mosquitto, generated certificates, the TLS front end on :8883);
   one gateway device per device type and uplink, tagged with its type.
3. cloud: the fleet aggregation job on local Spark (processing-time trigger) over the hub's bronze.
4. the fleet: 6 real agent processes (`edgeflag agent run`) serve the simulated devices, half over the
   ``iothub`` uplink (azure-iot-device), half over ``mqtt`` (paho); the simulator injects faults, and a
   fleet fault hits most pumps in the same minutes. Mid-run the retraining job trains v2 per type on
   silver, gates it against v1, and rolls it out through the twins (a canary, then the rest). Then the
   hub's front end goes down for a while (every agent stores and forwards), comes back, the backlog
   drains, and the agents are stopped cleanly.
5. report: report/report.html with PNG plots and report/summary.json; every reading counted by its
   dedup key in bronze (lost must be 0). The last line printed names the report.

Readings are simulated 1 s apart and sent `speed` (20) times faster than real time, so the minutes of
the demo cover simulated hours. Nothing keeps running afterwards.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgeflag.cli._common import CliError, console, positive_int

OUTAGE_S = 10.0  # wall-clock seconds the hub's front end is down
DRAIN_S = 180.0  # wall-clock seconds the outboxes get to drain after the run and the outage are over
RETRAIN_MIN_ROWS = 1000  # per device type; a quarter of it is the gate's holdout (>= its 200 rows)
WORK_DIRS = ("agents", "hub", "bronze", "lake", "registry", "retrain", "report", "tampered")


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole loop live: agents -> hub -> Spark -> incidents -> retrain -> rollout",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", "--workdir", dest="workdir", type=Path, default=Path("demo-output"), metavar="DIR",
                   help="where files and the report go (default: %(default)s)")
    p.add_argument("--devices", type=positive_int, default=30,
                   help="simulated devices, split over 3 device types (at least 6; default: %(default)s)")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="wall-clock minutes the fleet streams (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated fleet (default: %(default)s)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edgeflag.cli.demo_fleet import FleetPlan

    if args.devices < 6:
        raise CliError("--devices must be at least 6 (two devices per device type)")
    if not 0.5 <= args.minutes <= 120:
        raise CliError("--minutes must be in 0.5..120")
    wd: Path = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    for d in WORK_DIRS:  # a fresh run: the demo owns these directories
        shutil.rmtree(wd / d, ignore_errors=True)
    plan = FleetPlan.for_run(args.devices, args.seed, args.minutes)
    return Demo(wd, plan, args.minutes * 60).run()


class Demo:
    """One demo run; `run` drives the phases and always shuts everything down."""

    def __init__(self, wd: Path, plan: Any, stream_s: float) -> None:
        self.wd, self.plan, self.stream_s = wd, plan, stream_s
        self.phase = "starting"
        self.notes: list[str] = []
        self.timeline: dict[str, float] = {}
        self.retrain_report: dict[str, Any] | None = None
        self.retrain_error: str | None = None
        self.t0, self.wall_t0 = time.monotonic(), time.time()

    def note(self, line: str) -> None:
        self.notes.append(line)

    def run(self) -> int:
        from pyspark.sql import SparkSession

        from cloud_jobs.spark import get_spark

        t_start = time.perf_counter()
        # the live view shows incidents and the retraining's steps: keep the jobs' own log lines out of it
        logging.getLogger("edgeflag.cloud").setLevel(logging.ERROR)
        own_spark = SparkSession.getActiveSession() is None
        pool = ThreadPoolExecutor(1)
        spark_future = pool.submit(get_spark, "edgeflag-demo", master="local[2]")  # the JVM starts meanwhile
        console.rule("1. models: v1 per device type")
        bundles = self.train_v1()
        console.rule("2. hub: Mosquitto, certificates, the TLS front end, the device registry")
        hub, gateways, host = self.start_hub()
        agg_stop = threading.Event()
        agg: dict[str, Any] = {}
        try:
            console.rule("3. cloud: the fleet aggregation job on local Spark")
            spark = spark_future.result()
            self.start_aggregation(spark, agg_stop, agg)
            console.rule(f"4. the fleet, live ({len(gateways)} agent processes, {self.plan.devices} devices)")
            self.stream(hub, gateways, host, bundles, spark, agg)
            console.rule("5. shutdown: agents stopped, the job catches up")
            self.wait_for_job(agg)
        finally:
            for gw in gateways:
                from edgeflag.cli.demo_fleet import stop_agent

                stop_agent(gw, timeout=30)
            agg_stop.set()
            if "thread" in agg:
                agg["thread"].join(120)
            hub.stop()
            pool.shutdown()
        console.rule("6. report")
        from edgeflag.cli.demo_results import build_report

        report, summary = build_report(self, spark, gateways)
        if own_spark:
            spark.stop()
        console.print(f"  delivery: produced {summary['produced']:,}, delivered {summary['delivered']:,}, "
                      f"duplicates {summary['duplicates']:,}, lost {summary['lost']:,}")
        console.print(f"  detection: precision {summary['precision']}, recall {summary['recall']}, "
                      f"F1 {summary['f1']}, event recall {summary['event_recall']}")
        console.print(f"  incidents: {summary['incidents']}; model versions: {summary['model_versions']}")
        console.print(f"demo done in {time.perf_counter() - t_start:.0f} s; files in {self.wd}/")
        print(f"report: {report}", flush=True)  # the last line, unwrapped whatever the terminal width
        return 0 if summary["lost"] == 0 else 1

    # ---- phases --------------------------------------------------------------------------------
    def train_v1(self) -> dict[str, Path]:
        from edgeflag.cli.demo_fleet import TYPES
        from models.bundle import load_bundle
        from models.errors import BundleError
        from models.registry import Registry
        from models.training.pipeline import build_bundle
        from models.training.trainer import TrainConfig, feature_table, fit_spec, resolve_features
        from simulators import Fleet, FleetConfig
        from simulators.types import pick_types

        registry = Registry(self.wd / "registry")
        out = {}
        for i, dtype in enumerate(TYPES):
            blocks = Fleet(FleetConfig(devices=4, seed=self.plan.seed + 1000 + i, anomaly_rate=0.0,
                                       device_types=pick_types([dtype]))).generate(3000)
            tc = resolve_features(blocks, TrainConfig(name=dtype, n_estimators=60))  # the choice goes in the manifest
            spec = fit_spec(blocks, tc)
            path, _ = build_bundle(feature_table(blocks, spec), spec, tc, registry)
            registry.set_champion(dtype, 1)
            b = load_bundle(path)
            console.print(f"  {b.label}: channels {', '.join(spec.channels)}; trained on 4 simulated {dtype}s "
                          f"x 3,000 readings; threshold {b.manifest.threshold:.3f}")
            out[dtype] = path
        bad = self.wd / "tampered"
        shutil.copytree(out[TYPES[0]], bad)
        raw = bytearray((bad / "model.onnx").read_bytes())
        raw[len(raw) // 2] ^= 0x01
        (bad / "model.onnx").write_bytes(bytes(raw))
        try:
            load_bundle(bad)
            raise CliError("a tampered bundle was accepted — this is a bug")
        except BundleError as exc:
            console.print(f"  a copy with one bit flipped is refused: {exc.reason}")
        return out

    def start_hub(self) -> tuple[Any, list[Any], str]:
        from edgeflag.cli.demo_fleet import plan_gateways
        from hub.hub import Hub, HubConfig
        from hub.mosquitto import free_loopback_address

        host = free_loopback_address(8883)  # the SDK's port is fixed: a loopback address of our own
        hub = Hub(HubConfig(state=self.wd / "hub", bronze=self.wd / "bronze", start_broker=True, broker_port=0,
                            frontend=host, bronze_rotate_s=1.0))
        gateways = plan_gateways(self.plan, self.wd)
        self.keys = {gw.name: hub.registry.add(gw.name, tags={"device_type": gw.device_type}) for gw in gateways}
        hub.start()
        console.print(f"  hub: broker 127.0.0.1:{hub.port}, TLS front end {host}:8883 (CA {hub.ca_file}), "
                      f"bronze {self.wd / 'bronze'}")
        for gw in gateways:
            console.print(f"  device {gw.name} (device_type={gw.device_type}, uplink {gw.uplink}): "
                          f"{len(gw.devices)} devices {gw.devices[0]}…")
        return hub, gateways, host

    def start_aggregation(self, spark: Any, stop: threading.Event, agg: dict[str, Any]) -> None:
        from cloud_jobs.config import AggregateConfig, IncidentConfig, InputConfig, Trigger
        from cloud_jobs.fleet.job import main as aggregate

        # the watermark (simulated s) covers the outage and the agents' reconnects after it (up to ~14 s
        # apart, the SDK's included): a backlog older than it would be dropped from silver as late.
        # incidents: 4 devices, or half of a type. The default (3, or 30 %) raises a chance incident about
        # once per demo run when 3 of 10 devices have unrelated faults in the same minute (docs/demo.md)
        self.agg_config = AggregateConfig(input=InputConfig(path=str(self.wd / "bronze")), out=str(self.wd / "lake"),
                                          watermark_s=int(self.plan.speed * (OUTAGE_S + 14)),
                                          trigger=Trigger(False, 2.0),
                                          incidents=IncidentConfig(min_devices=4, min_fraction=0.5))
        agg["batches"] = agg["silver"] = 0

        def on_batch(st: Any) -> None:
            from cloud_jobs import io

            agg["batches"] += 1
            agg["silver"] += st.readings
            if st.readings:  # the newest event time in silver, from the batch's file footers
                newest = io.batch_max_ms(spark, self.agg_config.table("silver"), self.agg_config.table_format,
                                         st.batch_id, "event_time")
                agg["newest_ms"] = max(agg.get("newest_ms", 0), newest or 0)
            agg["last_batch"] = time.monotonic()
            if st.incidents:
                self.note(f"cloud: {st.incidents} incident event(s) in batch {st.batch_id}")

        def body() -> None:
            try:
                agg["report"] = aggregate(self.agg_config, spark=spark, stop=stop, on_batch=on_batch)
            except Exception as exc:  # shown in the view and the report; the demo goes on to shut down
                agg["error"] = f"{type(exc).__name__}: {exc}"
                self.note(f"[red]aggregation failed: {agg['error']}[/]")

        t = threading.Thread(target=body, name="demo-aggregate", daemon=True)
        t.start()
        agg["thread"] = t
        console.print(f"  {self.agg_config.out}: silver, gold_device/gold_fleet 1m and 5m/1m windows, incidents; "
                      f"trigger every 2 s, watermark {self.agg_config.watermark_s} simulated s")

    def stream(self, hub: Any, gateways: list[Any], host: str, bundles: dict[str, Path], spark: Any,
               agg: dict[str, Any]) -> None:
        from rich.live import Live

        from edgeflag.cli.demo_fleet import Watcher, agent_config, start_agent
        from edgeflag.cli.demo_view import render
        from hub.hub import HUB_NAME

        for gw in gateways:
            start_agent(gw, agent_config(gw, self.plan, bundle=bundles[gw.device_type], host=host,
                                         ca_file=hub.ca_file, hub_name=HUB_NAME, key=self.keys[gw.name]))
        self.t0, self.wall_t0 = time.monotonic(), time.time()
        self.watcher = Watcher(gateways, self.t0)
        self.watcher.start()
        p = self.plan
        fault_at = p.fault_start_s / p.speed
        self.note(f"fleet fault planned: level shift on {p.fault_devices} {p.fault_type}s from simulated second "
                  f"{p.fault_start_s} (~{fault_at:.0f} s in) for {p.fault_span} readings")
        outage_s = OUTAGE_S
        retrain_at = 0.4 * self.stream_s
        retrain_thread: threading.Thread | None = None
        incidents_path = Path(self.agg_config.out) / "incidents.jsonl"
        from cloud_jobs.fleet.incidents import read_incidents

        def view() -> Any:
            return render(phase=self.phase, elapsed=time.monotonic() - self.t0, stream_s=self.stream_s,
                          gateways=gateways, watcher=self.watcher, incidents=read_incidents(incidents_path),
                          notes=self.notes)

        self.phase = "streaming: agents score every reading and send it through the hub"
        with Live(get_renderable=view, console=console, refresh_per_second=2, transient=False):
            while True:
                time.sleep(0.5)
                t = time.monotonic() - self.t0
                dead = [g.name for g in gateways if g.proc is not None and g.proc.poll() is not None]
                if dead:
                    raise CliError(f"agent process(es) exited early: {', '.join(dead)} (see {self.wd}/agents/*.log)")
                if fault_at <= t < fault_at + p.fault_span / p.speed:
                    self.phase = f"fleet fault: {p.fault_devices} {p.fault_type}s shifted at once"
                if retrain_thread is None and t >= retrain_at and self.ready_to_retrain(agg, incidents_path, t):
                    self.phase = "retraining on silver (Spark), gate, then canary rollout through the twins"
                    self.timeline["retrain_start"] = t
                    retrain_thread = threading.Thread(target=self.retrain, args=(hub, spark), daemon=True)
                    retrain_thread.start()
                elif (retrain_thread is not None and not retrain_thread.is_alive()
                      and "outage_start" not in self.timeline):
                    self.timeline.setdefault("retrain_end", t)
                    self.phase = f"uplink outage: the hub's front end is down for {outage_s:.0f} s"
                    self.timeline["outage_start"] = t
                    hub.stop_frontend()
                    self.note(f"outage: front end stopped at {t:.0f} s; agents keep scoring into their outboxes")
                elif "outage_start" in self.timeline and "outage_end" not in self.timeline \
                        and t - self.timeline["outage_start"] >= outage_s:
                    hub.start_frontend()
                    self.timeline["outage_end"] = t
                    self.phase = "outage over: agents reconnect and their backlogs drain"
                    self.note(f"outage: front end back at {t:.0f} s")
                elif "outage_end" in self.timeline and t >= self.stream_s:
                    # drained: every agent connected and holding no more than ~2 s of its own production
                    # (readings keep flowing; SIGTERM then flushes that remainder while connected)
                    latest = [(g, self.watcher.latest(g.name)) for g in gateways]
                    if all(s is not None and s.connected and s.backlog <= 2 * p.speed * len(g.devices)
                           for g, s in latest):
                        break
                    # the drain gets its full time even when retraining and the outage ran past the
                    # planned end (a loaded machine): counted from whichever came last
                    if t > max(self.stream_s, self.timeline["outage_end"]) + DRAIN_S:
                        self.note(f"[red]backlog not drained {DRAIN_S:.0f} s after the end: stopping anyway[/]")
                        break
                    self.phase = "final stretch: waiting for every outbox to drain"
            self.phase = "stopping the agents (SIGTERM: they flush and exit)"
            from edgeflag.cli.demo_fleet import stop_agent

            codes = {gw.name: stop_agent(gw) for gw in gateways}
            self.timeline["stopped"] = time.monotonic() - self.t0
        self.watcher.stop()
        bad = {k: v for k, v in codes.items() if v != 0}
        console.print(f"  agents stopped: {len(codes) - len(bad)} cleanly" + (f"; exit codes {bad}" if bad else ""))
        for line in self.notes:
            console.print(f"  {line}")

    def ready_to_retrain(self, agg: dict[str, Any], incidents_path: Path, t: float) -> bool:
        """Silver holds enough readings, the fleet incident is on record (so retraining leaves its readings
        out), and silver reaches far enough past the fleet fault that the gate's holdout (the newest
        quarter) starts after it. Waits at most until 60 % of the run."""
        from cloud_jobs.fleet.incidents import read_incidents

        p = self.plan
        start = p.fleet_config().start.timestamp() * 1000
        fault_end_ms = start + (p.fault_start_s + p.fault_span + 20) * 1000  # + the fault's start jitter
        holdout_clear = agg.get("newest_ms", 0) >= start + (fault_end_ms - start) / 0.75 + 60_000
        incident = any(e.get("event") == "open" for e in read_incidents(incidents_path))
        enough = agg["silver"] >= 3 * RETRAIN_MIN_ROWS
        return enough and ((holdout_clear and incident) or t >= 0.6 * self.stream_s)

    def retrain(self, hub: Any, spark: Any) -> None:
        import mlflow  # noqa: F401  (mlflow sets its loggers' levels when imported: quiet them after that)

        from cloud_jobs.config import RetrainConfig, RolloutConfig
        from cloud_jobs.retrain.job import main as retrain
        from cloud_jobs.retrain.rollout import HubControl

        logging.getLogger("mlflow").setLevel(logging.ERROR)
        # watch up to 150 s: under the demo's load a micro-batch can take a minute, so a canary's first
        # readings may reach silver two batches after the rollout (a 60 s watch rolled back sound chillers)
        rollout = RolloutConfig(canary_fraction=0.5, min_canary_readings=100, max_canary_alert_rate=0.05,
                                report_timeout_s=60, watch_timeout_s=150, poll_s=1.0)
        cfg = RetrainConfig(silver=self.agg_config.table("silver"), registry=str(self.wd / "registry"),
                            out=str(self.wd / "retrain"), incidents=str(Path(self.agg_config.out) / "incidents.jsonl"),
                            min_rows=RETRAIN_MIN_ROWS, n_estimators=60, rollout=rollout)
        try:
            self.retrain_report = retrain(cfg, spark=spark, say=lambda m: self.note("retrain: " + m.splitlines()[0]),
                                          control=HubControl.running(hub))
        except Exception as exc:  # reported; the rest of the demo goes on
            self.retrain_error = f"{type(exc).__name__}: {exc}"
            self.note(f"[red]retrain failed: {self.retrain_error}[/]")

    def wait_for_job(self, agg: dict[str, Any], quiet_s: float = 6.0, timeout: float = 120.0) -> None:
        """Let the job land what the hub wrote last: until no batch has run for `quiet_s` seconds."""
        deadline = time.monotonic() + timeout
        time.sleep(2.5)  # the hub publishes its open bronze file within bronze_rotate_s
        while time.monotonic() < deadline and "error" not in agg:
            if time.monotonic() - agg.get("last_batch", 0.0) >= quiet_s:
                break
            time.sleep(0.5)
        console.print(f"  aggregation: {agg['batches']} micro-batches"
                      + (f"; [red]failed: {agg['error']}[/]" if "error" in agg else ""))
