"""MLflow tracking: a tracking server from MLFLOW_TRACKING_URI when set, else a local SQLite store (absolute path,
no network, telemetry off). A SQLite file on a shared filesystem is unsafe for many writers: on a cluster, point
MLFLOW_TRACKING_URI at an `mlflow server` (with `--serve-artifacts`, it stores the artifacts too)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from filelock import FileLock

from ssame.config import as_params

ENV_URI = "MLFLOW_TRACKING_URI"
_OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def tracking_uri(db_path: str | Path) -> str:
    """SQLite URI for an absolute path (relative paths resolve against the working directory)."""
    return f"sqlite:///{Path(db_path).resolve()}"


def resolve_uri(params: dict[str, Any], root: str | Path = ".") -> str:
    """The tracking URI every reader and writer uses: MLFLOW_TRACKING_URI from the environment as is, else the
    params' `tracking.mlflow_db` SQLite file (a relative path resolves against `root`)."""
    return os.environ.get(ENV_URI) or tracking_uri(Path(root) / params["tracking"]["mlflow_db"])


def _redacted(uri: str) -> str:
    """`uri` without a password (a server URI may carry user:password@)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _ensure_experiment(mlflow: Any, name: str, artifact_location: str | None) -> None:
    """Create experiment `name` unless it exists; losing the race to another job that created it is fine."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    if mlflow.get_experiment_by_name(name) is not None:
        return
    try:
        mlflow.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS) or mlflow.get_experiment_by_name(name) is None:
            raise


def _set_uri(mlflow: Any, uri: str) -> None:
    """Point mlflow at `uri` without exporting it: mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which
    would then win over the params of this process's next run and of every subprocess it starts."""
    before = os.environ.get(ENV_URI)
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop(ENV_URI, None)
    else:
        os.environ[ENV_URI] = before


@contextmanager
def mlflow_run(params: dict[str, Any], run_name: str, tags: dict[str, str],
               run_id: str | None = None) -> Iterator[Any]:
    """Open an MLflow run in the params' experiment, logging all params flattened; yields the mlflow module.
    With `run_id`, reopen that run instead (a resumed training continues its own metric history)."""
    os.environ.update(_OFFLINE_ENV)
    import mlflow

    uri, name = resolve_uri(params), params["tracking"]["experiment"]
    print(f"ssame tracking: MLflow at {_redacted(uri)}", file=sys.stderr, flush=True)
    _set_uri(mlflow, uri)
    if os.environ.get(ENV_URI):  # a server: it serialises writers and decides where artifacts go
        _ensure_experiment(mlflow, name, None)
        mlflow.set_experiment(name)
    else:
        db = Path(params["tracking"]["mlflow_db"]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        # Parallel jobs share one SQLite file: serialise schema creation and experiment registration.
        with FileLock(db.with_suffix(".lock")):
            _ensure_experiment(mlflow, name, (db.parent / "artifacts").as_uri())
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
