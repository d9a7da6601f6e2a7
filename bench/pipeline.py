"""Benchmark: the default pipeline from scratch in a scratch copy of the project; prints wall time and peak RSS.

Usage: python bench/pipeline.py [--params params/default.yaml] [--cores 2]
Targets (step 1): wall <= 15 min on 2 cores / 24 GB, peak RSS <= 8 GB.
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

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--cores", default="all")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ssame-bench-") as tmp:
        root = Path(tmp)
        shutil.copy(REPO / "Snakefile", root)
        shutil.copytree(REPO / "workflow", root / "workflow")
        shutil.copytree(REPO / "params", root / "params")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snakemake", "--cores", args.cores, "--quiet", "all",
                        "--config", f"params={args.params}"], cwd=root, env=env, check=True)
        wall = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"pipeline wall: {wall:.1f} s ({wall / 60:.2f} min)")
        print(f"peak RSS of the largest process: {peak_kib / 2**20:.2f} GiB")
        for table in ["main", "ablation", "saliency_quality"]:
            print((root / "reports" / "tables" / f"{table}.md").read_text())


if __name__ == "__main__":
    main()
