"""MLFLOW_TRACKING_URI wins over the params' SQLite file: two concurrent jobs log to a real `mlflow server`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ssame.config import load_params
from ssame.tracking import ENV_URI, resolve_uri

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "ssame-server-test"
JOB = """
import sys
from pathlib import Path
from ssame.config import load_params
from ssame.logs import setup
from ssame.tracking import StepLogger, mlflow_run

setup("INFO")
params, job = load_params(sys.argv[1]), sys.argv[2]
with mlflow_run(params, job, {"job": job}) as mlflow:
    steps = StepLogger(mlflow)
    for step in (1, 2, 3):
        steps.log({"loss": 1.0 / step}, step)
    steps.flush()
    note = Path(sys.argv[3]) / f"{job}.txt"
    note.write_text(job)
    mlflow.log_artifact(str(note))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(URL, folder) of an `mlflow server` with a SQLite backend that proxies artifacts to folder/artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    url, log = f"http://127.0.0.1:{_free_port()}", root / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rpartition(":")[2],
           "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_healthy(url, proc, log)
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def params_file(tmp_path) -> Path:
    params = load_params(REPO / "params" / "default.yaml").to_dict()
    params["tracking"].update(mlflow_db=str(tmp_path / "mlflow" / "mlflow.db"), experiment=EXPERIMENT)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_env_uri_wins_and_sqlite_stays_the_default(params_file, monkeypatch):
    params = load_params(params_file)
    monkeypatch.delenv(ENV_URI, raising=False)
    assert resolve_uri(params) == f"sqlite:///{params_file.parent / 'mlflow' / 'mlflow.db'}"
    assert resolve_uri({"tracking": {"mlflow_db": "m/m.db"}}, "/proj") == "sqlite:////proj/m/m.db"
    monkeypatch.setenv(ENV_URI, "http://tracking.example:5000")
    assert resolve_uri(params) == "http://tracking.example:5000"


def test_sqlite_runs_do_not_export_their_uri(params_file, tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second run in the same process (or a subprocess) must
    still use its own params' store, with artifacts next to it, not the first store and ./mlruns."""
    from ssame.tracking import mlflow_run

    monkeypatch.delenv(ENV_URI, raising=False)
    monkeypatch.chdir(tmp_path)
    params = load_params(params_file).to_dict()
    for store in ("a", "b"):
        params["tracking"]["mlflow_db"] = str(tmp_path / store / "mlflow.db")
        with mlflow_run(params, store, {}) as mlflow:
            assert mlflow.get_artifact_uri().startswith((tmp_path / store / "artifacts").as_uri())
        assert ENV_URI not in os.environ
    assert not (tmp_path / "mlruns").exists()


def test_two_concurrent_jobs_log_to_the_server_not_sqlite(server, params_file, tmp_path):
    url, root = server
    env = {**os.environ, ENV_URI: url}
    jobs = [subprocess.Popen([sys.executable, "-c", JOB, str(params_file), f"job{i}", str(tmp_path)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]
        assert f"INFO ssame.tracking: MLflow at {url}" in err

    import mlflow

    client = mlflow.MlflowClient(url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["job0", "job1"]
    for name, run in runs.items():
        assert run.data.tags["job"] == name
        assert run.data.params["tracking.experiment"] == EXPERIMENT
        assert run.data.params["train.steps"] == str(load_params(params_file)["train"]["steps"])
        history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == [f"{name}.txt"]
    assert sorted(p.name for p in (root / "artifacts").rglob("*.txt")) == ["job0.txt", "job1.txt"]
    assert not (params_file.parent / "mlflow").exists(), "no SQLite dir, file or lock next to the params' mlflow_db"


def test_losing_the_experiment_creation_race_is_fine(server, monkeypatch):
    """Another job creates the experiment between our lookup and our create: the server answers 'already exists'."""
    import mlflow

    from ssame.tracking import _ensure_experiment

    url, _ = server
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(url)
    lookup = mlflow.get_experiment_by_name
    name = "ssame-race"

    def other_job_wins(experiment: str):
        monkeypatch.setattr(mlflow, "get_experiment_by_name", lookup)
        mlflow.MlflowClient(url).create_experiment(experiment)
        return None

    monkeypatch.setattr(mlflow, "get_experiment_by_name", other_job_wins)
    try:
        _ensure_experiment(mlflow, name, None)
        assert lookup(name) is not None
        monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda experiment: None)  # never finds it
        with pytest.raises(mlflow.exceptions.MlflowException, match="already exists"):
            _ensure_experiment(mlflow, name, None)
    finally:
        mlflow.set_tracking_uri(previous)
