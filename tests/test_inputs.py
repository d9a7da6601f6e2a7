"""InputBuilder: VLM2Vec's in-place image-token substitution for Qwen2-VL, text truncation, M-RoPE positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from ssame.config import load_params
from ssame.model import InputBuilder

# The default tiny backbone's merged grid of a 96 x 96 image: 96 / (patch_size x spatial_merge_size) per side.
_VISION = load_params(Path(__file__).parents[1] / "params" / "default.yaml")["model"]["tiny"]["vision"]
SIDE = 96 // (_VISION["patch_size"] * _VISION["spatial_merge_size"])
TOKENS = SIDE * SIDE


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
    assert _row(batch, 0) == _ids(tokenizer, "a red ") + [pad] * TOKENS + _ids(tokenizer, "\nwhat colour?")
    assert _row(batch, 1) == _ids(tokenizer, "a red square")
    assert _row(batch, 2) == [pad] * TOKENS  # a bare image: the image token alone
    assert _row(batch, 3) == [pad] * TOKENS + _ids(tokenizer, "left")  # no placeholder: the image comes first
    markers = tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    assert not torch.isin(batch.inputs["input_ids"], torch.tensor(markers)).any()


def test_truncation_spares_image_tokens_and_fills_text_before_first(tokenizer, tiny_stack, image_dir):
    before, after = "a red circle on the left " * 4, " what colour is the square?" * 4
    head, tail = _ids(tokenizer, before), _ids(tokenizer, after)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for budget in (3, len(head) + 2):
        batch = InputBuilder(tokenizer, tiny_stack[1], image_dir, budget)([f"{before}<|image_1|>{after}"], ["img0.png"])
        kept = head[:budget]
        assert _row(batch, 0) == kept + [pad] * TOKENS + tail[: budget - len(kept)]


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
    rows, cols = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    assert torch.equal(pos[0][visual], torch.full((TOKENS,), start))
    assert torch.equal(pos[1][visual], start + rows.flatten())
    assert torch.equal(pos[2][visual], start + cols.flatten())
    after = pos[:, visual.nonzero().max() + 1:]
    assert torch.equal(after, (start + SIDE + torch.arange(after.shape[1])).expand(3, -1))


def test_no_truncation_keeps_every_text_token(tokenizer, tiny_stack, image_dir):
    """`evaluate.max_text_tokens: null` (VLM2Vec evaluates uncut texts)."""
    before, after = "a red circle on the left " * 8, " what colour is the square?\n" * 8
    batch = InputBuilder(tokenizer, tiny_stack[1], image_dir, None)([f"{before}<|image_1|>{after}", after],
                                                                     ["img0.png", ""])
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert _row(batch, 0) == _ids(tokenizer, before) + [pad] * TOKENS + _ids(tokenizer, after)
    assert _row(batch, 1) == _ids(tokenizer, after)


def test_tokens_match_the_whole_string_as_vlm2vec_tokenises_it(tokenizer, tiny_stack, image_dir):
    """VLM2Vec's processor expands the pad in the string and tokenises it whole; MMEB's trailing newline stays the
    last (pooled) token."""
    texts = ["<|image_1|>\nRepresent the given image with the following question: what colour?\n",
             "Find me an everyday image that matches the given caption: a red square.\n",
             "<|image_1|>\nFind a Wikipedia image that answers this question: why?\n"]
    batch = InputBuilder(tokenizer, tiny_stack[1], image_dir, None)(texts, ["img0.png", "", ""])
    for row, (text, pads) in enumerate(zip(texts, [TOKENS, 0, 1], strict=True)):
        expanded = text.replace("<|image_1|>", "<|image_pad|>" * max(pads, 1))
        assert _row(batch, row) == _ids(tokenizer, expanded)
        assert _row(batch, row)[-1] == _ids(tokenizer, text.split(" ")[-1])[-1]


def _square_tensors(tokenizer, processor, root, side):
    return InputBuilder(tokenizer, processor, root, 16, image_side=side)(["<|image_1|> x"], ["img.png"])


def test_square_resize_as_vlm2vec(tokenizer, default_params, tmp_path):
    """`model.image_resize: square`: every image is resized to side x side first (VLM2Vec's 1344 x 1344)."""
    from PIL import Image

    from ssame.model.backbone import image_processor_for

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 160, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    params = default_params.to_dict()
    params["model"].update(image_resize="square", image_side=96)
    square = _square_tensors(tokenizer, image_processor_for(params), tmp_path, 96)
    assert square.grids == [(SIDE, SIDE)]
    resized = Image.open(tmp_path / "img.png").resize((96, 96)).convert("RGB")
    expected = image_processor_for(params)(images=[resized], return_tensors="pt")
    assert torch.equal(square.inputs["pixel_values"], expected["pixel_values"])
    pixels = InputBuilder(tokenizer, image_processor_for(default_params), tmp_path, 16)(["<|image_1|> x"], ["img.png"])
    assert pixels.grids != square.grids  # the pixel budget keeps the aspect ratio
    with pytest.raises(ValueError, match=f"multiple of patch_size x merge_size = {96 // SIDE}"):
        _square_tensors(tokenizer, image_processor_for(params), tmp_path, 100)
    with pytest.raises(ValueError, match="resized again"):
        _square_tensors(tokenizer, image_processor_for(params), tmp_path, 128)  # processor budget is 96²


def test_square_and_pixels_agree_on_mmeb_mini_images(tokenizer, default_params, image_dir):
    """MMEB-mini's 96 x 96 images: `square` with side 96 and `pixels` 9216 give identical tensors."""
    from ssame.model.backbone import image_processor_for

    params = default_params.to_dict()
    params["model"].update(image_resize="square", image_side=96)
    texts, images = ["<|image_1|> a", "b", "<|image_1|> c"], ["img0.png", "", "img2.png"]
    square = InputBuilder(tokenizer, image_processor_for(params), image_dir, 16, image_side=96)(texts, images)
    pixels = InputBuilder(tokenizer, image_processor_for(default_params), image_dir, 16)(texts, images)
    assert square.inputs.keys() == pixels.inputs.keys()
    for key, value in pixels.inputs.items():
        assert torch.equal(square.inputs[key], value), key


@pytest.mark.parametrize(("side", "patch", "merge"), [(96, 12, 2), (56, 14, 2), (48, 12, 2)])
def test_batched_patches_are_the_processors_bit_for_bit(side, patch, merge):
    """`pixel_patches` (one array pass per batch) equals Qwen2VLImageProcessorPil image by image, exactly, for random
    RGB images at the processor's pixel budget; batches it would resize or mix sizes go through it unchanged."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    from ssame.model.inputs import pixel_patches

    processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=2,
                                         size={"shortest_edge": side * side, "longest_edge": side * side})
    rng = np.random.default_rng(side)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(5)]
    grey = Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8))  # converted by the processor
    other = Image.fromarray(rng.integers(0, 256, (side + 7, side - 5, 3), dtype=np.uint8))  # resized by it
    class Unused:  # the processor's settings, but calling it fails: the batch must take the array pass
        def __getattr__(self, name):
            return getattr(processor, name)

        def __call__(self, **_):
            raise AssertionError("fell back to the processor")

    for batch in (images[:1], images, [*images[:2], other], [other], [grey, images[0]]):
        same_size = batch in (images[:1], images)
        ours = pixel_patches(Unused() if same_size else processor, batch)
        theirs = processor(images=batch, return_tensors="pt")
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
