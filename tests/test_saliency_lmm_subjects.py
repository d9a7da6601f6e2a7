import shutil

import numpy as np
import pytest
import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ssame.data.tokenizer import train_tokenizer
from ssame.saliency.lmm_subjects import LMMSubjects, build_prompt, parse_phrases

TEXTS = ["<|image_1|> What is the position of the red circle?", "Is the blue square left of the green triangle?",
         "a large red circle", "Represent the given image.", "How many yellow squares are there?"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random-init Qwen2-VL, its tokenizer (with chat tokens) and image processor, saved together."""
    out = tmp_path_factory.mktemp("lmm")
    tokenizer = train_tokenizer(TEXTS * 3, 320)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>")
           for name in ["image_pad", "video_pad", "vision_start", "vision_end"]}
    pad = tokenizer.pad_token_id
    config = Qwen2VLConfig(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": len(tokenizer), "max_position_embeddings": 512,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                     "bos_token_id": pad, "eos_token_id": pad, "pad_token_id": pad},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "patch_size": 8,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["image_pad"], video_token_id=ids["video_pad"],
        vision_start_token_id=ids["vision_start"], vision_end_token_id=ids["vision_end"],
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=64 * 64,
                             max_pixels=64 * 64).save_pretrained(out)
    return out


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, np.ndarray | None]]:
    """Five pairs: images of different sizes mixed with text-only pairs."""
    return [(TEXTS[0], _image(64, 64, 0)), (TEXTS[1], None), (TEXTS[2], _image(48, 96, 1)), (TEXTS[3], None),
            (TEXTS[4], _image(100, 40, 2))]


def test_build_prompt():
    prompt = build_prompt("<|image_1|> What is the position of the red circle?", 3)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>"
        "Text: \"What is the position of the red circle?\"\n"
        "List the noun phrase(s) naming the object(s) this text refers to in the image, separated by commas. "
        "Answer with the phrases only.<|im_end|>\n<|im_start|>assistant\n")
    text_only = build_prompt("a red circle", 0)
    assert "<|vision_start|>" not in text_only and "<|image_pad|>" not in text_only
    assert "refers to, separated" in text_only and 'Text: "a red circle"' in text_only


@pytest.mark.parametrize(("answer", "phrases"), [
    ("red circle", ["red circle"]),
    ("Red circle, blue square.", ["red circle", "blue square"]),
    ('"the red circle"; "the blue square"', ["the red circle", "the blue square"]),
    ("red circle and blue square", ["red circle", "blue square"]),
    ("- red circle\n- Blue Square\n", ["red circle", "blue square"]),
    ("1. red circle\n2) blue square\n(3) green triangle", ["red circle", "blue square", "green triangle"]),
    ("* red circle\n• blue square", ["red circle", "blue square"]),
    ("red circle, red circle, Red Circle!", ["red circle"]),
    ("3 yellow squares", ["3 yellow squares"]),
    ("the dog's ball, 'cat'", ["the dog's ball", "cat"]),
    ("red   circle ,, ;\n\n", ["red circle"]),
    ("“red circle”", ["red circle"]),
    ("sand castle, brandy glass", ["sand castle", "brandy glass"]),
    ("the text refers to a large red circle on the left side, square", ["square"]),
    ("", []),
    (" . , ", []),
])
def test_parse_phrases(answer, phrases):
    assert parse_phrases(answer) == phrases


def test_encode_expands_image_pads(model_dir, pairs):
    subjects = LMMSubjects(model_dir)
    inputs = subjects.encode(pairs)
    grids = inputs["image_grid_thw"]
    assert grids.shape == (3, 3) and grids[0].tolist() == [1, 8, 8]
    assert len(set(grids.prod(-1).tolist())) > 1  # the three image sizes give different token counts
    pad_id = subjects.image_token_id
    tokens = [int(g.prod()) // 4 for g in grids]
    assert tokens[0] == 16
    assert (inputs["input_ids"] == pad_id).sum(-1).tolist() == [tokens[0], 0, tokens[1], 0, tokens[2]]
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == pad_id).int())
    assert inputs["attention_mask"][:, -1].all()  # left padding
    assert inputs["pixel_values"].shape[0] == int(grids.prod(-1).sum())


def test_generation_batched_mixed_and_deterministic(model_dir, pairs):
    big = LMMSubjects(model_dir, max_new_tokens=6, batch_size=5)(pairs)
    small = LMMSubjects(model_dir, max_new_tokens=6, batch_size=2)(pairs)
    assert len(big) == len(pairs)
    assert all(isinstance(p, list) and all(isinstance(s, str) for s in p) for p in big)
    assert any(big)  # the random model does produce phrases, so the comparison below is not vacuous
    assert small == big
    assert LMMSubjects(model_dir, max_new_tokens=6)(pairs[1:2]) == big[1:2]


def test_bad_pairs_are_named(model_dir, pairs):
    subjects = LMMSubjects(model_dir)
    with pytest.raises(ValueError, match="pair 1"):
        subjects([pairs[0], ("  ", None)])
    with pytest.raises(ValueError, match="pair 0"):
        subjects([("<|image_1|>", pairs[0][1])])
    with pytest.raises(ValueError, match="pair 1: image must be"):
        subjects([pairs[0], ("a red circle", np.zeros((8, 8), dtype=np.uint8))])


def test_tokenizer_without_chat_tokens_is_rejected(model_dir, tmp_path):
    shutil.copytree(model_dir, tmp_path, dirs_exist_ok=True)
    train_tokenizer(TEXTS, 320).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"<\|im_start\|>"):
        LMMSubjects(tmp_path)
