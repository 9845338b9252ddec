"""The one bundle pipeline: fit -> export ONNX -> ONNX/scikit-learn parity -> sign -> register.

`build_bundle` runs it whole (``edgeflag model train``). A Spark job runs the same two halves where
they belong: `make_candidate` (fit, export, parity: CPU work, on an executor next to the features) and
`publish` (version, sign, register: on the driver, after the gate). A model is refused unless its ONNX
scores match the reference (scikit-learn's, plus the range guard of `models.training.guard`) within
`MAX_PARITY_DIFF` on all but a `MAX_FLIP_FRACTION` of the parity rows, and within `MAX_FLIP_DIFF` on
those few: ONNX holds tree thresholds in float32, so a feature value lying exactly between two float32
neighbours of a split can take the other branch in one tree (a score step of about 1/n_estimators of a
depth unit, ~1e-3), which is rounding, not drift; anything more is a real conversion fault.

Guarantees: a registered bundle's manifest records ``training.onnx_parity_max_abs_diff`` and
``training.onnx_parity_boundary_rows``; a bundle is
signed over its final manifest (name and version included) when a key is given; registration is the
registry's atomic rename, so a reader never sees a half-written bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from contracts.manifest import ModelManifest
from models.errors import TrainingError
from models.features import FeatureSpec
from models.registry import Registry
from models.training.trainer import FeatureTable, TrainConfig, TrainedModel, export_model, fit

MAX_PARITY_DIFF = 1e-4
MAX_FLIP_DIFF = 0.02
MAX_FLIP_FRACTION = 0.001
PARITY_ROWS = 5000


@dataclass(frozen=True)
class Candidate:
    """A fitted, exported, parity-checked model that has no version yet."""

    onnx_bytes: bytes
    manifest: ModelManifest  # version 1 as a placeholder: `publish` gives it the registry's next
    parity: float

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Scores of feature rows through onnxruntime (the edge path)."""
        return onnx_scores(self.onnx_bytes, self.manifest, x)


def onnx_scores(onnx_bytes: bytes, manifest: ModelManifest, x: np.ndarray) -> np.ndarray:
    from models.bundle import Bundle
    from models.scorer import OnnxScorer

    spec = FeatureSpec.from_dict(manifest.feature_spec)
    scorer = OnnxScorer(Bundle(path=Path("."), manifest=manifest, spec=spec, model_bytes=onnx_bytes))
    return scorer.score(np.ascontiguousarray(x, dtype=np.float32))


def parity(onnx_bytes: bytes, manifest: ModelManifest, model: TrainedModel, x: np.ndarray) -> np.ndarray:
    """|ONNX - reference| score per row (scikit-learn plus the range guard: `TrainedModel.scores`) over
    (up to PARITY_ROWS of) the feature rows `x`, spread over `x`."""
    pick = np.linspace(0, len(x) - 1, min(len(x), PARITY_ROWS)).astype(np.int64) if len(x) else np.arange(0)
    rows = np.ascontiguousarray(x[pick], dtype=np.float32)
    diffs: np.ndarray = np.abs(onnx_scores(onnx_bytes, manifest, rows) - model.scores(rows))
    return diffs


def candidate_from(model: TrainedModel, x: np.ndarray, *, name: str, form: str = "fused") -> Candidate:
    """Export a fitted model and check ONNX against scikit-learn on feature rows `x`."""
    onnx_bytes, manifest = export_model(model, name=name, version=1, form=form)
    diffs = parity(onnx_bytes, manifest, model, x)
    diff = float(diffs.max()) if len(diffs) else 0.0
    boundary = int((diffs > MAX_PARITY_DIFF).sum())
    if not np.isfinite(diffs).all() or boundary > MAX_FLIP_FRACTION * len(diffs) or diff > MAX_FLIP_DIFF:
        raise TrainingError(f"ONNX and scikit-learn scores differ by up to {diff:.2e} on {boundary} of {len(diffs)} "
                            f"rows (limits: {MAX_PARITY_DIFF:g} on all but {MAX_FLIP_FRACTION:.1%} of rows, "
                            f"{MAX_FLIP_DIFF:g} on those); not stored")
    training = {**manifest.training, "onnx_parity_max_abs_diff": diff, "onnx_parity_boundary_rows": boundary}
    return Candidate(onnx_bytes, replace(manifest, training=training), diff)


def make_candidate(table: FeatureTable, spec: FeatureSpec, config: TrainConfig, **fit_args: Any) -> Candidate:
    """fit -> export -> parity, from precomputed features (`fit_args` go to `trainer.fit`)."""
    model = fit(table, spec, config, **fit_args)
    return candidate_from(model, table.x, name=config.name, form=config.form)


def publish(candidate: Candidate, registry: Registry, *, sign_key: Path | None = None,
            training: dict[str, Any] | None = None) -> Path:
    """Give the candidate the registry's next version, sign it, store it; returns the bundle directory.

    `training` adds entries to the manifest's training record (e.g. the gate's verdict)."""
    def build(version: int) -> tuple[bytes, ModelManifest]:
        manifest = replace(candidate.manifest, version=version,
                           training={**candidate.manifest.training, **(training or {})})
        if sign_key is not None:
            from models.signing import sign

            manifest = sign(manifest, sign_key)
        return candidate.onnx_bytes, manifest

    return registry.publish(candidate.manifest.name, build)


def build_bundle(table: FeatureTable, spec: FeatureSpec, config: TrainConfig, registry: Registry, *,
                 sign_key: Path | None = None, **fit_args: Any) -> tuple[Path, Candidate]:
    """The whole pipeline in one process: fit -> export -> parity -> sign -> register."""
    cand = make_candidate(table, spec, config, **fit_args)
    return publish(cand, registry, sign_key=sign_key), cand
