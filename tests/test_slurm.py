"""The SLURM profile (workflow/profiles/slurm) against stand-in sbatch/srun/sacct/squeue/scancel/scontrol on PATH
(tests/slurm/standin.py): what each job asks of SLURM, and a multi-node training through `srun` + `accelerate`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssame.config import job_resources, job_threads, load_params

COMMANDS = ["sbatch", "srun", "sacct", "squeue", "scancel", "scontrol", "sinfo", "sacctmgr", "sshare"]
PROFILE = "workflow/profiles/slurm"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, repo) -> tuple[Path, dict[str, str]]:
    """A scratch project and an environment whose PATH starts with the stand-in SLURM commands."""
    root = tmp_path_factory.mktemp("slurm")
    shutil.copy(repo / "Snakefile", root / "Snakefile")
    shutil.copytree(repo / "workflow", root / "workflow")
    shutil.copytree(repo / "params", root / "params")
    (root / "profiles").symlink_to("workflow/profiles")
    (root / "src").symlink_to(repo / "src")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    bin_dir, state = root / "slurm-bin", root / "slurm-state"
    bin_dir.mkdir()
    state.mkdir()
    for name in COMMANDS:
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{repo / "tests/slurm/standin.py"}" '
                                    f'{name} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "FAKE_SLURM_DIR": str(state), "SSAME_LOCK_DIR": str(root / "locks"),
           "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SLURM_JOB_ID", None)
    return root, env


def _snakemake(root: Path, env: dict[str, str], *args: str, timeout: int = 1200) -> str:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", PROFILE, *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


def _jobs_in_dry_run(out: str) -> dict[str, dict[str, str]]:
    """rule -> its resources line, parsed, from `snakemake -n` output (one entry per rule)."""
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", out):
        name = re.match(r"rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if name and res:  # (a dry run shows threads capped at --cores; the e2e test checks --cpus-per-task)
            jobs[name.group(1)] = dict(kv.split("=", 1) for kv in res.group(1).split(", "))
    return jobs


def test_paper_dry_run_shows_every_rules_resources(cluster, repo):
    root, env = cluster
    out = _snakemake(root, env, "all", "seed_systems", "--config", "params=params/paper.yaml", "-n")
    assert "workflow specific profile profiles/default" in out  # the default profile is loaded, too
    params = load_params(repo / "params" / "paper.yaml")
    profile = yaml.safe_load((repo / PROFILE / "config.yaml").read_text())
    jobs = _jobs_in_dry_run(out)
    assert set(jobs) == {"data", "saliency", "mine", "train", "evaluate", "report", "all", "report_seed_systems",
                         "seed_systems"}
    for rule in ["data", "saliency", "mine", "train", "evaluate", "report"]:
        want = {k: str(v) for k, v in job_resources(params, rule).items()}
        want["slurm_partition"] = profile["set-resources"].get(rule, {}).get(
            "slurm_partition", profile["default-resources"]["slurm_partition"])
        assert {k: jobs[rule][k] for k in want} == want, rule
    assert jobs["train"]["gpu"] == "8" and jobs["train"]["tasks_per_gpu"] == "0"


def _set_resources(repo: Path, extra: list[str]) -> list[str]:
    """The profile's set-resources (a command-line --set-resources replaces them) plus `extra`."""
    profile = yaml.safe_load((repo / PROFILE / "config.yaml").read_text())
    return [f"{rule}:{k}={v}" for rule, res in profile["set-resources"].items() for k, v in res.items()] + extra


@pytest.mark.e2e
def test_rehearsal_through_slurm_trains_on_two_nodes(cluster, repo):
    """mirror (local) -> data -> saliency -> train on 2 'nodes' x 1 'GPU' -> evaluate sharded over 2 'GPUs', every
    job through sbatch."""
    root, env = cluster
    target = "results-rehearsal/eval/ssame/seed0/aggregate.json"
    _snakemake(root, env, "--config", "params=params/rehearsal.yaml", "--slurm-init-seconds-before-status-checks",
               "1", "--latency-wait", "5", "--set-resources",
               *_set_resources(repo, ["train:gpu=1", "train:nodes=2", "evaluate:gpu=2"]), "--", target)
    assert len(json.loads((root / target).read_text())["per_dataset"]) == 36
    calls = [json.loads(line) for line in (root / "slurm-state" / "calls.jsonl").read_text().splitlines()]
    submitted = {re.search(r"--comment rule_([a-z]+)", " ".join(c["args"])).group(1): " ".join(c["args"])
                 for c in calls if c["command"] == "sbatch"}
    assert sorted(submitted) == ["data", "evaluate", "saliency", "train"]  # mirror is a local rule
    params = load_params(repo / "params" / "rehearsal.yaml")
    for rule, line in submitted.items():
        res = job_resources(params, rule)
        assert f"--mem {res['mem_mb']}" in line and f"-t {res['runtime']}" in line, line
    assert "--gpus=1" in submitted["train"] and "--nodes=2" in submitted["train"] and "-p gpu" in submitted["train"]
    assert "--ntasks-per-gpu" not in submitted["train"]  # tasks_per_gpu: 0, one task per node
    assert f"--cpus-per-task={job_threads(params, 'train')}" in submitted["train"]
    per_node = [c for c in calls if c["command"] == "srun" and "--overlap" in c["args"]]
    assert len(per_node) == 1 and per_node[0]["tasks"] == 2 and per_node[0]["nodes"] == 2
    log = (root / "results-rehearsal" / "logs" / "train" / "ssame" / "seed0.log").read_text()
    launches = re.findall(r"accelerate\.commands\.launch .*?--num_machines 2 --machine_rank (\d) "
                          r"--main_process_ip localhost --main_process_port (\d+)", log)
    assert sorted(rank for rank, _ in launches) == ["0", "1"] and len({port for _, port in launches}) == 1
    assert "processes: 2" in log
    evaluation = (root / "results-rehearsal" / "logs" / "evaluate" / "ssame" / "seed0.log").read_text()
    assert re.search(r"CUDA_VISIBLE_DEVICES='0,1': \S+ -m torch\.distributed\.run --nnodes 1 --nproc_per_node 2",
                     evaluation), evaluation[-2000:]
    assert "--gpus=2" in submitted["evaluate"]
    assert (root / "results-rehearsal" / "benchmarks" / "train" / "ssame" / "seed0.tsv").stat().st_size > 0
