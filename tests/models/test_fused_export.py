"""Parity of the fused tree-ensemble export with scikit-learn (issue: fast scoring)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from models.training.fused import OPSETS, can_fuse, export_fused
from models.training.stock import export_stock, sklearn_scores


def session(model: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def onnx_scores(model: bytes, x: np.ndarray) -> np.ndarray:
    return session(model).run(["score"], {"features": x.astype(np.float32)})[0].ravel().astype(np.float64)


def fit(x: np.ndarray, scaler: bool = True, **kw: object) -> Pipeline | IsolationForest:
    forest = IsolationForest(random_state=kw.pop("seed", 0), **kw)  # type: ignore[arg-type]
    model = Pipeline([("scaler", StandardScaler()), ("forest", forest)]) if scaler else forest
    return model.fit(x.astype(np.float32))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_estimators=st.integers(1, 60),
    max_samples=st.sampled_from([2, 16, 64, 256]),
    max_features=st.sampled_from([1.0, 0.5, 0.25]),
    n_features=st.integers(1, 10),
    scale=st.floats(1e-3, 1e4),
    seed=st.integers(0, 2**16),
    scaler=st.booleans(),
)
def test_fused_scores_match_scikit_learn_within_1e_5(n_estimators: int, max_samples: int, max_features: float,
                                                      n_features: int, scale: float, seed: int,
                                                      scaler: bool) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(400, n_features)) * scale + rng.normal(size=n_features) * scale).astype(np.float32)
    model = fit(x, scaler, n_estimators=n_estimators, max_samples=max_samples, max_features=max_features, seed=seed)
    onnx = export_fused(model, n_features)
    probe = np.vstack([
        x[:100],
        (rng.normal(size=(100, n_features)) * scale * 50).astype(np.float32),  # far outside training range
        (rng.uniform(-1, 1, size=(50, n_features)) * scale * 1e4).astype(np.float32),
    ])
    assert np.max(np.abs(onnx_scores(onnx, probe) - sklearn_scores(model, probe))) < 1e-5


def test_constant_columns_are_handled() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 5)).astype(np.float32)
    x[:, 2] = 7.0
    model = fit(x)
    probe = np.vstack([x[:50], rng.normal(size=(50, 5)).astype(np.float32) * 10])
    assert np.max(np.abs(onnx_scores(export_fused(model, 5), probe) - sklearn_scores(model, probe))) < 1e-5


def test_nan_follows_scikit_learn_and_inf_behaves_like_the_largest_float() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    model = fit(x, n_estimators=50)
    onnx = export_fused(model, 4)
    probe = x[:20].copy()
    probe[:5, 0] = np.nan
    probe[5:10, 1:3] = np.nan
    assert np.max(np.abs(onnx_scores(onnx, probe) - sklearn_scores(model, probe))) < 1e-5
    big = np.finfo(np.float32).max
    inf = x[:6].copy()
    inf[:3, 0], inf[3:, 1] = np.inf, -np.inf
    fin = x[:6].copy()
    fin[:3, 0], fin[3:, 1] = big, -big
    # scikit-learn refuses inf; the fused graph treats ±inf as the extreme float of that sign.
    assert np.array_equal(onnx_scores(onnx, inf), onnx_scores(onnx, fin))
    assert np.isfinite(onnx_scores(onnx, inf)).all()


def test_the_fused_graph_is_one_tree_node_and_the_stock_export_agrees() -> None:
    import onnx as onnx_lib

    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    model = fit(x, n_estimators=100)
    fused = onnx_lib.load_from_string(export_fused(model, 8))
    ops = [n.op_type for n in fused.graph.node]
    assert ops == ["TreeEnsembleRegressor", "Mul", "Exp"]
    assert {o.domain: o.version for o in fused.opset_import} == OPSETS
    stock = export_stock(model, 8)
    assert len(onnx_lib.load_from_string(stock).graph.node) > 1000
    probe = rng.normal(size=(200, 8)).astype(np.float32) * 3
    assert np.max(np.abs(onnx_scores(stock, probe) - onnx_scores(fused.SerializeToString(), probe))) < 1e-5


def test_unsupported_estimators_fall_back_to_skl2onnx() -> None:
    from sklearn.preprocessing import MinMaxScaler

    from models.features import FeatureSpec
    from models.training.trainer import TrainedModel, export_model

    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    pipe = Pipeline([("scaler", MinMaxScaler()), ("forest", IsolationForest(n_estimators=20, random_state=0))]).fit(x)
    assert not can_fuse(pipe)
    spec = FeatureSpec(channels=("a",), floors=(0.1,))
    onnx, manifest = export_model(TrainedModel(pipe, spec, 0.6, {}), name="m", version=1, form="fused")
    assert manifest.form == "skl2onnx"
    assert np.max(np.abs(onnx_scores(onnx, x[:100]) - sklearn_scores(pipe, x[:100]))) < 1e-5
