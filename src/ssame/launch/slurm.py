"""What a job learns from SLURM's environment: the allocation, this node's rank and the head node's address."""

from __future__ import annotations

import os
import subprocess

from ssame.launch.devices import LaunchError

PORT_BASE, PORT_SPAN = 15000, 20000  # a job's rendezvous port is a function of its job id: every node agrees


def job_id() -> str | None:
    """The SLURM job this process runs in, or None outside SLURM."""
    return os.environ.get("SLURM_JOB_ID")


def job_port() -> int:
    """The rendezvous port every node of this job derives alike (no exchange needed)."""
    return PORT_BASE + int(job_id() or 0) % PORT_SPAN


def node_rank() -> int:
    """This node's index within the per-node step (srun sets SLURM_NODEID)."""
    return int(_env("SLURM_NODEID"))


def head_node() -> str:
    """The first host of the per-node step: where rank 0 runs and the others rendezvous."""
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or _env("SLURM_JOB_NODELIST")
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def per_node(command: list[str], nodes: int) -> list[str]:
    """`command` once on each of `nodes` nodes of the allocation, in a step beside the one snakemake runs in."""
    if job_id() is None:
        raise LaunchError(f"a job on {nodes} nodes needs a SLURM allocation (run with the SLURM profile, "
                          "workflow/profiles/slurm); without one set resources.train.nodes: 1")
    return ["srun", "--overlap", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1", *command]


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise LaunchError(f"${name} is not set: a per-node launch must run inside `srun` (ssame launch starts it)")
    return value
