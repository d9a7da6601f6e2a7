"""The rehearsal profile is the paper profile in miniature: same switches, other sizes, model ids and data location.

The static checks run everywhere; the end-to-end run (`snakemake --config params=params/rehearsal.yaml` in a scratch
project) is marked e2e.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from ssame.config import all_variants, load_params, variant_labels
from ssame.tracking import resolve_uri

# What the rehearsal may change: sizes, model ids (with their revisions) and where data and outputs live.
SIZES = [
    "data.hub.max_train_rows_per_dataset", "model.image_*", "saliency.map_size", "saliency.subjects.batch_size",
    "saliency.subjects.max_new_tokens", "saliency.quality.samples_per_dataset", "train.steps", "train.batch_size",
    "train.grad_cache_chunk_size", "train.warmup_steps", "train.checkpoint_every", "train.max_text_tokens",
    "train.num_workers", "evaluate.batch_size", "evaluate.bootstrap.samples",
    "evaluate.max_text_tokens", "resources.*.threads", "resources.*.mem_mb", "resources.*.runtime",
    "resources.*.gpu", "resources.*.nodes",  # a CPU rehearsal asks for no GPU
]
MODEL_IDS = ["model.backbone", "model.revision", "saliency.subjects.model", "saliency.subjects.revision",
             "saliency.expert_args.*.model", "saliency.expert_args.*.revision", "mine.judge.model",
             "mine.judge.revision"]  # SAM's: *.sam.model, *.sam.revision
LOCATIONS = ["results_dir", "reports_dir", "mirror", "mirror.*", "data.hub.local_dir", "tracking.*",
             "train.accelerate_config"]
ALLOWED = SIZES + MODEL_IDS + LOCATIONS


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _differences(paper: dict, rehearsal: dict) -> dict[str, tuple[Any, Any]]:
    a, b = _flatten(paper), _flatten(rehearsal)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _disallowed(diffs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in diffs.items() if not any(fnmatch.fnmatchcase(k, pat) for pat in ALLOWED)}


@pytest.fixture(scope="module")
def profiles(repo) -> tuple[dict, dict]:
    return (load_params(repo / "params" / "paper.yaml").to_dict(),
            load_params(repo / "params" / "rehearsal.yaml").to_dict())


def test_rehearsal_differs_from_paper_only_in_sizes_ids_and_location(profiles):
    paper, rehearsal = profiles
    assert paper["mirror"] is None and rehearsal["mirror"] is not None
    assert not _disallowed(_differences(paper, rehearsal)), "the rehearsal must keep every switch of the paper"


def test_the_drift_check_catches_a_changed_switch(profiles):
    paper, rehearsal = profiles
    for key, value in [("temperature", 0.05), ("hard_negatives", False)]:
        changed = json.loads(json.dumps(rehearsal))
        changed["train"][key] = value
        assert f"train.{key}" in _disallowed(_differences(paper, changed))
    changed = json.loads(json.dumps(rehearsal))
    changed["saliency"]["relevance"] = ["owlv2"]
    assert "saliency.relevance" in _disallowed(_differences(paper, changed))


def test_rehearsal_models_and_data_come_from_its_mirror(profiles):
    _, rehearsal = profiles
    root = rehearsal["mirror"]["dir"]
    assert rehearsal["data"]["hub"]["local_dir"] == f"{root}/hub"
    assert rehearsal["model"]["backbone"].startswith(f"{root}/models/")
    assert rehearsal["saliency"]["subjects"]["model"].startswith(f"{root}/models/")
    for name in rehearsal["saliency"]["relevance"]:
        assert rehearsal["saliency"]["expert_args"][name]["model"].startswith(f"{root}/models/")


def test_accelerate_configs_differ_only_in_process_count(repo, profiles):
    """The rehearsal launches the paper's DDP config with 2 processes (gloo on CPU, NCCL on GPUs)."""
    paper, rehearsal = (yaml.safe_load((repo / p["train"]["accelerate_config"]).read_text()) for p in profiles)
    assert paper["num_processes"] > rehearsal["num_processes"] == 2
    assert {k: v for k, v in paper.items() if k != "num_processes"} == \
        {k: v for k, v in rehearsal.items() if k != "num_processes"}


# ---- end to end: the rehearsal profile through Snakemake ------------------------------------------------------------

