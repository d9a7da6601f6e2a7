"""InputBuilder: VLM2Vec's in-place image-token substitution for Qwen2-VL, text truncation, M-RoPE positions."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from ssame.model import InputBuilder


@pytest.fixture
def builder(tokenizer, tiny_stack, image_dir):
    return InputBuilder(tokenizer, tiny_stack[1], image_dir, max_text_tokens=16)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _row(batch, row: int) -> list[int]:
    return batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()].tolist()


def test_placeholder_replaced_in_place_without_markers(builder, tokenizer):
    pad = builder.image_token_id
    batch = builder(["a red <|image_1|>\nwhat colour?", "a red square", "", "left"],
                    ["img0.png", "", "img1.png", "img2.png"])
    assert _row(batch, 0) == _ids(tokenizer, "a red ") + [pad] * 36 + _ids(tokenizer, "\nwhat colour?")
    assert _row(batch, 1) == _ids(tokenizer, "a red square")
    assert _row(batch, 2) == [pad] * 36  # a bare image: the image token alone
    assert _row(batch, 3) == [pad] * 36 + _ids(tokenizer, "left")  # no placeholder: the image comes first
    markers = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    assert not torch.isin(batch.inputs["input_ids"], torch.tensor(markers)).any()


def test_truncation_spares_image_tokens_and_fills_text_before_first(tokenizer, tiny_stack, image_dir):
    before, after = "a red circle on the left " * 4, " what colour is the square?" * 4
    head, tail = _ids(tokenizer, before), _ids(tokenizer, after)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for budget in (3, len(head) + 2):
        batch = InputBuilder(tokenizer, tiny_stack[1], image_dir, budget)([f"{before}<|image_1|>{after}"], ["img0.png"])
        kept = head[:budget]
        assert _row(batch, 0) == kept + [pad] * 36 + tail[: budget - len(kept)]


def test_more_than_one_placeholder_is_rejected(builder):
    with pytest.raises(ValueError, match="2 <\\|image_1\\|> placeholders"):
        builder(["<|image_1|> and <|image_1|>"], ["img0.png"])


def test_visual_tokens_get_grid_positions(builder, tiny_stack):
    """M-RoPE without vision markers: transformers groups tokens by mm_token_type_ids (its get_rope_index)."""
    batch = builder(["a red <|image_1|>\nwhat colour?", "a red square"], ["img0.png", ""])
    model = Qwen2VLForConditionalGeneration(tiny_stack[0]).eval()
    seen = {}
    model.model.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.update(pos=kwargs["position_ids"]), with_kwargs=True)
    with torch.no_grad():
        model(**batch.inputs)
    pos = seen["pos"][:, 0]  # (temporal, height, width) of row 0, the longer one (no padding)
    visual = batch.inputs["mm_token_type_ids"][0].bool()
    start = int(visual.nonzero().min())  # the image's first position follows the text before it
    rows, cols = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(pos[0][visual], torch.full((36,), start))
    assert torch.equal(pos[1][visual], start + rows.flatten())
    assert torch.equal(pos[2][visual], start + cols.flatten())
    after = pos[:, visual.nonzero().max() + 1:]
    assert torch.equal(after, (start + 6 + torch.arange(after.shape[1])).expand(3, -1))
