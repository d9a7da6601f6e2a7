"""MLflow tracking: a tracking server from MLFLOW_TRACKING_URI when set, else a local SQLite store (absolute path,
no network, telemetry off). A SQLite file on a shared filesystem is unsafe for many writers: on a cluster, point
MLFLOW_TRACKING_URI at an `mlflow server` (with `--serve-artifacts`, it stores the artifacts too)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from filelock import FileLock

from ssame.config import as_params, fingerprint

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
MODEL_DIGEST_TAG = "ssame.output.model"  # content digest of a train run's model folder; evaluate runs link by it
DVC_ROOT_ENV = "DVC_ROOT"  # set by DVC for the commands of its stages
DVC_EXP_ENV = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}  # -> run tags
PARENT_ENV = "SSAME_MLFLOW_PARENT_RUN_ID"  # set by the Snakefile's onstart: jobs' runs become its children
_OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def tracking_uri(db_path: str | Path) -> str:
    """SQLite URI for an absolute path (relative paths resolve against the working directory)."""
    return f"sqlite:///{Path(db_path).resolve()}"


def store_path(params: dict[str, Any], root: str | Path | None = None) -> Path:
    """The params' `tracking.mlflow_db` SQLite file. A relative path resolves against `root`, by default the
    project: DVC's repository root while DVC runs the job ($DVC_ROOT, the original repository even when
    `dvc exp run --temp` or a queued experiment runs it in a scratch copy, which would lose its runs), else the
    working directory."""
    if root is None:
        root = os.environ.get(DVC_ROOT_ENV, ".")
    return (Path(root) / params["tracking"]["mlflow_db"]).resolve()


def resolve_uri(params: dict[str, Any], root: str | Path | None = None) -> str:
    """The tracking URI every reader and writer uses: MLFLOW_TRACKING_URI from the environment as is, else the
    params' SQLite file (`store_path`)."""
    return os.environ.get(ENV_URI) or tracking_uri(store_path(params, root))


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


def _connect(params: dict[str, Any]) -> Any:
    """The mlflow module pointed at the params' store, with the params' experiment created and set."""
    os.environ.update(_OFFLINE_ENV)
    import mlflow

    uri, name = resolve_uri(params), params["tracking"]["experiment"]
    log.info("MLflow at %s", _redacted(uri))
    _set_uri(mlflow, uri)
    if os.environ.get(ENV_URI):  # a server: it serialises writers and decides where artifacts go
        _ensure_experiment(mlflow, name, None)
        mlflow.set_experiment(name)
    else:
        db = store_path(params)
        db.parent.mkdir(parents=True, exist_ok=True)
        # Parallel jobs share one SQLite file: serialise schema creation and experiment registration.
        with FileLock(db.with_suffix(".lock")):
            _ensure_experiment(mlflow, name, (db.parent / "artifacts").as_uri())
            mlflow.set_experiment(name)
    return mlflow


def _flat_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:500] for k, v in _flatten(as_params(params).to_dict()).items()}


def git_commit(root: str | Path = ".") -> str:
    """HEAD's commit of the repository at `root`, with "-dirty" when tracked files differ; "unknown" outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def content_digest(path: Path) -> str:
    """sha256 (16 hex digits) of a file's bytes, or of a folder's file names and bytes in sorted order, hidden
    files left out (Snakemake marks a finished folder output with `.snakemake_timestamp`)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for file in sorted(files):
        digest.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def job_tags(params: dict[str, Any], rule: str, wildcards: dict[str, str] | None = None,
             inputs: dict[str, Path] | None = None) -> dict[str, str]:
    """Tags of one job's run: `stage` (the Snakemake rule) and its wildcards (also as `ssame.wildcards`), the git
    commit, the params digest and `ssame.input.<name>`, the content digest of each input file or folder; under
    `dvc exp run`, the experiment's name and baseline commit."""
    wildcards = wildcards or {}
    return {"stage": rule, **wildcards, "ssame.wildcards": ",".join(f"{k}={v}" for k, v in wildcards.items()),
            "mlflow.source.git.commit": git_commit(), "ssame.params_digest": fingerprint(params)[:16],
            **{f"ssame.input.{name}": content_digest(path) for name, path in (inputs or {}).items()},
            **{tag: os.environ[env] for env, tag in DVC_EXP_ENV.items() if os.environ.get(env)}}


def log_datasets(mlflow: Any, files: dict[str, Path], context: str) -> None:
    """Log each named dataset file as an input of the active run (MLflow's dataset tracking): the file as the
    source, its content digest as the digest, `context` "train" or "eval"."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    for name, path in files.items():
        with warnings.catch_warnings():  # MLflow registers its local-file source twice (schemes "" and "file")
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            source = resolve_dataset_source(Path(path).resolve().as_uri())
        mlflow.log_input(MetaDataset(source, name=name, digest=content_digest(Path(path))), context=context)


def open_parent_run(params: dict[str, Any], params_file: str) -> str:
    """Open the run of one `snakemake` invocation (RUNNING until `close_parent_run`) and export its id, so that
    every job this process starts logs its run as a child (`mlflow_run`). Returns the run id."""
    mlflow = _connect(params)
    from mlflow.entities import Param

    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(params["tracking"]["experiment"])
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    run = client.create_run(experiment.experiment_id, run_name=f"snakemake {started}", tags={
        "stage": "workflow", "ssame.params_file": params_file, "mlflow.source.git.commit": git_commit(),
        "ssame.params_digest": fingerprint(params)[:16]})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _flat_params(params).items()],
                     synchronous=True)
    os.environ[PARENT_ENV] = run.info.run_id
    return run.info.run_id


def close_parent_run(params: dict[str, Any], status: str) -> None:
    """End the invocation's run opened by `open_parent_run` as FINISHED or FAILED (no-op when none is open)."""
    run_id = os.environ.pop(PARENT_ENV, None)
    if run_id:
        _connect(params).MlflowClient().set_terminated(run_id, status)


@contextmanager
def mlflow_run(params: dict[str, Any], run_name: str, tags: dict[str, str], run_id: str | None = None,
               system_metrics: bool = False) -> Iterator[Any]:
    """Open an MLflow run in the params' experiment, logging all params flattened; yields the mlflow module.
    The run is a child of the `snakemake` invocation's run when one is open (PARENT_ENV). With `run_id`, reopen
    that run instead (a resumed training continues its own metric history). `system_metrics`: sample CPU, memory
    and GPU use in the background while the run is open (MLflow's system metrics)."""
    mlflow = _connect(params)
    if run_id is not None:
        with mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics):
            yield mlflow
        return
    parent = os.environ.get(PARENT_ENV)
    with mlflow.start_run(run_name=run_name, tags=tags, parent_run_id=parent, log_system_metrics=system_metrics):
        mlflow.log_params(_flat_params(params))
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
