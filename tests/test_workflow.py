"""End to end: the Snakemake workflow on a shrunken default profile in a scratch project directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ssame.tracking import resolve_uri

pytestmark = pytest.mark.e2e
SCORES = ["overall", "classification", "vqa", "retrieval", "grounding", "ind", "ood"]
VARIANTS = ["baseline", "ssame", "ssame-no-attn", "ssame-no-regen", "ssame-no-subject"]


def _small(params: dict) -> dict:
    params["data"]["mini"].update(train_rows_per_dataset=24, eval_queries_per_dataset=12)
    params["data"]["tokenizer"]["vocab_size"] = 320
    assert params["train"]["variants"] == VARIANTS
    params["train"].update(seeds=[0], steps=12, batch_size=8, warmup_steps=2)
    params["saliency"]["quality"]["samples_per_dataset"] = 6
    params["pretrain"].update(steps=4, scenes=8, batch_size=8, warmup_steps=1, probe_scenes=2)
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory, repo) -> Path:
    root = tmp_path_factory.mktemp("project")
    for item in ["Snakefile", "dvc.yaml"]:
        shutil.copy(repo / item, root / item)
    shutil.copytree(repo / "workflow", root / "workflow")
    (root / "profiles").symlink_to("workflow/profiles")  # as in the repository: Snakemake loads profiles/default
    shutil.copytree(repo / "params" / "accelerate", root / "params" / "accelerate")
    shutil.copytree(repo / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (root / "src").symlink_to(repo / "src")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    params = _small(yaml.safe_load((repo / "params" / "default.yaml").read_text()))
    (root / "params" / "default.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def _run(project: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def _snakemake(project: Path, *args: str) -> str:
    return _run(project, sys.executable, "-m", "snakemake", "--cores", "2", *args)


def _scores(project: Path) -> dict:
    return {p.relative_to(project / "results" / "eval").as_posix(): json.loads(p.read_text())
            for p in sorted((project / "results" / "eval").glob("*/seed*/aggregate.json"))}


@pytest.fixture(scope="module")
def first_run(project) -> dict:
    _snakemake(project)
    return _scores(project)


def test_tables_exist_with_scores_in_range(project, first_run):
    main = pd.read_csv(project / "reports" / "tables" / "main.csv")
    assert list(main.columns) == ["method", *SCORES]
    assert sorted(main["method"]) == sorted(VARIANTS)
    assert main[SCORES].notna().all().all()
    assert ((main[SCORES] >= 0) & (main[SCORES] <= 100)).all().all()
    for name in ["ablation.csv", "ablation.md", "main.md", "per_dataset.csv", "saliency_quality.md"]:
        assert (project / "reports" / "tables" / name).stat().st_size > 0
    quality = pd.read_csv(project / "reports" / "tables" / "saliency_quality.csv").set_index("method")
    assert quality.loc["fusion", "auc"] > quality.loc["center_bias", "auc"]
    for name in ["metatask_bars.png", "saliency_overlays.png", "saliency_fusion.png", "saliency_uniform.png"]:
        assert (project / "reports" / "figures" / name).stat().st_size > 0


def test_finished_run_has_nothing_to_do(project, first_run):
    assert "Nothing to be done" in _snakemake(project, "-n")


def test_mlflow_runs_logged(project, first_run):
    import mlflow

    mlflow.set_tracking_uri(resolve_uri(yaml.safe_load((project / "params" / "default.yaml").read_text()), project))
    runs = mlflow.search_runs(experiment_names=["ssame-default"])
    assert sorted(runs["tags.mlflow.runName"]) == sorted(
        ["pretrain", *(f"{stage}/{variant}/seed0" for stage in ["train", "evaluate"] for variant in VARIANTS)])
    assert runs["metrics.overall"].dropna().between(0, 1).all()
    for run_id in runs["run_id"]:
        assert mlflow.artifacts.list_artifacts(run_id=run_id), f"run {run_id} logged no artifact"
    assert str(project) in runs["artifact_uri"].iloc[0]  # artifacts stay inside the project


def test_dvc_sees_snakemake_outputs_as_up_to_date(project, first_run):
    _run(project, sys.executable, "-m", "dvc", "commit", "-f", "-q")
    out = _run(project, sys.executable, "-m", "dvc", "repro", "--dry")
    assert "Running stage" not in out


def test_killed_mid_run_then_resumed_is_bit_identical(project, first_run):
    """From scratch: SIGKILL the whole snakemake process group while jobs run, unlock, rerun; same tables."""
    first_tables = {p.name: p.read_bytes() for p in (project / "reports" / "tables").glob("*.csv")}
    shutil.rmtree(project / "results")
    shutil.rmtree(project / "reports")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=project, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list((project / "results" / "train").glob("*/seed0/metrics.json")):  # some trained, others running
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert not (project / "reports" / "tables" / "main.csv").exists()
    _snakemake(project, "--unlock")  # SIGKILL leaves Snakemake's lock behind
    assert "workflow specific profile profiles/default" in _snakemake(project, "-n")  # so rerun-incomplete applies
    _snakemake(project)
    assert _scores(project) == first_run
    assert {p.name: p.read_bytes() for p in (project / "reports" / "tables").glob("*.csv")} == first_tables


def test_snakemake_report_with_captions(project, first_run):
    _snakemake(project, "--report", "report.html")
    html = (project / "report.html").read_text(errors="replace")
    assert "unweighted mean over datasets" in html
