"""`ssame launch STAGE ...`: start one Snakemake job of a stage with its share of the machine.

It claims the job's GPUs (disjoint from every other ssame job on the node; under SLURM the allocation's own) and a
rendezvous port, hides every other GPU, and runs the stage: training through `accelerate launch` (once per node; on
several SLURM nodes through `srun`, with machine rank, head address and port from SLURM's environment; one CPU
process under a config that sets nothing, params/accelerate/cpu.yaml, runs directly, as accelerate would), evaluation
sharded over its GPUs through `torchrun`, any other stage as one process. Arguments after the launcher's own are the
stage's (`ssame STAGE --help`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass

from ssame.cli import STAGES
from ssame.config import LAUNCHED_RULES, ParamsError, launch_processes, load_params, plain_accelerate
from ssame.launch import slurm
from ssame.launch.devices import BASE_PORT, LaunchError, claim_devices, claim_port, visible_devices


@dataclass(frozen=True)
class Plan:
    """Where one job runs: devices of this node, processes per node, nodes, this node's rank, head and port."""

    devices: list[str]
    processes: int
    nodes: int = 1
    rank: int = 0
    head: str = "127.0.0.1"
    port: int = BASE_PORT


def command(stage: str, stage_args: list[str], plan: Plan, accelerate_config: str) -> list[str]:
    """The process that runs `stage` under `plan` (the launcher sets CUDA_VISIBLE_DEVICES to plan.devices)."""
    python = [sys.executable, "-m"]
    single_cpu = not plan.devices and plan.processes * plan.nodes == 1
    if stage == "train" and not (single_cpu and plain_accelerate(accelerate_config)):
        return [*python, "accelerate.commands.launch", "--config_file", accelerate_config,
                "--num_processes", str(plan.processes * plan.nodes), "--num_machines", str(plan.nodes),
                "--machine_rank", str(plan.rank), "--main_process_ip", plan.head,
                "--main_process_port", str(plan.port), "-m", "ssame", stage, *stage_args]
    if stage == "evaluate" and plan.processes > 1:
        return [*python, "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(plan.processes),
                "--master_addr", plan.head, "--master_port", str(plan.port), "-m", "ssame", stage, *stage_args]
    return [*python, "ssame", stage, *stage_args]


def _processes(stage: str, gpus: int, accelerate_config: str) -> int:
    """Processes per node: one per GPU; without GPUs the accelerate config's count (train) or one."""
    if gpus:
        return gpus if stage in LAUNCHED_RULES else 1
    return launch_processes(accelerate_config) if stage == "train" else 1


def _run(cmd: list[str], devices: list[str] | None) -> int:
    """Run `cmd` with only `devices` visible (None: the environment's), passing SIGTERM/SIGINT on; its status."""
    env = dict(os.environ)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    # one write per line: the per-node launchers of one job share its log (print may write the newline apart)
    sys.stdout.write(f"ssame launch: CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}: {' '.join(cmd)}\n")
    sys.stdout.flush()
    child = subprocess.Popen(cmd, env=env)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    return child.wait()


def launch(stage: str, stage_args: list[str], gpus: int, nodes: int, on_node: bool, accelerate_config: str) -> int:
    """Claim, plan and run one job (see the module docstring); returns the exit status."""
    processes = _processes(stage, gpus, accelerate_config)
    if nodes > 1 and not on_node:  # fan out: this same launch once per node, each then plans its own node
        argv = [sys.executable, "-m", "ssame", "launch", stage, "--gpus", str(gpus), "--nodes", str(nodes),
                "--on-node", *stage_args]
        return _run(slurm.per_node(argv, nodes), None)
    in_slurm = slurm.job_id() is not None
    with ExitStack() as stack:
        if not gpus:
            devices: list[str] = []
        elif in_slurm:  # SLURM isolates the allocation's GPUs; its CUDA_VISIBLE_DEVICES lists them
            devices = visible_devices()[:gpus]
            if len(devices) < gpus:
                raise LaunchError(f"the job asks for {gpus} GPU(s) per node; SLURM gave {len(devices)}")
        else:
            devices = stack.enter_context(claim_devices(gpus, visible_devices()))
        if nodes > 1:
            plan = Plan(devices, processes, nodes, slurm.node_rank(), slurm.head_node(), slurm.job_port())
        else:
            needs_port = stage == "train" or processes > 1
            first = slurm.job_port() if in_slurm else BASE_PORT
            port = stack.enter_context(claim_port(first) if needs_port else nullcontext(first))
            plan = Plan(devices, processes, port=port)
        return _run(command(stage, stage_args, plan, accelerate_config), devices)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ssame launch", description=__doc__.split("\n\n")[0])
    top.add_argument("stage", choices=list(STAGES))
    top.add_argument("--gpus", type=int, default=0, help="GPUs per node (the rule's resources.gpu)")
    top.add_argument("--nodes", type=int, default=1, help="nodes (the rule's resources.nodes; >1 under SLURM)")
    top.add_argument("--on-node", action="store_true", help=argparse.SUPPRESS)  # set by the per-node srun
    return top


def main(argv: list[str]) -> int:
    args, stage_args = parser().parse_known_args(argv)
    from ssame.cli import parser as stage_parser

    stage = stage_parser().parse_args([args.stage, *stage_args])  # the stage's own arguments, checked up front
    try:
        accelerate_config = load_params(stage.params)["train"]["accelerate_config"]
        return launch(args.stage, stage_args, args.gpus, args.nodes, args.on_node, accelerate_config)
    except (LaunchError, ParamsError) as err:
        print(f"ssame launch {args.stage}: {err}", file=sys.stderr)
        return 2

