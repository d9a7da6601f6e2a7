"""The training recipe on a very small MMEB-mini: outputs, determinism, LoRA, MLflow, kill-and-resume."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import torch
import yaml
from accelerate.utils import set_seed
from safetensors.torch import load_file

from ssame import data
from ssame.config import Paths
from ssame.evaluate import evaluate
from ssame.tracking import tracking_uri
from ssame.train import train
from ssame.train.batches import training_rows
from ssame.train.recipe import build_trainer, export_state, make_accelerator

VOLATILE = {"train_seconds", "samples_per_second", "peak_memory_mib"}


@pytest.fixture
def small(small_built) -> dict:
    return copy.deepcopy(small_built)


def _weights(params: dict, variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    return load_file(Paths.from_params(params).model(variant, seed) / "backbone" / "model.safetensors")


def test_ssame_variant_trains_saves_and_is_deterministic(small):
    first = train(small, "ssame", 0)
    weights = _weights(small, "ssame")
    second = train(small, "ssame", 0)
    assert {"loss_nce", "loss_attn", "loss_subject", "visual_attention_mass"} <= set(first)
    assert all(torch.isfinite(torch.tensor(v)) for v in first.values())
    assert first["loss"] == second["loss"]
    assert all(torch.equal(weights[k], v) for k, v in _weights(small, "ssame").items())
    model_dir = Paths.from_params(small).model("ssame", 0)
    assert (model_dir / "ssame_modules.safetensors").is_file()
    metrics = json.loads(Paths.from_params(small).train_metrics("ssame", 0).read_text())
    assert metrics["steps"] == 3


def test_mlflow_has_per_step_components_from_the_main_process(small):
    train(small, "ssame-no-regen", 0)
    client = mlflow.MlflowClient(tracking_uri(small["tracking"]["mlflow_db"]))
    experiment = client.get_experiment_by_name(small["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], "tags.variant = 'ssame-no-regen'")
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    for key in ("loss_nce", "loss_attn", "loss_subject", "lr", "samples_per_second", "peak_memory_mib"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key


def test_baseline_has_no_saliency_terms_and_seeds_differ(small):
    metrics = train(small, "baseline", 0)
    assert "loss_attn" not in metrics and "loss_subject" not in metrics
    other = train(small, "baseline", 1)
    assert other["loss"] != metrics["loss"]


def test_lora_trains_adapters_and_saves_a_merged_backbone(small):
    small["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    train(small, "baseline", 0)
    weights = _weights(small, "baseline")
    assert not any("lora" in k or "base_layer" in k for k in weights)
    small["model"]["lora"] = None
    train(small, "baseline", 0)
    full = _weights(small, "baseline")
    assert weights.keys() == full.keys()
    # LoRA leaves the vision tower frozen at its (seeded) initialisation; full fine-tuning moves it
    vision = [k for k in weights if "visual." in k and k.endswith("weight")]
    assert vision and any(not torch.equal(weights[k], full[k]) for k in vision)


def test_evaluate_writes_scores_for_every_dataset(small):
    train(small, "baseline", 0)
    summary = evaluate(small, "baseline", 0)
    manifest = data.io.read_manifest(Paths.from_params(small).data)
    assert set(summary["per_dataset"]) == set(manifest["dataset"])
    assert 0 <= summary["overall"] <= 1
    scores = Paths.from_params(small).eval("baseline", 0) / "scores"
    assert len(list(scores.glob("*.json"))) == len(manifest)


def _launch(params_file, variant: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ssame", "train", "--params", str(params_file), "--variant", variant, "--seed", "0"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_run_then_rerun_matches_an_uninterrupted_run(small, tmp_path):
    small["train"].update(steps=8, checkpoint_every=2)
    paths = Paths.from_params(small)
    reference = train(small, "ssame-no-subject", 0)
    reference_weights = _weights(small, "ssame-no-subject")
    assert not paths.checkpoints("ssame-no-subject", 0).exists()  # removed once the run completed
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(small))
    proc = _launch(params_file, "ssame-no-subject")
    marker = paths.checkpoints("ssame-no-subject", 0) / "step4" / "trainer.json"
    deadline = time.monotonic() + 300
    while not marker.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = _launch(params_file, "ssame-no-subject")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed ssame-no-subject/seed0" in out
    metrics = json.loads(paths.train_metrics("ssame-no-subject", 0).read_text())
    assert {k: v for k, v in metrics.items() if k not in VOLATILE} == \
        {k: v for k, v in reference.items() if k not in VOLATILE}
    weights = _weights(small, "ssame-no-subject")
    assert all(torch.equal(reference_weights[k], v) for k, v in weights.items())


def test_export_from_a_full_state_dict_matches_the_direct_save(small, tmp_path):
    """The FSDP export path (rebuild on CPU, load the gathered state, merge LoRA) writes the same weights."""
    small["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    set_seed(0)
    accelerator = make_accelerator()
    embedder, objective, optimizer, scheduler, tokenizer, image_processor = build_trainer(small, "ssame", accelerator)
    for _ in range(2):  # the warm-up schedule's first step has lr 0
        objective.backward(training_rows(Paths.from_params(small).data).head(8))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    state = {k: v.detach().clone() for k, v in embedder.state_dict().items()}
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in state.items())
    export_state(small, "ssame", state, tmp_path / "exported")
    embedder.save(tmp_path / "direct", tokenizer, image_processor)
    for part in ("backbone/model.safetensors", "ssame_modules.safetensors"):
        direct, exported = load_file(tmp_path / "direct" / part), load_file(tmp_path / "exported" / part)
        assert direct.keys() == exported.keys()
        assert all(torch.equal(direct[k], exported[k]) for k in direct)
