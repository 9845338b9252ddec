"""ONNX scoring with onnxruntime: the Scorer every consumer uses.

A high score means more anomalous. The bundle's graph maps float32 features
[N, n_features] to float32 scores [N, 1]; a reading is flagged when
score >= threshold. Sessions run single-threaded by default (a device core is
precious and micro-batches are small); `threads` overrides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from models.errors import BundleError, ScoringError

if TYPE_CHECKING:
    from models.bundle import Bundle


class OnnxScorer:
    """Scores feature rows with one bundle's model. Thread-safe for concurrent `score` calls."""

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        import onnxruntime as ort

        self.bundle = bundle
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(bundle.model_bytes, sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(bundle.path, f"onnxruntime cannot load model.onnx: {exc}") from None
        m = bundle.manifest
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        if m.input_name not in inputs:
            raise BundleError(bundle.path, f"graph has no input {m.input_name!r} (has {', '.join(inputs)})")
        if m.output_name not in outputs:
            raise BundleError(bundle.path, f"graph has no output {m.output_name!r} (has {', '.join(outputs)})")
        width = inputs[m.input_name].shape[-1]
        if isinstance(width, int) and width != bundle.spec.n_features:
            raise BundleError(bundle.path, f"graph takes {width} features, feature spec makes {bundle.spec.n_features}")
        self.input_name = m.input_name
        self.output_name = m.output_name
        self.n_features = bundle.spec.n_features
        self.threshold = float(m.threshold)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores for rows of features, float64 [N]. Raises ScoringError on bad shape or NaN output."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ScoringError(f"expected features of shape (n, {self.n_features}), got {x.shape}")
        if x.shape[0] == 0:
            return np.empty(0)
        try:
            out = self._session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:
            raise ScoringError(f"onnxruntime failed: {exc}") from None
        return np.asarray(out, dtype=np.float64).reshape(-1)
