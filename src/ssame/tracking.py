"""MLflow tracking against a local SQLite store (absolute path, no network, telemetry off)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from ssame.config import as_params

_OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def tracking_uri(db_path: str | Path) -> str:
    """SQLite URI for an absolute path (relative paths resolve against the working directory)."""
    return f"sqlite:///{Path(db_path).resolve()}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@contextmanager
def mlflow_run(params: dict[str, Any], run_name: str, tags: dict[str, str],
               run_id: str | None = None) -> Iterator[Any]:
    """Open an MLflow run in the params' experiment, logging all params flattened; yields the mlflow module.
    With `run_id`, reopen that run instead (a resumed training continues its own metric history)."""
    os.environ.update(_OFFLINE_ENV)
    import mlflow

    db = Path(params["tracking"]["mlflow_db"]).resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(db))
    name = params["tracking"]["experiment"]
    # Parallel jobs share one SQLite file: serialise schema creation and experiment registration.
    with FileLock(db.with_suffix(".lock")):
        if mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=(db.parent / "artifacts").as_uri())
        mlflow.set_experiment(name)
    if run_id is not None:
        with mlflow.start_run(run_id=run_id):
            yield mlflow
        return
    with mlflow.start_run(run_name=run_name, tags=tags):
        mlflow.log_params({k: str(v)[:500] for k, v in _flatten(as_params(params).to_dict()).items()})
        yield mlflow


class StepLogger:
    """Per-step metrics buffered in memory and written to the active run in one batch per `flush`."""

    def __init__(self, mlflow: Any):
        from mlflow.entities import Metric

        self._mlflow, self._metric, self._buffer = mlflow, Metric, []

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._buffer += [self._metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self) -> None:
        if self._buffer:
            run_id, client = self._mlflow.active_run().info.run_id, self._mlflow.MlflowClient()
            for start in range(0, len(self._buffer), 1000):  # MLflow's per-request limit
                client.log_batch(run_id, metrics=self._buffer[start:start + 1000], synchronous=True)
            self._buffer = []
