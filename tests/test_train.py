"""The training recipe on a very small MMEB-mini: outputs, determinism, LoRA, MLflow, kill-and-resume, 2 processes
vs 1 over several steps, params fingerprints of checkpoints, gradient clipping."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
import torch
import yaml
from accelerate.utils import set_seed
from safetensors.torch import load_file

from ssame import data
from ssame.config import Paths, as_params, load_params
from ssame.evaluate import evaluate
from ssame.tracking import resolve_uri
from ssame.train import checkpoint, train
from ssame.train.batches import training_rows
from ssame.train.clip import check_deepspeed_clipping, clip_gradients
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
    client = mlflow.MlflowClient(resolve_uri(small))
    experiment = client.get_experiment_by_name(small["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], "tags.variant = 'ssame-no-regen'")
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    for key in ("loss_nce", "loss_attn", "loss_subject", "lr", "grad_norm", "samples_per_second", "peak_memory_mib"):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key


def test_baseline_has_no_saliency_terms_and_seeds_differ(small):
    metrics = train(small, "baseline", 0)
    assert "loss_attn" not in metrics and "loss_subject" not in metrics
    other = train(small, "baseline", 1)
    assert other["loss"] != metrics["loss"]


def test_lora_trains_adapters_and_saves_a_merged_backbone(small):
    small["model"]["image_features"] = "pixels"  # the tower is trained below (cached features need it frozen)
    small["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    train(small, "baseline", 0)
    weights = _weights(small, "baseline")
    assert not any("lora" in k or "base_layer" in k for k in weights)
    small["model"]["lora"] = None
    small["train"]["freeze_vision"] = False
    train(small, "baseline", 0)
    full = _weights(small, "baseline")
    assert weights.keys() == full.keys()
    # LoRA leaves the vision tower frozen at its (seeded) initialisation; full fine-tuning moves it
    vision = [k for k in weights if "visual." in k and k.endswith("weight")]
    assert vision and any(not torch.equal(weights[k], full[k]) for k in vision)
    small["train"]["freeze_vision"] = True  # full fine-tuning of the language model only
    train(small, "baseline", 0)
    frozen = _weights(small, "baseline")
    assert all(torch.equal(weights[k], frozen[k]) for k in vision)
    language = [k for k in weights if k.startswith("model.layers.") and k.endswith("proj.weight")]
    assert language and all(not torch.equal(full[k], frozen[k]) for k in language)


def test_evaluate_writes_scores_for_every_dataset(small):
    train(small, "baseline", 0)
    summary = evaluate(small, "baseline", 0)
    manifest = data.io.read_manifest(Paths.from_params(small).data)
    assert set(summary["per_dataset"]) == set(manifest["dataset"])
    assert 0 <= summary["overall"] <= 1
    scores = Paths.from_params(small).eval("baseline", 0) / "scores"
    assert len(list(scores.glob("*.json"))) == len(manifest)
    # attention maps of the first query images of every dataset: a (rows, cols) grid of weights in [0, 1]
    maps = json.loads((Paths.from_params(small).eval("baseline", 0) / "attention.json").read_text())
    assert set(maps) == set(manifest["dataset"])
    for dataset, records in maps.items():
        frame = data.io.read_eval(Paths.from_params(small).data, dataset)
        images = list(dict.fromkeys(i for i in frame["qry_img_path"] if i))
        assert [r["image"] for r in records] == images[:small["evaluate"]["attention_maps"]]
        for record in records:
            weights = np.asarray(record["attention"])
            assert list(weights.shape) == record["grid"] and (weights >= 0).all() and weights.sum() <= 1 + 1e-5


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
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed ssame-no-subject/seed0" in err  # a log record (stderr)
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


def _history(params: dict, variant: str) -> dict[str, list[float]]:
    """Per-step MLflow history (loss, lr, grad_norm) of the newest run of `variant`."""
    client = mlflow.MlflowClient(resolve_uri(params))
    experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
    run = client.search_runs([experiment.experiment_id], f"tags.variant = '{variant}'",
                             order_by=["attributes.start_time DESC"])[0]
    return {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
            for key in ("loss", "lr", "grad_norm")}


def test_two_processes_equal_one_over_steps_with_warmup_and_clipping(small, tmp_path):
    """2 gloo processes x 20 optimizer steps (warm-up 10, clipping on) = 1 process: loss, LR and grad-norm history
    and final weights. accelerate's prepared scheduler stepped the schedule once per process per step (on 2
    processes warm-up ended at step 5 and the LR reached 0 at step 10)."""
    small["train"].update(steps=20, warmup_steps=10, batch_size=8, max_grad_norm=50.0)
    train(small, "ssame", 0)
    one, one_weights = _history(small, "ssame"), _weights(small, "ssame")
    two_params = copy.deepcopy(small)
    two_params["tracking"]["mlflow_db"] = str(tmp_path / "mlflow2" / "mlflow.db")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(two_params))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "ssame", "train", "--params", str(params_file), "--variant", "ssame", "--seed", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    two, two_weights = _history(two_params, "ssame"), _weights(two_params, "ssame")
    table = "\n".join(f"step {i + 1:2d}: lr {a:.6g} (1 process) vs {b:.6g} (2 processes)"
                      for i, (a, b) in enumerate(zip(one["lr"], two["lr"], strict=True)))
    print(f"LR history, 1 vs 2 processes:\n{table}")
    assert len(one["lr"]) == len(two["lr"]) == 20
    assert two["lr"] == pytest.approx(one["lr"], rel=1e-12), f"LR history differs:\n{table}"
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-4), (one["loss"], two["loss"])
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4), (one["grad_norm"], two["grad_norm"])
    assert min(one["grad_norm"]) < 50.0 < max(one["grad_norm"])  # clipping was active on some steps only
    worst = max((one_weights[k] - two_weights[k]).abs().max().item() for k in one_weights)
    loss_gap = max(abs(a - b) for a, b in zip(one["loss"], two["loss"], strict=True))
    print(f"max |loss difference| {loss_gap:.2e}, max |weight difference| {worst:.2e}")
    assert worst < 1e-4, f"max weight difference {worst:.2e}"


def _crash_after_training(monkeypatch) -> None:
    def crash(*_args, **_kwargs):
        raise RuntimeError("simulated crash before the model folder is written")

    monkeypatch.setattr("ssame.train.recipe.save_model", crash)


def test_checkpoint_refuses_other_params_and_resumes_under_the_same(small, monkeypatch, caplog):
    small["train"].update(steps=4, checkpoint_every=2)
    with monkeypatch.context() as patch:
        _crash_after_training(patch)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(small, "ssame-no-subject", 0)
    ckpt = Paths.from_params(small).checkpoints("ssame-no-subject", 0) / "step2"
    record = json.loads((ckpt / "trainer.json").read_text())
    assert record["params"]["train"]["lr"] == small["train"]["lr"] and len(record["fingerprint"]) == 64
    changed = copy.deepcopy(small)
    changed["train"]["lr"] = small["train"]["lr"] / 2
    changed["model"]["tiny"]["text"]["intermediate_size"] = 96
    with pytest.raises(ValueError, match=r"step2 was written under other params") as err:
        train(changed, "ssame-no-subject", 0)
    assert f"train.lr: {small['train']['lr']} in the checkpoint, {changed['train']['lr']} now" in str(err.value)
    assert "model.tiny.text.intermediate_size: 128 in the checkpoint, 96 now" in str(err.value)
    with pytest.raises(ValueError, match="seed: 0 in the checkpoint, 1 now"):  # refused before any state loads
        checkpoint.read(ckpt, checkpoint.params_record(as_params(small), "ssame-no-subject", 1))
    small["train"]["num_workers"] = 1  # how steps are prepared is not what they compute: resumes
    with caplog.at_level("INFO", logger="ssame.train.recipe"):
        train(small, "ssame-no-subject", 0)
    assert "resumed ssame-no-subject/seed0" in caplog.text


def test_clipping_bounds_the_norm_and_off_leaves_gradients_exact(small):
    set_seed(0)
    accelerator = make_accelerator()
    embedder, objective, *_ = build_trainer(small, "ssame", accelerator)
    objective.backward(training_rows(Paths.from_params(small).data).head(8))
    grads = [p.grad for p in embedder.parameters() if p.grad is not None]
    before = [g.clone() for g in grads]
    norm = torch.nn.utils.get_total_norm(before).item()
    assert clip_gradients(accelerator, embedder, None) == pytest.approx(norm, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, grads, strict=True))
    assert clip_gradients(accelerator, embedder, norm / 4) == pytest.approx(norm, rel=1e-6)
    assert torch.nn.utils.get_total_norm(grads).item() == pytest.approx(norm / 4, rel=1e-4)


def test_deepspeed_clipping_follows_max_grad_norm(repo):
    """A DeepSpeed engine clips at its config's gradient_clipping: every DeepSpeed config in params/accelerate/
    (read by accelerate's parser) agrees with the paper's param; a mismatch is refused naming both."""
    from accelerate.commands.config.config_args import load_config_from_file

    paper = load_params(repo / "params" / "paper.yaml")["train"]["max_grad_norm"]
    configs = {path.name: load_config_from_file(str(path)) for path in (repo / "params" / "accelerate").glob("*.yaml")}
    deepspeed = {name: c.deepspeed_config for name, c in configs.items() if c.distributed_type.name == "DEEPSPEED"}
    assert "zero2_8gpu.yaml" in deepspeed
    for name, config in deepspeed.items():
        check_deepspeed_clipping(paper, config.get("gradient_clipping"), name)
        with pytest.raises(ValueError, match=rf"max_grad_norm is None but .*{name}.* gradient_clipping {paper}"):
            check_deepspeed_clipping(None, config.get("gradient_clipping"), name)
    with pytest.raises(ValueError, match="absent"):
        check_deepspeed_clipping(0.5, None, "a config without the key")
    check_deepspeed_clipping(1.0, "auto", "auto")  # accelerate fills "auto" with 1.0
