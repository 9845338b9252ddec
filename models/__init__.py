"""The one definition of features, model bundles and scoring, shared by edge and cloud.

Runtime modules (features, bundle, scorer, registry, signing) import only numpy,
onnxruntime and (for signatures) cryptography. Training lives in models.training and
needs the `train` extra.
"""

from models.bundle import Bundle, load_bundle, write_bundle
from models.errors import BundleError, FeatureError, ModelError, ScoringError, TrainingError
from models.features import FeatureSpec, StreamingFeatures, compute_features
from models.scorer import OnnxScorer

__all__ = [
    "Bundle",
    "BundleError",
    "FeatureError",
    "FeatureSpec",
    "ModelError",
    "OnnxScorer",
    "ScoringError",
    "StreamingFeatures",
    "TrainingError",
    "compute_features",
    "load_bundle",
    "write_bundle",
]
