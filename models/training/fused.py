"""Fused ONNX export of an IsolationForest pipeline: one tree-ensemble node.

skl2onnx writes ~27 nodes per tree; this exporter writes the whole forest as ONE
``TreeEnsembleRegressor`` (ai.onnx.ml opset 3) whose leaf values are the isolation
depth of the leaf plus the average-path-length correction c(n_leaf), aggregated by
AVERAGE, then ``Mul`` and ``Exp``: score = 2^(-mean_depth / c(max_samples)) =
exp(mean_depth · (-ln 2 / c(max_samples))). That is IsolationForest's anomaly score,
``-score_samples(X)``, in (0, 1]; higher means more anomalous.

Exactness:
* Each tree's local feature index is mapped through ``estimators_features_``.
* A StandardScaler in front is folded into the thresholds: for each split the exporter
  finds the largest float32 raw value x* whose scaled value — computed by the fitted
  scaler's own `transform` on float32 input — goes left; the node tests ``x <= x*``. Splits therefore
  agree with scikit-learn bit for bit, and only the float32 sum/exp differ (~1e-7).
* NaN follows scikit-learn: each node's ``missing_go_to_left`` becomes
  ``nodes_missing_value_tracks_true``. ±inf compare as ordinary floats in both.

Opsets: "" 17 (Mul, Exp), ai.onnx.ml 3. Loads in onnxruntime >= 1.14.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.errors import TrainingError

OPSETS = {"": 17, "ai.onnx.ml": 3}
FORM = "fused-tree-ensemble"


def _average_path_length(n: np.ndarray) -> np.ndarray:
    from sklearn.ensemble._iforest import _average_path_length as apl

    out: np.ndarray = np.asarray(apl(n), dtype=np.float64)
    return out


def _split_scaler(pipeline: Any) -> tuple[Any, Any]:
    """Return (scaler or None, forest) from a Pipeline(StandardScaler?, IsolationForest) or a bare forest."""
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if isinstance(pipeline, IsolationForest):
        return None, pipeline
    if not isinstance(pipeline, Pipeline):
        raise TrainingError(f"cannot fuse {type(pipeline).__name__}")
    steps = [s for _, s in pipeline.steps if s not in (None, "passthrough")]
    if len(steps) == 1 and isinstance(steps[0], IsolationForest):
        return None, steps[0]
    if len(steps) == 2 and isinstance(steps[0], StandardScaler) and isinstance(steps[1], IsolationForest):
        return steps[0], steps[1]
    raise TrainingError("fused export supports Pipeline(StandardScaler, IsolationForest) or IsolationForest")


def can_fuse(pipeline: Any) -> bool:
    try:
        _split_scaler(pipeline)
    except TrainingError:
        return False
    return True


def _raw_thresholds(t: np.ndarray, feats: np.ndarray, scaler: Any, n_features: int) -> np.ndarray:
    """Largest float32 x with scaled(x) <= t, per split, where scaled() is the fitted scaler's own
    `transform` on float32 input (so the search follows whatever arithmetic that version uses)."""
    mean = np.asarray(scaler.mean_ if scaler.with_mean else np.zeros(n_features), dtype=np.float64)
    scale = np.asarray(scaler.scale_ if scaler.with_std else np.ones(n_features), dtype=np.float64)
    rows = np.arange(len(t))

    def goes_left(v: np.ndarray) -> np.ndarray:
        probe = np.zeros((len(v), n_features), dtype=np.float32)
        probe[rows, feats] = v
        z = np.asarray(scaler.transform(probe), dtype=np.float32)[rows, feats]
        left: np.ndarray = z.astype(np.float64) <= t  # the forest compares float32 input with float64 thresholds
        return left

    x = (t * scale[feats] + mean[feats]).astype(np.float32)
    for _ in range(64):
        bad = ~goes_left(x)
        if not bad.any():
            break
        x[bad] = np.nextafter(x[bad], np.float32(-np.inf))
    for _ in range(64):
        up = np.nextafter(x, np.float32(np.inf))
        more = goes_left(up) & np.isfinite(up)
        if not more.any():
            break
        x[more] = up[more]
    out: np.ndarray = x
    return out


def _float32_leq(t: np.ndarray) -> np.ndarray:
    """Largest float32 <= t: so that float32 x <= result  ⟺  x <= t (as scikit-learn compares)."""
    x = t.astype(np.float32)
    over = x.astype(np.float64) > t
    x[over] = np.nextafter(x[over], np.float32(-np.inf))
    return x


def export_fused(pipeline: Any, n_features: int, *, input_name: str = "features",
                 output_name: str = "score") -> bytes:
    """Serialise a fitted IsolationForest pipeline as one fused tree-ensemble ONNX graph."""
    import onnx
    from onnx import TensorProto, helper

    scaler, forest = _split_scaler(pipeline)
    if getattr(forest, "n_features_in_", n_features) != n_features:
        raise TrainingError(f"forest was fitted on {forest.n_features_in_} features, not {n_features}")
    if scaler is not None and scaler.with_std and not (np.asarray(scaler.scale_) > 0).all():
        raise TrainingError("scaler has a non-positive scale; cannot fold it into thresholds")
    a: dict[str, Any] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
        "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
        "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    for ti, (est, feats) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
        tree = est.tree_
        n = tree.node_count
        left, right = tree.children_left, tree.children_right
        is_leaf = left == -1
        gfeat = np.where(is_leaf, 0, np.asarray(feats)[np.where(is_leaf, 0, tree.feature)])
        thr = tree.threshold.astype(np.float64)
        split = ~is_leaf
        vals = np.zeros(n, dtype=np.float32)
        if scaler is not None:
            vals[split] = _raw_thresholds(thr[split], gfeat[split], scaler, n_features)
        else:
            vals[split] = _float32_leq(thr[split])
        leaf_value = (forest._decision_path_lengths[ti] + forest._average_path_length_per_tree[ti] - 1.0)
        missing_left = getattr(tree, "missing_go_to_left", np.zeros(n, dtype=np.uint8))
        a["nodes_treeids"] += [ti] * n
        a["nodes_nodeids"] += list(range(n))
        a["nodes_featureids"] += gfeat.astype(int).tolist()
        a["nodes_values"] += vals.tolist()
        a["nodes_modes"] += ["LEAF" if leaf else "BRANCH_LEQ" for leaf in is_leaf]
        a["nodes_truenodeids"] += np.where(is_leaf, 0, left).astype(int).tolist()
        a["nodes_falsenodeids"] += np.where(is_leaf, 0, right).astype(int).tolist()
        a["nodes_missing_value_tracks_true"] += [int(bool(m)) if not lf else 0
                                                 for m, lf in zip(missing_left, is_leaf, strict=True)]
        leaves = np.flatnonzero(is_leaf)
        a["target_treeids"] += [ti] * len(leaves)
        a["target_nodeids"] += leaves.tolist()
        a["target_ids"] += [0] * len(leaves)
        a["target_weights"] += np.asarray(leaf_value)[leaves].astype(np.float32).tolist()
    c = float(_average_path_length(np.array([forest._max_samples]))[0])
    factor = -np.log(2.0) / c if c > 0 else 0.0
    nodes = [
        helper.make_node("TreeEnsembleRegressor", [input_name], ["mean_depth"], domain="ai.onnx.ml",
                         n_targets=1, aggregate_function="AVERAGE", post_transform="NONE", **a),
        helper.make_node("Mul", ["mean_depth", "neg_ln2_over_c"], ["log_score"]),
        helper.make_node("Exp", ["log_score"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes, "edgeflag_fused_iforest",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 1])],
        initializer=[helper.make_tensor("neg_ln2_over_c", TensorProto.FLOAT, [], [factor])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()],
                              producer_name="edgeflag", ir_version=8)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
