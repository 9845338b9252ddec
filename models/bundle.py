"""Model bundles: write, load and verify ``model.onnx`` + ``manifest.json``.

`load_bundle` is the only way the agent and the jobs get a model, and it verifies
before returning: manifest schema, sha256 and size of model.onnx, feature-spec hash,
signature (when a trusted key is given), and that onnxruntime loads the graph with the
declared input/output names and feature width. A bundle failing any check raises
BundleError with the reason and is never returned.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import ContractError
from contracts.manifest import MANIFEST_FILE, MODEL_FILE, ModelManifest
from contracts.telemetry import ModelLineage
from models.errors import BundleError, FeatureError
from models.features import FeatureSpec


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its manifest, feature spec and the model bytes that were checked."""

    path: Path
    manifest: ModelManifest
    spec: FeatureSpec
    model_bytes: bytes

    @property
    def lineage(self) -> ModelLineage:
        m = self.manifest
        return ModelLineage(name=m.name, version=m.version, sha256=m.sha256, feature_hash=m.feature_hash,
                            threshold=float(m.threshold))

    @property
    def label(self) -> str:
        return f"{self.manifest.name} v{self.manifest.version} ({self.manifest.sha256[:12]})"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_bundle(path: Path, model_bytes: bytes, manifest: ModelManifest) -> Path:
    """Write a bundle directory durably (files fsynced). Refuses to overwrite a bundle."""
    if (path / MANIFEST_FILE).exists():
        raise BundleError(path, "a bundle already exists here; bundles are immutable")
    if manifest.sha256 != sha256_bytes(model_bytes):
        raise BundleError(path, "manifest sha256 does not match the model bytes")
    path.mkdir(parents=True, exist_ok=True)
    _fsync_write(path / MODEL_FILE, model_bytes)
    _fsync_write(path / MANIFEST_FILE, manifest.to_json().encode())
    return path


def load_bundle(path: Path | str, *, trusted_key: Path | None = None, check_session: bool = True) -> Bundle:
    """Load and verify a bundle; raise BundleError naming the first failed check."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(path, "not a bundle directory (expected model.onnx + manifest.json)")
    try:
        manifest = ModelManifest.from_json((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise BundleError(path, f"{MANIFEST_FILE} missing") from None
    except (ContractError, UnicodeDecodeError) as exc:
        raise BundleError(path, f"invalid manifest: {exc}") from None
    try:
        model_bytes = (path / MODEL_FILE).read_bytes()
    except FileNotFoundError:
        raise BundleError(path, f"{MODEL_FILE} missing") from None
    if len(model_bytes) != manifest.model_bytes:
        raise BundleError(path, f"{MODEL_FILE} is {len(model_bytes)} bytes, manifest says {manifest.model_bytes}")
    digest = sha256_bytes(model_bytes)
    if digest != manifest.sha256:
        raise BundleError(path, f"{MODEL_FILE} sha256 {digest[:12]}… does not match manifest {manifest.sha256[:12]}…")
    try:
        spec = FeatureSpec.from_dict(manifest.feature_spec)
    except FeatureError as exc:
        raise BundleError(path, f"feature spec: {exc}") from None
    if spec.hash != manifest.feature_hash:
        raise BundleError(path, "feature spec hash does not match manifest feature_hash")
    if trusted_key is not None:
        from models.signing import check_signature

        reason = check_signature(manifest, trusted_key)
        if reason:
            raise BundleError(path, reason)
    bundle = Bundle(path=path, manifest=manifest, spec=spec, model_bytes=model_bytes)
    if check_session:
        from models.scorer import OnnxScorer

        OnnxScorer(bundle)  # raises BundleError if the graph does not load or mismatches
    return bundle
