"""Benchmark: orchestration overhead per job on a no-op stage; prints each part (median of --repeats) and the total.

Usage: python bench/overhead.py [--params params/default.yaml] [--repeats 3] [--jobs 21]
Target: overhead per job <= 3 s.

What a job pays before and around its stage's work, each part measured where a job pays it:
  (a) interpreter start: `python -c pass`;
  (b) `import ssame.cli`, timed inside a fresh interpreter (`ssame --help` wall, start included, shown alongside);
  (c) `load_params` after (b) in that interpreter: YAML read, schema validation, freezing;
  (d) the MLflow run in the SQLite store after (c): `import mlflow`, then `mlflow_run` (experiment lookup under the
      file lock, run create, all params logged, run end). The store exists already (the pipeline's first job
      creates its schema once; that one-off cost is printed apart);
  (e) whole Snakemake invocations (`python -m snakemake --cores 1`) of a no-op Snakefile with 1 job and with
      --jobs jobs, each job `touch {output}`, nothing subtracted.
Snakemake's share of one job is the marginal cost (T_jobs - T_1) / (jobs - 1): under the local executor one
Snakemake process parses the Snakefile, builds the DAG and starts once, and each further job adds only
scheduling, its shell, output checks and metadata. T_1 alone would charge that one-off start to every job.
Under the SLURM profile each job instead re-runs Snakemake inside its allocation (the jobstep executor re-parses
the Snakefile, which loads params, and builds the DAG), so there a job pays about a whole invocation: the real
Snakefile's parse + DAG (`snakemake -n`, (f)) is printed as that extra; sbatch queueing is the cluster's, not ours.
Overhead per job = Snakemake marginal + 2 × ((a) + (b) + (c)) + (d): each rule runs `ssame launch` (Python start, CLI
import, params), which starts the stage's own `ssame` process (the same again, then its MLflow run); none of this is
in the no-op `touch` jobs of (e). Launchers started by `ssame launch` (accelerate, torchrun) are the stage's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, os, sys, time
t0 = time.perf_counter()
import ssame.cli
t1 = time.perf_counter()
from ssame.config import load_params
params = load_params(sys.argv[1])
t2 = time.perf_counter()
from ssame.tracking import _OFFLINE_ENV, mlflow_run
os.environ.update(_OFFLINE_ENV)
import mlflow
t3 = time.perf_counter()
with mlflow_run(params, "overhead", {"bench": "overhead"}):
    pass
t4 = time.perf_counter()
print(json.dumps({"cli": t1 - t0, "params": t2 - t1, "mlflow_import": t3 - t2, "mlflow_run": t4 - t3}))
"""
NOOP_SNAKEFILE = """
rule all:
    input: expand("out/{i}.done", i=range(int(config["jobs"])))

rule noop:
    output: "out/{i}.done"
    shell: "touch {output}"
"""


def _wall(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _median(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def _snakemake(root: Path, env: dict[str, str], jobs: int) -> float:
    """Wall of one no-op Snakemake run of `jobs` jobs in a fresh folder."""
    work = Path(tempfile.mkdtemp(dir=root))
    (work / "Snakefile").write_text(NOOP_SNAKEFILE)
    wall = _wall([sys.executable, "-m", "snakemake", "--cores", "1", "--quiet", "--config", f"jobs={jobs}"],
                 work, env)
    shutil.rmtree(work)
    return wall


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--params", default="params/default.yaml")
    cli.add_argument("--repeats", type=int, default=3)
    cli.add_argument("--jobs", type=int, default=21, help="jobs of the many-job Snakemake run (>= 2)")
    args = cli.parse_args()
    params, n = (REPO / args.params).resolve(), args.repeats
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the SQLite store
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    with tempfile.TemporaryDirectory(prefix="ssame-overhead-") as tmp:
        root = Path(tmp)
        start = _median(n, lambda: _wall([sys.executable, "-c", "pass"], root, env))
        help_wall = _median(n, lambda: _wall(["ssame", "--help"], root, env))
        probe = [sys.executable, "-c", PROBE, str(params)]
        schema = _wall(probe, root, env)  # creates the SQLite store: the pipeline's first job only
        runs = [json.loads(subprocess.run(probe, cwd=root, env=env, check=True, capture_output=True,
                                          text=True).stdout) for _ in range(n)]
        part = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        one = _median(n, lambda: _snakemake(root, env, 1))
        many = _median(n, lambda: _snakemake(root, env, args.jobs))
        shutil.copy(REPO / "Snakefile", root)
        for folder in ("workflow", "params"):
            shutil.copytree(REPO / folder, root / folder)
        dry = _median(n, lambda: _wall([sys.executable, "-m", "snakemake", "-n", "--quiet", "--config",
                                        f"params={args.params}"], root, env))
    marginal = (many - one) / (args.jobs - 1)
    mlflow = part["mlflow_import"] + part["mlflow_run"]
    hop = start + part["cli"] + part["params"]
    print(f"median of {n} repeats; {os.cpu_count()} CPUs visible")
    rows = [
        ("(a) interpreter start (python -c pass)", start, ""),
        ("(b) import ssame.cli", part["cli"], f"ssame --help wall: {help_wall:.2f} s"),
        ("(c) load_params (schema validation)", part["params"], ""),
        ("(d) mlflow import + run open/params/end", mlflow,
         f"{part['mlflow_import']:.2f} + {part['mlflow_run']:.2f} s; first job creating the store: {schema:.2f} s"),
        ("(e) snakemake no-op, per job", marginal, f"1 job {one:.2f} s, {args.jobs} jobs {many:.2f} s"),
        ("(f) real Snakefile parse + DAG (-n)", dry, "paid again by each SLURM job"),
        ("(g) the ssame launch hop: (a) + (b) + (c)", hop, "before the stage's own process"),
    ]
    for label, value, note in rows:
        print(f"{label:<42} {value:6.2f} s" + (f"   ({note})" if note else ""))
    total = marginal + 2 * hop + mlflow
    print(f"under SLURM add (f): {total + dry:.2f} s per job, queueing aside")
    print(f"overhead per job: {total:.2f} s (target <= 3 s)")


if __name__ == "__main__":
    main()
