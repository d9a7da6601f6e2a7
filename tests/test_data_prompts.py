"""VLM2Vec v1 prompt layout, per-backbone image tokens and the MMEB instruction table."""

from __future__ import annotations

import pytest

from ssame.data.prompts import IMAGE_TOKENS, format_v1, instruction, substitute_image_token


def test_format_v1_layout():
    assert format_v1("Represent the given image", image=True) == "<|image_1|>\nRepresent the given image"
    assert format_v1("Represent the given image with the following question", "What is it?", image=True) == (
        "<|image_1|>\nRepresent the given image with the following question: What is it?")
    assert format_v1("Retrieve an image of this news caption", "A flood.") == (
        "Retrieve an image of this news caption: A flood.")
    assert format_v1("", "tench") == "tench"


def test_substitute_image_token():
    text = format_v1("Represent the given image", image=True)
    assert substitute_image_token(text, "qwen2_vl") == "<|image_pad|>\nRepresent the given image"
    assert substitute_image_token(text, "llava_next") == "<image>\nRepresent the given image"
    assert substitute_image_token(text, "phi3_v") == text
    assert substitute_image_token("tench", "qwen2_vl") == "tench"
    with pytest.raises(ValueError, match=r"'idefics'.*llava_next"):
        substitute_image_token(text, "idefics")
    with pytest.raises(ValueError, match="at most one"):
        substitute_image_token(text + IMAGE_TOKENS["phi3_v"], "qwen2_vl")


def test_instruction_lookup():
    assert instruction("MSCOCO_i2t", "qry") == "Find an image caption describing the given everyday image"
    assert instruction("MSCOCO_t2i", "tgt") == "Represent the given image"
    assert instruction("ImageNet-1K", "tgt") == ""
    with pytest.raises(KeyError, match="NotADataset"):
        instruction("NotADataset", "qry")


def test_instructions_are_what_mmeb_eval_texts_say():
    """The MMEB-eval texts, not the paper's table: Wiki-SS-NQ says "document image" / "Represent the given image",
    MSCOCO grounding's queries "Crop the image to to isolate ..." (docs/evaluation.md)."""
    assert instruction("Wiki-SS-NQ", "qry") == "Find the document image that can answer the given query"
    assert instruction("Wiki-SS-NQ", "tgt") == "Represent the given image"
    assert instruction("MSCOCO", "qry") == "Crop the image to to isolate the object labeled as"
