"""The range guard: what an isolation forest cannot say about points outside everything it was fitted on.

An isolation forest cannot extrapolate. A point beyond the fitted rows in some feature follows the
most extreme fitted rows down every tree (each split's threshold lies between fitted values), so its
score is theirs: a 12-sigma spike scores like the most unusual *normal* reading, at about the
threshold. Measured in December 2026 on the simulator's pump fleet, a model fitted on fault-free
readings reached spike F1 0.13 and stuck F1 0.04 (docs/detection.md); it only detected them when
unlabelled rows near faults in the training data happened to stretch the fitted range.

The guard adds how far a row lies outside the range of the rows the threshold is calibrated on, in
units of that range, to the forest's score::

    w_j    = max - min of feature j over the calibration rows
    hi_j   = max + MARGIN · w_j,   lo_j = min - MARGIN · w_j
    excess = max over features j of max(0, (x_j - hi_j) / w_j, (lo_j - x_j) / w_j)
    score  = forest score + excess

so inside the bounds (every calibration row) nothing changes and the calibrated threshold keeps its
meaning; a row a tenth of the range beyond them gains 0.1, a spike several ranges out is flagged
whatever the forest says. It is part of the exported ONNX graph (`append_to_onnx`: Sub, Div, Max,
ReduceMax, Add on the graph's own input), so the edge scorer needs nothing new and older bundles
(without it) keep their scores. `excess` computes the same float32 operations in numpy: the reference
for the ONNX parity check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The smallest range width (a feature constant over the calibration rows).
MIN_WIDTH = 1e-3
#: The bounds sit this many widths outside the calibration rows' range: a fresh normal reading a little
#: beyond the most extreme calibration row is not an anomaly. Measured in December 2026 (docs/detection.md)
#: on Daphnet's held-out accelerometer data: false-alarm rate 0.0059 at 0.05, 0.0026 at 0.1, 0 at 0.15
#: (target 0.001); 0.3 costs the simulator's noise bursts 0.02-0.03 F1.
MARGIN = 0.15


@dataclass(frozen=True)
class RangeGuard:
    """Per-feature bounds and widths (float32), see the module docstring."""

    lo: np.ndarray
    hi: np.ndarray
    width: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, margin: float = MARGIN) -> RangeGuard:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or not len(x):
            raise ValueError("the range guard needs at least one feature row")
        lo, hi = x.min(axis=0), x.max(axis=0)
        width = np.maximum(hi - lo, np.float32(MIN_WIDTH)).astype(np.float32)
        return cls((lo - margin * width).astype(np.float32), (hi + margin * width).astype(np.float32), width)

    def excess(self, x: np.ndarray) -> np.ndarray:
        """How far each row lies outside the bounds, in widths (0 inside), as the ONNX graph computes it."""
        x = np.asarray(x, dtype=np.float32)
        w = self.width
        above = (x - self.hi) / w
        below = (self.lo - x) / w
        out: np.ndarray = np.maximum(np.maximum(above, below), np.float32(0.0)).max(axis=1).astype(np.float64)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"lo": [float(v) for v in self.lo], "hi": [float(v) for v in self.hi],
                "width": [float(v) for v in self.width]}


def append_to_onnx(onnx_bytes: bytes, guard: RangeGuard, *, input_name: str = "features",
                   output_name: str = "score") -> bytes:
    """The graph with its [N, 1] score output replaced by score + `guard.excess(input)`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    g = model.graph
    inner = "edgeflag_forest_score"
    for node in g.node:
        node.output[:] = [inner if o == output_name else o for o in node.output]
    g.initializer.extend([
        numpy_helper.from_array(guard.hi.astype(np.float32), "edgeflag_guard_hi"),
        numpy_helper.from_array(guard.lo.astype(np.float32), "edgeflag_guard_lo"),
        numpy_helper.from_array(guard.width.astype(np.float32), "edgeflag_guard_width"),
        helper.make_tensor("edgeflag_guard_zero", TensorProto.FLOAT, [], [0.0]),
    ])
    g.node.extend([
        helper.make_node("Sub", [input_name, "edgeflag_guard_hi"], ["edgeflag_guard_up"]),
        helper.make_node("Div", ["edgeflag_guard_up", "edgeflag_guard_width"], ["edgeflag_guard_above"]),
        helper.make_node("Sub", ["edgeflag_guard_lo", input_name], ["edgeflag_guard_down"]),
        helper.make_node("Div", ["edgeflag_guard_down", "edgeflag_guard_width"], ["edgeflag_guard_below"]),
        helper.make_node("Max", ["edgeflag_guard_above", "edgeflag_guard_below", "edgeflag_guard_zero"],
                         ["edgeflag_guard_out"]),
        helper.make_node("ReduceMax", ["edgeflag_guard_out"], ["edgeflag_guard_excess"], axes=[1], keepdims=1),
        helper.make_node("Add", [inner, "edgeflag_guard_excess"], [output_name]),
    ])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
