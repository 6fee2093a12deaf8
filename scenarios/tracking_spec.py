"""The `tracking` section: where a run's metrics go besides orthofed's own store."""

from __future__ import annotations

import importlib.util

from pydantic import Field, model_validator

from scenarios.spec_base import Spec

INSTALL_HINT = "pip install 'orthofed[tracking]'"


class TrackingSpec(Spec):
    """Experiment trackers the ServerApp writes to as rounds land (server.tracking):
    each round's aggregated metrics, every client's own (epsilon) and the failures, the
    accuracy matrix and AA/BWT/FWT of a stream. A tracker that fails is logged and
    turned off; the run goes on."""

    tensorboard: bool = Field(
        False, description="TensorBoard event files in the run's folder (<runs_dir>/<run "
        "id>/tensorboard), through torch.utils.tensorboard: `tensorboard --logdir runs`.")
    mlflow: bool = Field(
        False, description="An MLflow run named by the run id, with the scenario as its "
        "parameters, in mlflow_uri.")
    mlflow_uri: str | None = Field(
        None, min_length=1, description="MLflow tracking URI: a tracking server "
        "(http://host:5000) or a local store (sqlite:///path/mlflow.db); absent: "
        "sqlite:///<runs_dir>/mlflow.db.")
    mlflow_experiment: str | None = Field(
        None, min_length=1, max_length=500,
        description="MLflow experiment the run goes to; absent: the scenario's name.")

    @model_validator(mode="after")
    def _mlflow_settings_need_mlflow(self) -> TrackingSpec:
        for field in ("mlflow_uri", "mlflow_experiment"):
            if getattr(self, field) is not None and not self.mlflow:
                raise ValueError(f"tracking.{field}: only used with tracking.mlflow: true "
                                 f"(got {getattr(self, field)!r} with mlflow off)")
        return self

    @model_validator(mode="after")
    def _libraries_are_installed(self) -> TrackingSpec:
        # Checked here, by the field's name, so a missing package fails at validation
        # and not rounds into a run (the libraries are imported only when a run asks).
        for field, module in (("tensorboard", "tensorboard"), ("mlflow", "mlflow")):
            if getattr(self, field) and importlib.util.find_spec(module) is None:
                raise ValueError(f"tracking.{field}: needs the {module} package, which is not "
                                 f"installed: {INSTALL_HINT}")
        return self