@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, repo) -> Path:
    """A scratch project that has run `snakemake --cores 2 all seed_systems --config params=params/rehearsal.yaml`
    once: every variant, the seed systems too."""
    root = tmp_path_factory.mktemp("rehearsal")
    shutil.copy(repo / "Snakefile", root / "Snakefile")
    shutil.copytree(repo / "workflow", root / "workflow")
    (root / "profiles").symlink_to("workflow/profiles")
    shutil.copytree(repo / "params", root / "params")
    (root / "src").symlink_to(repo / "src")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "all", "seed_systems", "--config",
                           "params=params/rehearsal.yaml"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, f"rehearsal failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return root


@pytest.mark.e2e
def test_rehearsal_runs_end_to_end(rehearsal):
    params = load_params(rehearsal / "params" / "rehearsal.yaml")
    main = pd.read_csv(rehearsal / params["reports_dir"] / "tables" / "main.csv")
    assert sorted(main["method"]) == sorted(params["train"]["variants"])
    both = pd.read_csv(rehearsal / params["reports_dir"] / "seed_systems" / "tables" / "main.csv")
    labels = variant_labels(params)
    assert sorted(both["method"]) == sorted(labels[v] for v in all_variants(params))
    assert params["train"]["seed_systems"]
    results = rehearsal / params["results_dir"]
    aggregate = json.loads((results / "eval" / "ssame" / "seed0" / "aggregate.json").read_text())
    assert len(aggregate["per_dataset"]) == 36  # every MMEB-eval config of the mirror


@pytest.mark.e2e
def test_rehearsal_counts_the_planted_bad_inputs(rehearsal):
    params = load_params(rehearsal / "params" / "rehearsal.yaml")
    results = rehearsal / params["results_dir"]
    unreadable = json.loads((results / "data" / "unreadable.json").read_text())
    assert len(unreadable["images"]) == 1 and sum(unreadable["dropped_train_rows"].values()) == 1
    scores = results / "eval" / "baseline" / "seed0" / "scores"
    duplicated = {p.stem: json.loads(p.read_text())["duplicated_ground_truth_rows"] for p in scores.glob("*.json")}
    assert sum(duplicated.values()) == 1


@pytest.mark.e2e
def test_rehearsal_lr_schedule_on_two_processes_is_the_single_process_one(rehearsal):
    """Each logged LR equals the schedule one process would follow (accelerate used to step it once per process)."""
    import mlflow
    import torch
    from transformers import get_linear_schedule_with_warmup

    params = load_params(rehearsal / "params" / "rehearsal.yaml")
    train = params["train"]
    mlflow.set_tracking_uri(resolve_uri(params, rehearsal))
    run = mlflow.search_runs(experiment_names=[params["tracking"]["experiment"]],
                             filter_string="tags.mlflow.runName = 'train/ssame/seed0'").iloc[0]
    logged = [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run.run_id, "lr"),
                                      key=lambda m: m.step)]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=train["lr"])
    schedule = get_linear_schedule_with_warmup(optimizer, train["warmup_steps"], train["steps"])
    expected = []  # the rate each step's update uses
    for _ in range(train["steps"]):
        expected.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert logged == pytest.approx(expected, rel=1e-6), f"logged {logged}, one process {expected}"
    log = (rehearsal / params["results_dir"] / "logs" / "train" / "ssame" / "seed0.log").read_text()
    assert "processes: 2" in log


@pytest.mark.e2e
def test_rehearsal_outputs_are_versioned_by_its_generated_dvc_pipeline(rehearsal):
    """The paper-shaped DVC pipeline (generated from the rehearsal's DAG) records the run with nothing out of date,
    and every file the stages wrote lies in one of its outs."""
    import yaml

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def run(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", *args], cwd=rehearsal, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    run("ssame", "dvc-yaml", "--params", "params/rehearsal.yaml")
    run("dvc", "init", "--no-scm", "-q")
    run("dvc", "commit", "-f", "-q")
    assert json.loads(run("dvc", "status", "--json")) == {}
    stages = yaml.safe_load((rehearsal / "dvc.yaml").read_text())["stages"].values()
    declared = [e if isinstance(e, str) else next(iter(e))
                for stage in stages for kind in ("outs", "metrics", "plots") for e in stage.get(kind, [])]
    results = rehearsal / load_params(rehearsal / "params" / "rehearsal.yaml")["results_dir"]
    written = [p.relative_to(rehearsal).as_posix() for p in results.rglob("*")
               if p.is_file() and p.relative_to(results).parts[0] not in ("logs", "benchmarks", "checkpoints", "cache")]
    assert written and not [p for p in written if not any(p == d or p.startswith(f"{d}/") for d in declared)]
