"""MLflow: one MLflow run per orthofed run, through MlflowClient.

The orthofed run id is the MLflow run's name and its `orthofed.run_id` tag; a resumed
run finds its MLflow run by that tag and goes on logging into it. The scenario is
logged flattened as parameters ("federation.rounds" = "3").
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

RUN_ID_TAG = "orthofed.run_id"
# An unreachable tracking server must not hold a round for minutes: MLflow retries a
# failed request 7 times with backoff by default. A user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PARAM_VALUE_MAX = 6000  # MLflow's limit on a parameter value
PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
# MLflow's terminal statuses for orthofed's
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


def metric_key(name: str) -> str:
    """`name` with what MLflow refuses in a key (anything but word characters, - . / :
    and space) replaced by _: a task named "amazon (v2)" must not turn the tracker off."""
    return re.sub(r"[^\w\-./ :]", "_", name)


def flat_params(document: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a.b": "value"} for every leaf of a nested scenario document; lists as JSON."""
    params: dict[str, str] = {}
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            params[name] = text[:PARAM_VALUE_MAX]
    return params


class MlflowTracker:
    """An MLflow run in `tracking_uri` under `experiment`, named `run_id`."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str, run_id: str,
                 scenario: dict[str, Any]) -> None:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient  # only when a run asks for it
        from mlflow.entities import Metric, Param

        self.metric = Metric
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None
                         else self.client.create_experiment(experiment))
        earlier = self.client.search_runs([experiment_id],
                                          filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'")
        if earlier:  # a resumed run
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(experiment_id, run_name=run_id,
                                             tags={RUN_ID_TAG: run_id}).info.run_id
        params = [Param(k, v) for k, v in flat_params(scenario).items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_BATCH])

    def scalars(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            self.metric(metric_key(key), float(value), now, step)
            for key, value in values.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "KILLED"))
