"""Scoring benchmark: scikit-learn vs the stock skl2onnx export vs the fused export.

One run, one model (StandardScaler + IsolationForest, 100 trees, 8 features), one data set,
threads pinned to 1. Prints ONE JSON line. Not a test: run `python benchmarks/scoring.py`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from models.training.fused import export_fused
from models.training.stock import export_stock, sklearn_scores

N_FEATURES = 8


def session(model: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def latencies_us(fn: Callable[[np.ndarray], object], rows: np.ndarray, calls: int) -> np.ndarray:
    for i in range(min(20, calls)):
        fn(rows[i : i + 1])
    out = np.empty(calls)
    for i in range(calls):
        x = rows[i % len(rows) : i % len(rows) + 1]
        t = time.perf_counter_ns()
        fn(x)
        out[i] = (time.perf_counter_ns() - t) / 1e3
    return out


def rows_per_s(fn: Callable[[np.ndarray], object], rows: np.ndarray, batch: int, seconds: float = 1.0) -> float:
    batches = [np.ascontiguousarray(rows[i : i + batch]) for i in range(0, len(rows) - batch + 1, batch)]
    fn(batches[0])
    done, i = 0, 0
    start = time.perf_counter()
    while True:
        fn(batches[i % len(batches)])
        done += batch
        i += 1
        el = time.perf_counter() - start
        if el >= seconds and i >= 3:
            return done / el


def fit(x: np.ndarray, trees: int) -> Pipeline:
    return Pipeline([("scaler", StandardScaler()),
                     ("forest", IsolationForest(n_estimators=trees, random_state=0))]).fit(x)


def main() -> None:
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(20_000, N_FEATURES)) * rng.uniform(0.1, 10, N_FEATURES)).astype(np.float32)
    data = np.vstack([train[:8192], (rng.normal(size=(8192, N_FEATURES)) * 5).astype(np.float32)])
    rng.shuffle(data)
    model = fit(train, 100)
    fused, stock = export_fused(model, N_FEATURES), export_stock(model, N_FEATURES)

    def timed_load(b: bytes) -> tuple[ort.InferenceSession, float]:
        t = time.perf_counter()
        s = session(b)
        return s, time.perf_counter() - t

    s_fused, fused_load = timed_load(fused)
    s_stock, stock_load = timed_load(stock)

    def run_fused(x: np.ndarray) -> object:
        return s_fused.run(None, {"features": x})

    def run_stock(x: np.ndarray) -> object:
        return s_stock.run(None, {"features": x})

    def run_sklearn(x: np.ndarray) -> object:
        return model.score_samples(x)

    ref = sklearn_scores(model, data)
    out: dict[str, object] = {"bench": "scoring", "trees": 100, "features": N_FEATURES, "threads": 1,
                              "onnxruntime": ort.__version__, "python": platform.python_version()}
    out["max_abs_diff"] = float(np.max(np.abs(s_fused.run(None, {"features": data})[0].ravel() - ref)))
    out["stock_max_abs_diff"] = float(np.max(np.abs(s_stock.run(None, {"features": data})[0].ravel() - ref)))
    for name, fn, calls in (("fused", run_fused, 20_000), ("stock", run_stock, 2_000), ("sklearn", run_sklearn, 300)):
        lat = latencies_us(fn, data, calls)
        out[f"{name}_single_p50_us"] = round(float(np.percentile(lat, 50)), 2)
        out[f"{name}_single_p99_us"] = round(float(np.percentile(lat, 99)), 2)
        for batch in (1, 64, 1024):
            secs = 0.5 if name == "sklearn" else 1.0
            out[f"{name}_batch{batch}_rows_per_s"] = round(rows_per_s(fn, data, batch, secs))
    out["speedup_vs_stock"] = round(out["stock_single_p50_us"] / out["fused_single_p50_us"], 1)  # type: ignore[operator]
    out["speedup_vs_sklearn"] = round(out["sklearn_single_p50_us"] / out["fused_single_p50_us"], 1)  # type: ignore[operator]
    out["fused_load_s"] = round(fused_load, 4)
    out["stock_load_s"] = round(stock_load, 4)
    out["fused_model_bytes"] = len(fused)
    out["stock_model_bytes"] = len(stock)
    big = export_fused(fit(train, 500), N_FEATURES)
    loads = []
    for _ in range(3):
        loads.append(timed_load(big)[1])
    out["load_500_trees_s"] = round(min(loads), 4)
    out["model_500_trees_bytes"] = len(big)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
