"""The model-bundle manifest contract (manifest.json beside model.onnx).

A bundle is a directory holding ``model.onnx`` and ``manifest.json``. The manifest
says what the model is, how to build its input (the feature spec and its hash),
how to read its output (threshold, score semantics) and how to check it (sha256 of
model.onnx, optional Ed25519 signature over the canonical manifest).
Verification lives in models.bundle; this module only defines and validates shape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from contracts.errors import ContractError

MANIFEST_SCHEMA = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024
FORMS = ("fused-tree-ensemble", "skl2onnx")


@dataclass(frozen=True)
class ModelManifest:
    """Everything needed to load, verify and interpret a model.onnx.

    Attributes:
        name: model family, usually the device type ("pump").
        version: positive int, increasing within a registry.
        created: ISO-8601 UTC creation time.
        form: how the ONNX graph was written, one of FORMS.
        sha256: hex digest of model.onnx.
        model_bytes: size of model.onnx.
        opsets: ONNX domain -> opset version the graph uses.
        input_name / output_name: graph input (float32 [N, n_features]) and
            output (float32 [N] anomaly score, higher = more anomalous).
        feature_spec: models.features.FeatureSpec.to_dict().
        feature_hash: sha256 of the canonical feature spec JSON.
        threshold: a reading is flagged when score >= threshold.
        training: a summary of the training data and estimator.
        signature: {} or {"alg": "ed25519", "key_id": ..., "value": base64}.
    """

    name: str
    version: int
    created: str
    form: str
    sha256: str
    model_bytes: int
    opsets: Mapping[str, int]
    input_name: str
    output_name: str
    feature_spec: Mapping[str, Any]
    feature_hash: str
    threshold: float
    training: Mapping[str, Any] = field(default_factory=dict)
    signature: Mapping[str, str] = field(default_factory=dict)
    v: int = MANIFEST_SCHEMA

    def __post_init__(self) -> None:
        if self.v != MANIFEST_SCHEMA:
            raise ContractError("v", f"unsupported manifest schema {self.v!r} (this build reads {MANIFEST_SCHEMA})")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ContractError("name", f"must be non-empty [A-Za-z0-9-_.], got {self.name!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ContractError("version", f"must be a positive integer, got {self.version!r}")
        if self.form not in FORMS:
            raise ContractError("form", f"must be one of {', '.join(FORMS)}, got {self.form!r}")
        if len(self.sha256) != 64:
            raise ContractError("sha256", "must be a 64-character hex digest")
        if not isinstance(self.threshold, (int, float)) or self.threshold != self.threshold:
            raise ContractError("threshold", f"must be a number, got {self.threshold!r}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["opsets"] = dict(self.opsets)
        return out

    def canonical_bytes(self) -> bytes:
        """The bytes a signature covers: the manifest without its signature, canonical JSON."""
        body = self.to_dict()
        body.pop("signature", None)
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def with_signature(self, signature: Mapping[str, str]) -> ModelManifest:
        return replace(self, signature=dict(signature))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ModelManifest:
        if not isinstance(obj, Mapping):
            raise ContractError("", "manifest must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(obj) - known
        if unknown:
            raise ContractError(sorted(unknown)[0], "unknown manifest field")
        required = {"name", "version", "created", "form", "sha256", "model_bytes", "opsets", "input_name",
                    "output_name", "feature_spec", "feature_hash", "threshold"}
        missing = required - set(obj)
        if missing:
            raise ContractError(sorted(missing)[0], "missing from manifest")
        try:
            return cls(**dict(obj))
        except TypeError as exc:
            raise ContractError("", f"bad manifest: {exc}") from exc

    @classmethod
    def from_json(cls, text: str) -> ModelManifest:
        """Parse manifest.json (at most 1 MB, nested at most 32 levels); ContractError on anything else."""
        from contracts.jsonsafe import loads

        try:
            obj = loads(text, what="manifest", max_bytes=MAX_MANIFEST_BYTES)
        except ContractError as exc:
            raise ContractError("", f"manifest is not valid: {exc.reason}") from None
        return cls.from_dict(obj)
