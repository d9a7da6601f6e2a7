"""The paper-profile backbone path (`from_pretrained`, bf16, SDPA, gradient checkpointing, LoRA) on a tiny
random Qwen2-VL saved locally in the hub layout: no download, same classes and code path as Qwen2-VL-2B/7B."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from transformers import Qwen2VLForConditionalGeneration

from ssame.model.attention import LAST_ROW_SDPA
from ssame.model.backbone import load_backbone, tiny_config
from ssame.train.batches import training_rows
from ssame.train.recipe import build_trainer, make_accelerator


@pytest.fixture(scope="module")
def hub_params(small_built, tmp_path_factory):
    """`small_built` params with `model.backbone` = a local folder written by `save_pretrained`."""
    from transformers import AutoTokenizer

    from ssame.config import Paths
    from ssame.model.backbone import image_processor_for

    params = copy.deepcopy(small_built)
    data_dir = Paths.from_params(params).data
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    folder = tmp_path_factory.mktemp("hub") / "Qwen2-VL-tiny"
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(tiny_config(params["model"]["tiny"], tokenizer, "eager")).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor_for(params).save_pretrained(folder)
    params["model"].update(backbone=str(folder), dtype="bfloat16", attn_implementation="sdpa",
                           gradient_checkpointing=True,
                           lora={"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]})
    return params


def test_pretrained_backbone_is_bf16_sdpa_with_checkpointing(hub_params):
    model, tokenizer, processor = load_backbone(hub_params, data_dir=None)
    assert model.dtype == torch.bfloat16
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
