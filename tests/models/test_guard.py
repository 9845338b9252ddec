"""The range guard (models/training/guard.py): its arithmetic, its ONNX form against the reference, and
what it is for: a model fitted on normal readings alone still flags faults beyond them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models.training.guard import MARGIN, RangeGuard, append_to_onnx
from models.training.trainer import TrainConfig, export_model, train


def test_excess_is_zero_inside_the_bounds_and_counts_widths_beyond_them() -> None:
    rows = np.array([[0.0, 0.0], [4.0, 0.0], [2.0, 0.0]])
    g = RangeGuard.fit(rows)
    assert g.width.tolist() == [4.0, pytest.approx(1e-3)]  # a constant feature gets the smallest width
    assert g.excess(rows).tolist() == [0.0, 0.0, 0.0]
    hi = 4.0 + MARGIN * 4.0
    probe = np.array([[hi + 4.0, 0.0], [-MARGIN * 4.0 - 2.0, 0.0], [hi, 0.0], [2.0, MARGIN * 1e-3 + 2e-3]])
    assert g.excess(probe) == pytest.approx([1.0, 0.5, 0.0, 2.0], rel=1e-4)


@pytest.fixture(scope="module")
def clean_model():  # type: ignore[no-untyped-def]
    from simulators import Fleet, FleetConfig
    from simulators.types import pick_types

    blocks = Fleet(FleetConfig(devices=3, seed=31, device_types=pick_types("pump"), anomaly_rate=0.0)).generate(2400)
    return train(blocks, TrainConfig(name="pump", n_estimators=60))


def _onnx(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"features": x.astype(np.float32)})[0][:, 0], dtype=np.float64)


@pytest.mark.parametrize("form", ["fused", "skl2onnx"])
def test_the_exported_graph_computes_the_reference_score(clean_model, form: str) -> None:  # type: ignore[no-untyped-def]
    g = clean_model.guard
    assert g is not None and clean_model.summary["range_guard"] == g.to_dict()
    rng = np.random.default_rng(0)
    inside = g.lo + rng.random((300, len(g.lo))) * (g.hi - g.lo)
    outside = inside + rng.normal(0, 3, inside.shape) * g.width  # many rows beyond the bounds, both ways
    x = np.vstack([inside, outside]).astype(np.float32)
    onnx_bytes, manifest = export_model(clean_model, name="pump", version=1, form=form)
    ref = clean_model.scores(x)
    assert np.max(np.abs(_onnx(onnx_bytes, x) - ref)) < 1e-5
    assert (g.excess(outside) > 0).mean() > 0.5 and (g.excess(inside) == 0).all()
    assert manifest.training["range_guard"]["width"] == [float(w) for w in g.width]


def test_without_a_guard_the_graph_is_the_forest_alone(clean_model) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from models.training.stock import sklearn_scores

    bare = replace(clean_model, guard=None)
    onnx_bytes, _ = export_model(bare, name="pump", version=1)
    x = np.asarray(clean_model.guard.hi, np.float32)[None, :] * 3
    assert _onnx(onnx_bytes, x) == pytest.approx(sklearn_scores(clean_model.pipeline, x), abs=1e-5)
    assert _onnx(append_to_onnx(onnx_bytes, clean_model.guard), x) == pytest.approx(clean_model.scores(x), abs=1e-5)


def test_a_model_fitted_on_normal_readings_alone_flags_spikes_and_stuck_sensors(clean_model) -> None:  # type: ignore[no-untyped-def]
    """The guard's reason to exist: without it such a model scores a 12-sigma spike like the most unusual
    normal reading it was fitted on (the forest cannot extrapolate), so most spikes pass."""
    from dataclasses import replace

    from models.features import columns_for, compute_features
    from simulators import FaultType, Fleet, FleetConfig
    from simulators.types import pick_types

    spec = clean_model.spec
    recall = {}
    for kind in (FaultType.SPIKE, FaultType.STUCK):
        test = Fleet(FleetConfig(devices=3, seed=32, device_types=pick_types("pump"), faults=(kind,),
                                 anomaly_rate=0.004)).generate(2400)
        x = np.vstack([compute_features(spec, b.values[:, columns_for(spec, b.channels)]) for b in test.values()])
        labels = np.concatenate([b.labels for b in test.values()]).astype(bool)
        assert labels.sum() >= 20
        for name, model in (("guarded", clean_model), ("forest alone", replace(clean_model, guard=None))):
            recall[(kind.value, name)] = float((model.scores(x[labels]) >= clean_model.threshold).mean())
    assert recall[("spike", "guarded")] >= 0.9 and recall[("stuck", "guarded")] >= 0.8, recall
    assert recall[("spike", "forest alone")] <= 0.5, recall  # what the guard fixes (else this test proves nothing)
