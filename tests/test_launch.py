"""`ssame launch`: disjoint devices and ports for concurrent jobs (simulated devices, no GPU needed), the launch
lines of each stage, and the SLURM multi-node plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssame.cli import STAGES
from ssame.launch import Plan, command, launch
from ssame.launch.devices import LaunchError, claim_devices, claim_port

# Runs in its own process: claims `count` of 4 simulated devices and a port, reports them, holds them for a while.
_JOB = textwrap.dedent("""
    import json, sys, time
    from ssame.launch.devices import claim_devices, claim_port, visible_devices
    with claim_devices(int(sys.argv[1]), visible_devices(), poll_s=0.05) as devices, claim_port() as port:
        print(json.dumps({"devices": devices, "port": port, "start": time.time()}), flush=True)
        time.sleep(float(sys.argv[2]))
        print(json.dumps({"end": time.time()}), flush=True)
""")


@pytest.fixture
def node(tmp_path, monkeypatch) -> dict[str, str]:
    """A simulated 4-GPU node: CUDA_VISIBLE_DEVICES lists 4 devices, locks in a fresh directory."""
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "SSAME_LOCK_DIR": str(tmp_path / "locks")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return {**os.environ, **env}


def _jobs(env: dict[str, str], counts: list[int], hold_s: float) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", _JOB, str(n), str(hold_s)], env=env, stdout=subprocess.PIPE,
                              text=True) for n in counts]
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        first, last = (json.loads(line) for line in stdout.splitlines())
        out.append(first | last)
    return out


def test_concurrent_jobs_never_share_a_device_or_a_port(node):
    jobs = _jobs(node, [2, 2], hold_s=1.5)
    assert all(len(j["devices"]) == 2 for j in jobs)
    assert not set(jobs[0]["devices"]) & set(jobs[1]["devices"])
    assert jobs[0]["port"] != jobs[1]["port"]
    assert max(j["start"] for j in jobs) < min(j["end"] for j in jobs), "both fit on 4 devices: they ran together"


def test_a_job_waits_until_its_devices_are_free(node):
    """Three 2-GPU jobs on a 4-GPU node: the third starts only after one of the others ended."""
    jobs = sorted(_jobs(node, [2, 2, 2], hold_s=1.0), key=lambda j: j["start"])
    assert jobs[2]["start"] >= min(jobs[0]["end"], jobs[1]["end"])
    held_together = [j for j in jobs if j["start"] < jobs[2]["start"] < j["end"]]
    assert all(not set(j["devices"]) & set(jobs[2]["devices"]) for j in held_together)


def test_asking_for_more_devices_than_the_node_has_names_both(node):
    with pytest.raises(LaunchError, match=r"asks for 5 GPU.*shows 4"), claim_devices(5, ["0", "1", "2", "3"]):
        pass


def test_a_port_in_use_by_another_program_is_skipped(node):
    import socket

    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with claim_port(taken) as port:
            assert port == taken + 1


def test_launch_lines():
    plan = Plan(devices=["2", "3"], processes=2, port=29501)
    train = command("train", ["--params", "p.yaml"], plan, "acc.yaml")
    assert train[1:3] == ["-m", "accelerate.commands.launch"]
    assert " ".join(train).endswith("--num_processes 2 --num_machines 1 --machine_rank 0 --main_process_ip "
                                    "127.0.0.1 --main_process_port 29501 -m ssame train --params p.yaml")
    evaluate = command("evaluate", ["--params", "p.yaml"], plan, "acc.yaml")
    assert evaluate[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in evaluate
    assert command("evaluate", [], Plan([], 1), "acc.yaml")[1:] == ["-m", "ssame", "evaluate"]
    assert command("saliency", [], Plan(["0"], 1), "acc.yaml")[1:] == ["-m", "ssame", "saliency"]
    multi = command("train", [], Plan(["0"], 8, nodes=4, rank=3, head="node07", port=17000), "acc.yaml")
    assert " ".join(multi).endswith("--num_processes 32 --num_machines 4 --machine_rank 3 --main_process_ip node07 "
                                    "--main_process_port 17000 -m ssame train")


def test_one_cpu_process_under_a_plain_config_skips_the_accelerate_launcher(repo, tmp_path):
    cpu = str(repo / "params" / "accelerate" / "cpu.yaml")
    assert command("train", ["--seed", "0"], Plan([], 1), cpu)[1:] == ["-m", "ssame", "train", "--seed", "0"]
    assert "accelerate.commands.launch" in command("train", [], Plan(["0"], 1), cpu)  # a GPU: accelerate decides
    assert "accelerate.commands.launch" in command("train", [], Plan([], 2), cpu)  # two processes
    bf16 = tmp_path / "bf16.yaml"
    bf16.write_text(Path(cpu).read_text().replace("mixed_precision: 'no'", "mixed_precision: bf16"))
    assert "accelerate.commands.launch" in command("train", [], Plan([], 1), str(bf16))


def test_several_nodes_need_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(LaunchError, match="needs a SLURM allocation"):
        launch("train", [], gpus=8, nodes=2, on_node=False, accelerate_config="params/accelerate/ddp_8gpu.yaml")


def test_a_cpu_job_sees_no_gpu(node, monkeypatch):
    """A rule that asks for no GPU runs with CUDA_VISIBLE_DEVICES empty, so it cannot land on cuda:0."""
    seen = {}
    monkeypatch.setattr("ssame.launch.subprocess.Popen", lambda cmd, env: seen.update(cmd=cmd, env=env) or
                        type("Done", (), {"wait": lambda self: 0, "send_signal": lambda self, s: None})())
    assert launch("report", ["--params", "x.yaml"], gpus=0, nodes=1, on_node=False, accelerate_config="") == 0
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == ""
    assert launch("evaluate", ["--params", "x.yaml"], gpus=2, nodes=1, on_node=False, accelerate_config="") == 0
    assert len(seen["env"]["CUDA_VISIBLE_DEVICES"].split(",")) == 2 and "torch.distributed.run" in seen["cmd"]


def test_cli_routes_launch(repo):
    out = subprocess.run([sys.executable, "-m", "ssame", "launch", "train", "--gpus", "1"], capture_output=True,
                         text=True, cwd=repo)
    assert out.returncode == 2 and "--variant" in out.stderr  # the stage's own arguments are checked up front
    usage = subprocess.run([sys.executable, "-m", "ssame", "launch", "--help"], capture_output=True, text=True,
                           cwd=repo)
    assert usage.returncode == 0 and "{" + ",".join(STAGES) + "}" in usage.stdout
