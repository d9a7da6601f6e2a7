"""bench/gpu.py: without a GPU it says so and exits 0; `--smoke` runs its training path on the CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


def _bench(repo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "bench" / "gpu.py"), *args], capture_output=True, text=True,
                          timeout=600, cwd=repo)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the bench would run for real")
def test_without_a_gpu_it_says_so_and_exits_0(repo):
    proc = _bench(repo)
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout


def test_smoke_runs_the_paper_training_path(repo):
    proc = _bench(repo, "--smoke", "--steps", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "samples/s" in proc.stdout and "GradCache chunk 2" in proc.stdout
