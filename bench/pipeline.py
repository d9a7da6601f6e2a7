"""Benchmark: the default pipeline from scratch in a scratch copy of the project; prints wall time, peak RSS and
what each job cost (from Snakemake's benchmark files, results/benchmarks/: wall seconds, peak RSS, CPU seconds).

Usage: python bench/pipeline.py [--params params/default.yaml] [--cores 2] [--targets all [seed_systems]]
Targets (steps 1 and 7): `all` wall <= 15 min on 2 cores / 24 GB (<= 8 min measured on the faster machines of
that kind), peak RSS <= 8 GB. `--targets all seed_systems` times the seed systems' comparison too.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from ssame.config import load_params

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--targets", nargs="+", default=["all"], help="Snakemake targets (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ssame-bench-") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "Snakefile", root)
        shutil.copytree(REPO / "workflow", root / "workflow")
        (root / "profiles").symlink_to("workflow/profiles")
        shutil.copytree(REPO / "params", root / "params")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", args.cores, "--quiet", *args.targets,
                        "--config", f"params={args.params}"], cwd=root, env=env, check=True)
        wall = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"pipeline wall: {wall:.1f} s ({wall / 60:.2f} min)")
        print(f"peak RSS of the largest process: {peak_kib / 2**20:.2f} GiB")
        params = load_params(root / args.params)
        print(job_costs(root / params["results_dir"] / "benchmarks").to_markdown(floatfmt=".1f"))
        for table in ["main", "ablation", "saliency_quality"]:
            print((root / params["reports_dir"] / "tables" / f"{table}.md").read_text())


def job_costs(benchmarks: Path) -> pd.DataFrame:
    """Per rule: jobs, wall seconds (mean, max, sum), peak RSS (MB, max) and CPU seconds (sum)."""
    rows = [pd.read_csv(path, sep="\t").assign(rule=path.relative_to(benchmarks).parts[0].removesuffix(".tsv"))
            for path in sorted(benchmarks.rglob("*.tsv"))]
    frame = pd.concat(rows)
    return frame.groupby("rule", sort=False).agg(jobs=("s", "size"), wall_s_mean=("s", "mean"),
                                                 wall_s_max=("s", "max"), wall_s_sum=("s", "sum"),
                                                 peak_rss_mb=("max_rss", "max"), cpu_s_sum=("cpu_time", "sum"))


if __name__ == "__main__":
    main()
