"""dvc.yaml is generated from the Snakemake DAG (ssame.dvc_yaml), for every profile; the committed one is current."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssame.config import RUN_ONLY_KEYS, Paths, all_variants, load_params
from ssame.dvc_yaml import Job, _command, dvc_pipeline, render, snakemake_jobs, stage_name


def _project(tmp_path: Path, repo: Path) -> Path:
    """Files the DAG reads: the Snakefile, its rules and the params (with the accelerate configs)."""
    shutil.copy(repo / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(repo / "workflow", tmp_path / "workflow")
    shutil.copytree(repo / "params", tmp_path / "params")
    return tmp_path


def test_committed_dvc_yaml_is_the_one_generated_from_the_dag(repo):
    assert (repo / "dvc.yaml").read_text() == render("params/default.yaml", repo), \
        "dvc.yaml is stale: run `ssame dvc-yaml` and commit it"


def test_check_flag_reports_a_stale_file(repo, tmp_path):
    project = _project(tmp_path, repo)
    (project / "dvc.yaml").write_text((repo / "dvc.yaml").read_text())
    cli = [sys.executable, "-m", "ssame", "dvc-yaml", "--check"]
    assert subprocess.run(cli, cwd=project, capture_output=True).returncode == 0
    (project / "dvc.yaml").write_text((repo / "dvc.yaml").read_text().replace("seed-2", "seed-9"))
    stale = subprocess.run(cli, cwd=project, capture_output=True, text=True)
    assert stale.returncode == 1 and "out of date" in stale.stderr


def test_one_stage_per_snakemake_job_with_its_command_files_and_own_params(repo):
    jobs = snakemake_jobs("params/default.yaml", repo)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert list(stages) == [stage_name(job) for job in jobs]
    params = load_params(repo / "params" / "default.yaml")
    runs = len(all_variants(params)) * len(params["train"]["seeds"])  # targets all and seed_systems
    assert len([j for j in jobs if j.rule == "train"]) == runs
    assert [j.rule for j in jobs if j.rule.startswith("report")] == ["report", "report_seed_systems"]
    for job in jobs:
        stage = stages[stage_name(job)]
        assert stage["cmd"] in job.shellcmd and stage["cmd"].startswith(f"ssame launch {job.rule.split('_')[0]} ")
    train = stages["train_variant-ssame_seed-1"]
    keys = set(train["params"][0]["params/default.yaml"])
    written = yaml.safe_load((repo / "params" / "default.yaml").read_text())["train"]
    assert {k for k in keys if k.startswith("train.")} == {f"train.{k}" for k in written if k not in RUN_ONLY_KEYS}
    assert {k for k in keys if not k.startswith("train.")} == {"model", "pretrain", "variants.ssame"}
    assert "results/saliency" in train["deps"]
    baseline = stages["train_variant-baseline_seed-1"]
    assert "results/saliency" not in baseline["deps"]  # as in Snakemake: baseline runs while saliency does
    assert "results/saliency" not in stages["evaluate_variant-baseline_seed-1"]["deps"]
    assert stages["saliency"]["outs"] == [{"results/saliency": {"persist": True}}]  # dvc repro keeps its shard cache
    assert stages["data"]["outs"] == ["results/data"]  # the whole folder: tokenizer, masks and lexicon too
    assert train["metrics"] == ["results/train/ssame/seed1/metrics.json"]
    report = stages["report"]["outs"]
    assert {"reports/tables/main.tex": {"cache": False}} in report  # one out per file, also inside multiext()
    assert all(out[next(iter(out))] == {"cache": False} for out in report)  # committed to git
    assert stages["report_seed_systems"]["cmd"].endswith(" --seed-systems")
    assert {"reports/seed_systems/tables/main.md": {"cache": False}} in stages["report_seed_systems"]["outs"]


def test_report_rules_declare_what_the_report_module_writes(repo):
    """The report rules' outputs (listed in workflow/rules/report.smk) are exactly ssame.report's files, per target."""
    from ssame.report import output_files

    params = load_params(repo / "params" / "default.yaml")
    paths = Paths.from_params(params)
    methods = [*params["saliency"]["quality"]["experts"], "fusion"]
    per_method = [f"figures/saliency_{m}{x}" for m in methods for x in (".png", ".pdf")]
    for job in snakemake_jobs("params/default.yaml", repo):
        if job.rule.startswith("report"):
            seed_systems = job.rule == "report_seed_systems"
            root = paths.report(seed_systems)
            declared = sorted(Path(path).relative_to(root).as_posix() for _, path in job.outputs)
            assert declared == sorted(output_files(seed_systems) + ([] if seed_systems else per_method)), job.rule


@pytest.mark.parametrize("profile", ["paper", "rehearsal"])
def test_paper_profiles_generate_pipelines_dvc_loads(repo, tmp_path, profile):
    from dvc.repo import Repo

    project = _project(tmp_path, repo)
    params_file = f"params/{profile}.yaml"
    text = render(params_file, project)
    (project / "dvc.yaml").write_text(text)
    Repo.init(str(project), no_scm=True)
    stages = {stage.name: stage for stage in Repo(str(project)).index.stages}
    params = load_params(project / params_file)
    runs = [(v, s) for v in params["train"]["variants"] for s in params["train"]["seeds"]]
    assert {f"train_variant-{v}_seed-{s}" for v, s in runs} <= set(stages)
    assert "pretrain" not in stages  # a hub backbone comes pretrained
    results = params["results_dir"]
    train = stages[f"train_variant-ssame_seed-{params['train']['seeds'][0]}"]
    assert train.cmd.startswith(f"ssame launch train --params {params_file} ")
    assert f"--gpus {params['resources']['train']['gpu']} --nodes {params['resources']['train']['nodes']}" in train.cmd
    assert {str(d.def_path) for d in train.deps} >= {f"{results}/data", f"{results}/saliency"}
    if profile == "rehearsal":
        assert {str(d.def_path) for d in stages["data"].deps} >= {params["mirror"]["dir"]}
    else:
        assert "mirror" not in stages


def test_a_command_without_its_log_redirect_is_refused():
    job = Job("train", {}, [], [("model", "m")], "results/logs/train.log", "ssame launch train", {})
    with pytest.raises(ValueError, match="must end with"):
        _command(job)


def test_a_new_seed_adds_stages_and_leaves_the_others_alone():
    def train(seed: int) -> Job:
        return Job("train", {"variant": "v", "seed": str(seed)}, ["results/data/manifest.csv"],
                   [("model", f"results/train/v/seed{seed}/model")], None, f"ssame launch train --seed {seed}",
                   {"variants.v": {}, "train.steps": 3})

    data = Job("data", {}, [], [("manifest", "results/data/manifest.csv"), ("images", "results/data/images")], None,
               "ssame launch data", {"data": {}})
    raw = {"data": {}, "variants": {"v": {}}, "train": {"steps": 3}}
    one = dvc_pipeline([data, train(0)], "p.yaml", raw, "reports", {})["stages"]
    two = dvc_pipeline([data, train(0), train(1)], "p.yaml", raw, "reports", {})["stages"]
    assert two["train_variant-v_seed-0"] == one["train_variant-v_seed-0"]
    assert two["train_variant-v_seed-1"]["deps"][0] == "results/data"  # a file in a whole-stage folder: the folder
