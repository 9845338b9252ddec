"""MLflow for the retraining job: one run per candidate, a registered version with alias for the winner.

Locally the tracking and registry store is SQLite under the job's output directory (artifacts beside it
in ``mlartifacts/``); on Databricks pass ``--mlflow-tracking-uri databricks`` and ``--mlflow-registry-uri
databricks-uc`` with a ``<catalog>.<schema>.`` model-name prefix, as Unity Catalog expects. Each run
records the parameters, the data range, every gate figure, the verdict and its reasons, the bundle
(``bundle/``) and the model in MLflow's ``onnx`` flavor (``model``). A promoted candidate becomes a
registered model version carrying the alias ``champion`` (Unity Catalog has no stages) and the tag
``edgeflag_version`` = its version in the file registry the agents fetch from.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from cloud_jobs.config import RetrainConfig

CHAMPION_ALIAS = "champion"


def _flat(prefix: str, obj: Any, out: dict[str, float]) -> dict[str, float]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, int | float):  # bool is an int
        out[prefix] = float(obj)
    return out


class Tracker:
    """The job's MLflow session (tracking store, experiment)."""

    def __init__(self, config: RetrainConfig) -> None:
        import mlflow

        self.config = config
        self.mlflow = mlflow
        mlflow.set_tracking_uri(config.tracking_uri)
        mlflow.set_registry_uri(config.mlflow_registry_uri or config.tracking_uri)
        exp = mlflow.get_experiment_by_name(config.experiment)
        if exp is None:
            artifacts = None
            if config.tracking_uri.startswith("sqlite:"):
                artifacts = (Path(config.out).resolve() / "mlartifacts").as_uri()
            exp_id = mlflow.create_experiment(config.experiment, artifact_location=artifacts)
        else:
            exp_id = exp.experiment_id
        self.experiment_id = exp_id

    def model_name(self, device_type: str) -> str:
        return f"{self.config.model_name_prefix}{device_type}"

    def log_candidate(self, device_type: str, *, params: dict[str, Any], figures: dict[str, Any],
                      verdict: dict[str, Any], onnx_bytes: bytes | None,
                      manifest: dict[str, Any] | None) -> tuple[str, str | None]:
        """One run for one candidate; returns the run id and the model's URI (None without a model)."""
        mlflow = self.mlflow
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=f"{device_type}") as run:
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            mlflow.log_metrics(_flat("", figures, {}))
            mlflow.set_tags({"device_type": device_type, "verdict": "passed" if verdict["passed"] else "refused",
                             "reasons": "; ".join(verdict["reasons"])[:5000] or "-"})
            mlflow.log_dict({"figures": figures, "verdict": verdict}, "gate.json")
            uri = None
            if onnx_bytes is not None and manifest is not None:
                from contracts.manifest import ModelManifest
                from models.bundle import write_bundle

                with tempfile.TemporaryDirectory() as tmp:
                    write_bundle(Path(tmp), onnx_bytes, ModelManifest.from_dict(manifest))
                    mlflow.log_artifacts(tmp, "bundle")
                uri = f"runs:/{run.info.run_id}/bundle"
                try:
                    import mlflow.onnx
                    import onnx

                    info = mlflow.onnx.log_model(onnx.load_from_string(onnx_bytes), name="model",
                                                 pip_requirements=["onnxruntime"])
                    uri = info.model_uri
                except ImportError:  # no onnx package where this runs: the bundle artifact still holds it
                    pass
            return str(run.info.run_id), uri

    def promote(self, device_type: str, model_uri: str, registry_version: int) -> int:
        """Register the run's model as a new version of `<prefix><type>` and point `champion` at it."""
        client = self.mlflow.MlflowClient()
        name = self.model_name(device_type)
        mv = self.mlflow.register_model(model_uri, name,
                                        tags={"edgeflag_version": str(registry_version)})
        client.set_registered_model_alias(name, CHAMPION_ALIAS, mv.version)
        return int(mv.version)

    def restore_champion(self, device_type: str, registry_version: int) -> None:
        """Point `champion` back at the MLflow version of file-registry version `registry_version`
        (or remove the alias when that version was never registered in MLflow)."""
        client = self.mlflow.MlflowClient()
        name = self.model_name(device_type)
        for mv in client.search_model_versions(f"name='{name}'"):
            if mv.tags.get("edgeflag_version") == str(registry_version):
                client.set_registered_model_alias(name, CHAMPION_ALIAS, mv.version)
                return
        client.delete_registered_model_alias(name, CHAMPION_ALIAS)

    def tag_run(self, run_id: str, tags: dict[str, str]) -> None:
        client = self.mlflow.MlflowClient()
        for k, v in tags.items():
            client.set_tag(run_id, k, v[:5000])
