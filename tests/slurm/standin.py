#!/usr/bin/env python3
"""Stand-in SLURM commands for tests: `standin.py <sbatch|srun|sacct|squeue|scancel|scontrol|sinfo|...> ARGS`.

Every call is appended to $FAKE_SLURM_DIR/calls.jsonl. `sbatch` runs the job script locally in the background with
the environment SLURM would give it (job id, node list, CUDA_VISIBLE_DEVICES for --gpus) and `sacct` reports its
state; `srun` starts its tasks locally, one per --ntasks, each with SLURM_NODEID/SLURM_PROCID and a node list of
`localhost` entries (so a multi-node rendezvous happens on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

STATE = Path(os.environ["FAKE_SLURM_DIR"])
VALUE_FLAGS = {"--job-name", "--output", "--comment", "-A", "-p", "-t", "-C", "--mem", "--mem-per-cpu", "-D",
               "--clusters", "-o", "-j", "-n", "-N", "--format", "--starttime", "--endtime", "--name", "-u", "-c"}


def record(command: str, args: list[str], **extra: object) -> None:
    with FileLock(STATE / "calls.lock"), (STATE / "calls.jsonl").open("a") as out:
        out.write(json.dumps({"command": command, "args": args, **extra}) + "\n")


def parse(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Options (`--k=v`, `--k v`, `-n1`) up to the first operand; the operands."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if "=" in arg:
            key, value = arg.split("=", 1)
        elif arg in VALUE_FLAGS and i + 1 < len(args):
            key, value = arg, args[i + 1]
            i += 1
        elif len(arg) > 2 and arg[1] != "-":  # -n1
            key, value = arg[:2], arg[2:]
        else:
            key, value = arg, ""
        opts[key] = value
        i += 1
    return opts, args[i:]


def job_file(job_id: str) -> Path:
    return STATE / "jobs" / f"{job_id}.json"


def sbatch(args: list[str]) -> int:
    opts, operands = parse(args)
    script = f"#!/bin/sh\n{opts['--wrap']}" if "--wrap" in opts else Path(operands[0]).read_text() \
        if operands and operands[0] != "/dev/stdin" else sys.stdin.read()
    (STATE / "jobs").mkdir(exist_ok=True)
    with FileLock(STATE / "ids.lock"):
        job_id = str(1000 + len(list((STATE / "jobs").glob("*.json"))))
        job_file(job_id).write_text(json.dumps({"name": opts.get("--job-name", ""), "state": "RUNNING"}))
    (STATE / "jobs" / f"{job_id}.sh").write_text(script)
    record("sbatch", args, job_id=job_id, script=script)
    proc = subprocess.Popen([sys.executable, __file__, "_job", job_id, json.dumps(opts)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (STATE / "jobs" / f"{job_id}.pid").write_text(str(proc.pid))
    print(job_id)
    return 0


def run_job(job_id: str, opts_json: str) -> int:
    opts = json.loads(opts_json)
    nodes = int(opts.get("--nodes", "1"))
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NAME": opts.get("--job-name", ""),
           "SLURM_JOB_NODELIST": ",".join(["localhost"] * nodes), "SLURM_JOB_NUM_NODES": str(nodes),
           "SLURM_NNODES": str(nodes), "SLURM_CPUS_PER_TASK": opts.get("--cpus-per-task", "1")}
    if opts.get("--gpus"):
        env |= {"SLURM_GPUS": opts["--gpus"], "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(int(opts["--gpus"]))))}
    log = Path(opts.get("--output", os.devnull).replace("%j", job_id))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.run(["sh", str(STATE / "jobs" / f"{job_id}.sh")], cwd=opts.get("-D") or None, env=env,
                              stdout=out, stderr=subprocess.STDOUT).returncode
    state = json.loads(job_file(job_id).read_text())
    if state["state"] == "RUNNING":
        state["state"] = "COMPLETED" if code == 0 else "FAILED"
        job_file(job_id).write_text(json.dumps(state))
    return code


def srun(args: list[str]) -> int:
    opts, command = parse(args)
    tasks = int(opts.get("--ntasks") or opts.get("-n") or 1)
    nodes = int(opts.get("--nodes") or opts.get("-N") or 1)
    record("srun", args, tasks=tasks, nodes=nodes)
    env = {**os.environ, "SLURM_STEP_NODELIST": ",".join(["localhost"] * nodes), "SLURM_STEP_NUM_NODES": str(nodes),
           "SLURM_NNODES": str(nodes), "SLURM_NTASKS": str(tasks)}
    if opts.get("--gpus"):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(int(opts["--gpus"]))))
    procs = [subprocess.Popen(command, stdin=None if tasks == 1 else subprocess.DEVNULL,
                              env=env | {"SLURM_PROCID": str(i), "SLURM_NODEID": str(i * nodes // tasks),
                                         "SLURM_LOCALID": "0"}) for i in range(tasks)]
    return max(p.wait() for p in procs)


def sacct(args: list[str]) -> int:
    opts, _ = parse(args)
    if "--name" in opts:
        for path in sorted((STATE / "jobs").glob("*.json")):
            state = json.loads(path.read_text())
            if state["name"] == opts["--name"]:
                print(f"{path.stem}|{state['state']}")
    elif "-j" in opts:
        print("localhost")
    return 0


def scancel(args: list[str]) -> int:
    record("scancel", args)
    for job_id in (a for a in args if a.isdigit()):
        pid = STATE / "jobs" / f"{job_id}.pid"
        if pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid.read_text()), signal.SIGTERM)
            job_file(job_id).write_text(json.dumps({**json.loads(job_file(job_id).read_text()), "state": "CANCELLED"}))
    return 0


def scontrol(args: list[str]) -> int:
    if args[:2] == ["show", "config"]:
        print("MinJobAge               = 300 sec")
    elif args[:2] == ["show", "hostnames"]:
        print("\n".join(args[2].split(",")))
    return 0


def main() -> int:
    command, args = Path(sys.argv[1]).name, sys.argv[2:]
    if command == "_job":
        return run_job(*args)
    handlers = {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scancel": scancel, "scontrol": scontrol}
    if command in handlers:
        return handlers[command](args)
    if command == "sinfo":
        print("PARTITION\ngpu\ncpu*")
    return 0  # squeue, sacctmgr, sshare: nothing to report


if __name__ == "__main__":
    sys.exit(main())
