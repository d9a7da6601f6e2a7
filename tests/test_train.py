"""The training recipe on a very small MMEB-mini: outputs, determinism, unbuilt options."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ssame import data, saliency
from ssame.config import Paths
from ssame.evaluate import evaluate
from ssame.train import train


@pytest.fixture(scope="module")
def small(tmp_path_factory, default_params) -> dict:
    import copy

    params = copy.deepcopy(default_params)
    root = tmp_path_factory.mktemp("train")
    params["results_dir"] = str(root / "results")
    params["tracking"]["mlflow_db"] = str(root / "mlflow" / "mlflow.db")
    params["data"]["mini"].update(train_rows_per_dataset=8, eval_queries_per_dataset=4)
    params["data"]["tokenizer"]["vocab_size"] = 320
    params["train"].update(steps=3, batch_size=8, warmup_steps=1)
    data.build(params)
    saliency.build(params)
    return params


def _weights(params: dict, variant: str) -> dict[str, torch.Tensor]:
    return load_file(Paths.from_params(params).model(variant, 0) / "backbone" / "model.safetensors")


def test_ssame_variant_trains_saves_and_is_deterministic(small):
    first = train(small, "ssame", 0)
    weights = _weights(small, "ssame")
    second = train(small, "ssame", 0)
    assert {"loss_nce", "loss_attn", "visual_attention_mass"} <= set(first)
    assert all(torch.isfinite(torch.tensor(v)) for v in first.values())
    assert first["loss"] == second["loss"]
    assert all(torch.equal(weights[k], v) for k, v in _weights(small, "ssame").items())
    model_dir = Paths.from_params(small).model("ssame", 0)
    assert (model_dir / "ssame_modules.safetensors").is_file()
    metrics = json.loads(Paths.from_params(small).train_metrics("ssame", 0).read_text())
    assert metrics["steps"] == 3


def test_baseline_has_no_saliency_terms_and_seeds_differ(small):
    metrics = train(small, "baseline", 0)
    assert "loss_attn" not in metrics
    other = train(small, "baseline", 1)
    assert other["loss"] != metrics["loss"]


def test_evaluate_writes_scores_for_every_dataset(small):
    train(small, "baseline", 0)
    summary = evaluate(small, "baseline", 0)
    manifest = data.io.read_manifest(Paths.from_params(small).data)
    assert set(summary["per_dataset"]) == set(manifest["dataset"])
    assert 0 <= summary["overall"] <= 1
    scores = Paths.from_params(small).eval("baseline", 0) / "scores"
    assert len(list(scores.glob("*.json"))) == len(manifest)


@pytest.mark.parametrize(("section", "key", "value", "match"), [
    ("model", "lora", {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj"]}, "LoRA"),
    ("train", "grad_cache_chunk_size", 4, "GradCache"),
])
def test_unbuilt_options_raise_clearly(small, section, key, value, match):
    import copy

    params = copy.deepcopy(small)
    params[section][key] = value
    with pytest.raises(NotImplementedError, match=match):
        train(params, "baseline", 0)
