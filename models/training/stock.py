"""Stock export through skl2onnx, the fallback for estimators the fused exporter does not handle.

skl2onnx's IsolationForest converter outputs ``label`` and ``scores``
(= decision_function). We append ``score = -(scores + offset_)`` so every bundle
has the same output contract: float32 [N, 1], IsolationForest anomaly score, higher
= more anomalous. Other outlier estimators must expose ``offset_`` the same way.
Opsets: "" 17, ai.onnx.ml 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.errors import TrainingError

OPSETS = {"": 17, "ai.onnx.ml": 3}
FORM = "skl2onnx"


def _final_step(pipeline: Any) -> Any:
    steps = getattr(pipeline, "steps", None)
    return steps[-1][1] if steps else pipeline


def export_stock(pipeline: Any, n_features: int, *, input_name: str = "features",
                 output_name: str = "score") -> bytes:
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    est = _final_step(pipeline)
    offset = getattr(est, "offset_", None)
    if offset is None:
        raise TrainingError(f"{type(est).__name__} has no offset_; cannot map its decision_function to a score")
    try:
        model = convert_sklearn(pipeline, initial_types=[(input_name, FloatTensorType([None, n_features]))],
                                target_opset=dict(OPSETS))
    except Exception as exc:
        raise TrainingError(f"skl2onnx cannot convert {type(est).__name__}: {exc}") from None
    g = model.graph
    scores = next(o.name for o in g.output if o.name != "label")
    g.initializer.append(helper.make_tensor("edgeflag_offset", TensorProto.FLOAT, [], [float(offset)]))
    g.node.append(helper.make_node("Add", [scores, "edgeflag_offset"], ["edgeflag_shifted"]))
    g.node.append(helper.make_node("Neg", ["edgeflag_shifted"], [output_name]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [None, 1]))
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def sklearn_scores(pipeline: Any, x: np.ndarray) -> np.ndarray:
    """The reference score (-score_samples) on float32 input, as the ONNX graph sees it."""
    return np.asarray(-pipeline.score_samples(np.asarray(x, dtype=np.float32)), dtype=np.float64)
