"""Backbone factory: Qwen2-VL from a declarative tiny config (default) or from pretrained weights (paper)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ssame.model.attention import attention_implementation
from ssame.model.inputs import IMAGE_PAD, VISION_END, VISION_START

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_config(tiny: dict[str, Any], tokenizer, attn_implementation: str | dict[str, str]) -> Qwen2VLConfig:
    """A random-init Qwen2-VL config from params `model.tiny`, with token ids taken from the tokenizer."""
    text, vision = dict(tiny["text"]), dict(tiny["vision"])
    mrope = text.pop("mrope_section")
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if sum(mrope) * 2 != head_dim:
        raise ValueError(f"model.tiny.text.mrope_section must sum to head_dim/2 = {head_dim // 2}, got {mrope}")
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in
           [("image", IMAGE_PAD), ("video", "<|video_pad|>"), ("start", VISION_START), ("end", VISION_END)]}
    pad = tokenizer.pad_token_id
    config = Qwen2VLConfig(
        text_config={**text, "vocab_size": len(tokenizer), "bos_token_id": pad, "eos_token_id": pad,
                     "pad_token_id": pad,
                     "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0}},
        vision_config={**vision, "hidden_size": text["hidden_size"]},
        image_token_id=ids["image"], video_token_id=ids["video"],
        vision_start_token_id=ids["start"], vision_end_token_id=ids["end"],
    )
    config._attn_implementation = attn_implementation
    return config


def square_side(model: Mapping[str, Any]) -> int | None:
    """The side every image is resized to first (params `model`; `InputBuilder(image_side=...)`), None unless
    `model.image_resize` is square."""
    return model["image_side"] if model["image_resize"] == "square" else None


def pixel_budget(model: Mapping[str, Any]) -> int:
    """Min = max pixels of the Qwen2-VL processor: image_side² (square: the resized images pass unchanged) or
    image_pixels (pixels: aspect ratio kept)."""
    side = square_side(model)
    return side * side if side is not None else model["image_pixels"]


def image_processor_for(params: Mapping[str, Any], source: str | None = None) -> Qwen2VLImageProcessorPil:
    """Qwen2-VL image preprocessing with a fixed pixel budget (min = max = `pixel_budget`)."""
    model = params["model"]
    pixels = pixel_budget(model)
    if source is None:
        vision = model["tiny"]["vision"]
        return Qwen2VLImageProcessorPil(patch_size=vision["patch_size"], merge_size=vision["spatial_merge_size"],
                                        temporal_patch_size=vision["temporal_patch_size"],
                                        min_pixels=pixels, max_pixels=pixels)
    return Qwen2VLImageProcessorPil.from_pretrained(source, revision=model["revision"], min_pixels=pixels,
                                                    max_pixels=pixels)


def load_backbone(params: Mapping[str, Any], data_dir: Path, pretrained: Path | None = None):
    """(model, tokenizer, image processor) for training: tiny random init, the tiny model the pretrain stage wrote
    (`pretrained`, a save_pretrained folder) or `from_pretrained` at `model.revision` (None only for a local
    folder), in `model.dtype`, gradient checkpointing when `model.gradient_checkpointing`."""
    model_cfg = params["model"]
    dtype = DTYPES[model_cfg["dtype"]]
    # sdpa / flash keep their kernels; the text model returns the pooled token's attention row on request
    attn = attention_implementation(model_cfg["attn_implementation"], needs_weights=True)
    if model_cfg["backbone"] == "tiny" and pretrained is not None:
        tokenizer = AutoTokenizer.from_pretrained(pretrained)
        model = Qwen2VLForConditionalGeneration.from_pretrained(pretrained, dtype=dtype, attn_implementation=attn)
        processor = Qwen2VLImageProcessorPil.from_pretrained(pretrained)
    elif model_cfg["backbone"] == "tiny":
        tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
        config = tiny_config(model_cfg["tiny"], tokenizer, attn)
        model = Qwen2VLForConditionalGeneration(config).to(dtype)
        processor = image_processor_for(params)
    else:
        source, revision = model_cfg["backbone"], model_cfg["revision"]
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, padding_side="left")
        model = Qwen2VLForConditionalGeneration.from_pretrained(
            source, revision=revision, dtype=dtype, attn_implementation=attn)
        processor = image_processor_for(params, source)
    if model_cfg["gradient_checkpointing"]:
        model.activation_checkpointing_enable()  # non-reentrant: adapters under frozen embeddings still get grads
    return model, tokenizer, processor
