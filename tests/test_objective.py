"""The training objective: GradCache and 2-process DDP give the full-batch single-process loss and gradients."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed

from ssame.train.batches import training_rows
from ssame.train.recipe import build_trainer, make_accelerator

sys.path.insert(0, str(Path(__file__).parent))
from distributed_step import subject_rich_batch

STEP_SCRIPT = Path(__file__).with_name("distributed_step.py")


def _grads(params: dict, chunk: int | None, one_pass: bool = True) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    params = copy.deepcopy(params)
    params["train"]["grad_cache_chunk_size"] = chunk
    params["train"]["one_pass"] = one_pass
    set_seed(0)
    accelerator = make_accelerator()
    embedder, objective, *_ = build_trainer(params, "ssame", accelerator)
    rows = training_rows(Path(params["results_dir"]) / "data")
    record = objective.backward(subject_rich_batch(rows, params["train"]["batch_size"]))
    return record, {n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and len(a) > 20
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < atol, f"max gradient difference {worst:.2e}"


@pytest.fixture(scope="module")
def full_batch(small_built):
    return _grads(small_built, None)


def test_every_term_is_active(full_batch):
    record, grads = full_batch
    assert record["loss_subject"] > 0 and record["loss_attn"] > 0 and record["loss_nce"] > 0
    assert any(k.startswith("regen.") for k in grads)
    assert 0 < record["visual_attention_mass"] <= 1


@pytest.mark.parametrize("chunk", [None, 3])
def test_one_pass_over_every_group_equals_a_pass_per_group(small_built, full_batch, chunk):
    """`train.one_pass` pads queries, positives, negatives and phrases into one batch: the same loss terms and
    gradients (to float rounding) as one batch per group, with and without GradCache."""
    record, grads = _grads(small_built, chunk, one_pass=False)
    _assert_same(full_batch[1], grads)
    for key, value in full_batch[0].items():
        assert record[key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.parametrize("chunk", [3, 1])
def test_grad_cache_equals_full_batch(small_built, full_batch, chunk):
    record, grads = _grads(small_built, chunk)
    _assert_same(full_batch[1], grads)
    for key, value in full_batch[0].items():
        assert record[key] == pytest.approx(value, abs=1e-5), key


def test_two_gloo_processes_equal_one(small_built, full_batch, tmp_path):
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(small_built))
    out = tmp_path / "grads.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(STEP_SCRIPT), str(params_file), str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(out)
    assert saved["world"] == 2
    _assert_same(full_batch[1], saved["grads"])
    for key, value in full_batch[0].items():
        assert saved["record"][key] == pytest.approx(value, abs=1e-5), key
