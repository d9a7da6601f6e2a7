"""LMM subject phrases (Qwen2-VL Instruct) on the rehearsal's tiny random Qwen2-VL, loaded from disk."""

import shutil

import numpy as np
import pytest
import torch

from ssame.data.tokenizer import train_tokenizer
from ssame.rehearsal.models import write_tiny_models
from ssame.saliency.lmm_subjects import LMMSubjects, build_prompt, parse_phrases

TEXTS = ["<|image_1|> What is the position of the red circle?", "Is the blue square left of the green triangle?",
         "a large red circle", "Represent the given image.", "How many yellow squares are there?"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The rehearsal's tiny Qwen2-VL in the LMM's place: tokenizer with chat tokens, image processor (patch 14)."""
    return write_tiny_models(tmp_path_factory.mktemp("models"), seed=0)["lmm"]


def _lmm(model_dir, max_new_tokens: int = 24, batch_size: int = 8) -> LMMSubjects:
    return LMMSubjects(model_dir, revision=None, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       device="auto", dtype="float32")


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
    subjects = _lmm(model_dir)
    inputs = subjects.encode(pairs)
    grids = inputs["image_grid_thw"]
    # patch 14, merge 2 as in Qwen2-VL: 64 x 64 -> 56 x 56 pixels -> 4 x 4 patches -> 2 x 2 merged tokens
    assert grids.shape == (3, 3) and grids.tolist() == [[1, 4, 4], [1, 4, 6], [1, 8, 2]]
    pad_id = subjects.image_token_id
    tokens = [int(g.prod()) // 4 for g in grids]
    assert tokens == [4, 6, 4]
    assert (inputs["input_ids"] == pad_id).sum(-1).tolist() == [tokens[0], 0, tokens[1], 0, tokens[2]]
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == pad_id).int())
    assert inputs["attention_mask"][:, -1].all()  # left padding
    assert inputs["pixel_values"].shape[0] == int(grids.prod(-1).sum())


def test_generation_batched_mixed_and_deterministic(model_dir, pairs):
    big = _lmm(model_dir, max_new_tokens=6, batch_size=5)(pairs)
    small = _lmm(model_dir, max_new_tokens=6, batch_size=2)(pairs)
    assert len(big) == len(pairs)
    assert all(isinstance(p, list) and all(isinstance(s, str) for s in p) for p in big)
    assert any(big)  # the random model does produce phrases, so the comparison below is not vacuous
    assert small == big
    assert _lmm(model_dir, max_new_tokens=6)(pairs[1:2]) == big[1:2]


def test_bad_pairs_are_named(model_dir, pairs):
    subjects = _lmm(model_dir)
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
        _lmm(tmp_path)
