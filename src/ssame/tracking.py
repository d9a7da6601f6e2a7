"""MLflow tracking against a local SQLite store (absolute path, no network, telemetry off)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

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
def mlflow_run(params: dict[str, Any], run_name: str, tags: dict[str, str]) -> Iterator[Any]:
    """Open an MLflow run in the params' experiment, logging all params flattened; yields the mlflow module."""
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
    with mlflow.start_run(run_name=run_name, tags=tags):
        mlflow.log_params({k: str(v)[:500] for k, v in _flatten(params).items()})
        yield mlflow
