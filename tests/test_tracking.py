"""The MLflow tree of one invocation (parent + children), job tags and content digests, on a scratch SQLite store."""

from __future__ import annotations

import copy
import os

import pytest

from ssame.config import fingerprint
from ssame.tracking import (
    PARENT_ENV,
    close_parent_run,
    content_digest,
    job_tags,
    mlflow_run,
    open_parent_run,
    resolve_uri,
)


@pytest.fixture
def params(default_params, tmp_path):
    params = copy.deepcopy(default_params.to_dict())
    params["tracking"].update(mlflow_db=str(tmp_path / "mlflow" / "mlflow.db"), experiment="tree")
    return params


def test_jobs_nest_under_the_invocation_and_close_it(params, monkeypatch):
    import mlflow

    monkeypatch.delenv(PARENT_ENV, raising=False)
    parent = open_parent_run(params, "params/default.yaml")
    assert os.environ[PARENT_ENV] == parent
    with mlflow_run(params, "train/ssame/seed0", {"stage": "train"}) as tracked:
        child = tracked.active_run().info.run_id
    close_parent_run(params, "FAILED")
    assert PARENT_ENV not in os.environ
    mlflow.set_tracking_uri(resolve_uri(params))
    assert mlflow.get_run(child).data.tags["mlflow.parentRunId"] == parent
    run = mlflow.get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags["stage"] == "workflow"
    assert run.data.params["train.steps"] == str(params["train"]["steps"])
    with mlflow_run(params, "alone", {"stage": "data"}) as tracked:  # no invocation open: a top-level run
        alone = tracked.active_run().info.run_id
    assert "mlflow.parentRunId" not in mlflow.get_run(alone).data.tags
    close_parent_run(params, "FINISHED")  # nothing open: no-op


def test_job_tags_name_rule_wildcards_params_and_inputs(params, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.bin").write_bytes(b"weights")
    (tmp_path / "manifest.csv").write_text("dataset\nA\n")
    tags = job_tags(params, "train", {"variant": "ssame", "seed": "1"},
                    {"model": tmp_path / "folder", "data_manifest": tmp_path / "manifest.csv"})
    assert tags["stage"] == "train" and tags["variant"] == "ssame" and tags["seed"] == "1"
    assert tags["ssame.wildcards"] == "variant=ssame,seed=1"
    assert tags["ssame.params_digest"] == fingerprint(params)[:16]
    assert tags["mlflow.source.git.commit"]
    before = tags["ssame.input.model"]
    assert before == content_digest(tmp_path / "folder") and len(before) == 16
    (tmp_path / "folder" / ".snakemake_timestamp").touch()  # Snakemake's marker is not content
    assert content_digest(tmp_path / "folder") == before
    (tmp_path / "folder" / "a.bin").write_bytes(b"weightz")  # same size and name, other content
    changed = content_digest(tmp_path / "folder")
    assert changed != before
    (tmp_path / "folder" / "a.bin").rename(tmp_path / "folder" / "b.bin")  # same bytes under another name
    assert content_digest(tmp_path / "folder") != changed
