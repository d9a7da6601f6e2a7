"""The paper-profile backbone path (`from_pretrained`, bf16, SDPA, gradient checkpointing, LoRA) on the rehearsal's
tiny random Qwen2-VL saved in the hub layout: no download, same classes and code path as Qwen2-VL-2B/7B."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed

from ssame.config import as_params
from ssame.model.attention import LAST_ROW_SDPA
from ssame.model.backbone import load_backbone
from ssame.rehearsal.models import write_tiny_models
from ssame.train.batches import training_rows
from ssame.train.recipe import build_trainer, make_accelerator


@pytest.fixture(scope="module")
def hub_params(small_built, tmp_path_factory):
    """`small_built` params with `model.backbone` = the rehearsal's Qwen2-VL-2B-Instruct stand-in (a local folder)."""
    params = copy.deepcopy(small_built)
    folder = write_tiny_models(tmp_path_factory.mktemp("models"), seed=0)["backbone"]
    params["model"].update(backbone=str(folder), revision=None, dtype="bfloat16", attn_implementation="sdpa",
                           gradient_checkpointing=True, image_features="pixels",  # as params/paper.yaml
                           lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]})
    return as_params(params)  # validated (a local folder needs revision null), the schema's defaults filled


def test_pretrained_backbone_is_bf16_sdpa_with_checkpointing(hub_params):
    model, tokenizer, processor = load_backbone(hub_params, data_dir=None)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and model.dtype == torch.bfloat16
    vision = model.config.vision_config  # Qwen2-VL's patch geometry, as the image processor's
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (14, 2, 2)
    assert (processor.patch_size, processor.merge_size, processor.temporal_patch_size) == (14, 2, 2)
    assert model.config.text_config._attn_implementation == LAST_ROW_SDPA
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert model.is_gradient_checkpointing
    assert tokenizer.padding_side == "left"
    pixels = hub_params["model"]["image_pixels"]
    assert processor.size.shortest_edge == processor.size.longest_edge == pixels  # min = max pixels


def test_paper_path_trains_adapters_in_bf16_with_every_loss_term(hub_params):
    set_seed(0)
    embedder, objective, optimizer, *_ = build_trainer(hub_params, "ssame", make_accelerator())
    rows = training_rows(Path(hub_params["results_dir"]) / "data")
    batch = rows[rows["dataset"].isin(["MiniAttrVQA", "MiniGround"])].head(8)
    record = objective.backward(batch)
    assert record["loss_subject"] > 0 and record["loss_attn"] > 0
    grads = {n: p.grad for n, p in embedder.named_parameters() if p.grad is not None}
    assert any("lora_B" in n for n in grads) and any(n.startswith("regen.") for n in grads)
    assert not any("lora" not in n and n.startswith("backbone.") for n in grads)  # base weights frozen
    assert all(torch.isfinite(g.float()).all() for g in grads.values())
    optimizer.step()
