"""Detector experts (OWLv2, Grounding DINO, SAM refinement) on tiny random models saved and loaded from disk."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPTokenizer,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
    ResNetConfig,
    SamConfig,
    SamImageProcessor,
    SamModel,
    SamProcessor,
)

from ssame.saliency.detectors import (
    GroundingDinoExpert,
    Owlv2Expert,
    Refined,
    SamRefiner,
    boxes_to_map,
    grounding_prompt,
)
from ssame.saliency.experts import EXPERTS

TINY = dict(num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
SIZES = [(40, 70), (50, 30), (33, 33)]
PHRASES = [["red circle", "blue square"], [], ["x"]]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory) -> Path:
    """OWLv2 with a byte-level CLIP tokenizer (no merges) and 64-pixel inputs; zero box-head output layer, so every
    patch predicts its prior box (a quarter of the image, centred on the patch) and boxes are never degenerate."""
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": i + len(chars) for i, c in enumerate(chars)}
    bos, eos = len(vocab), len(vocab) + 1
    vocab |= {"<|startoftext|>": bos, "<|endoftext|>": eos}
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16))
    config = Owlv2Config(
        text_config=dict(hidden_size=32, vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos, **TINY),
        vision_config=dict(hidden_size=32, image_size=64, patch_size=16, **TINY), projection_dim=32)
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config)
    torch.nn.init.zeros_(model.box_head.dense2.weight)
    path = tmp_path_factory.mktemp("owlv2")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory) -> Path:
    """Grounding DINO with a tiny ResNet backbone, a one-layer BERT and a letter-level WordPiece vocabulary."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."] + [c for c in string.ascii_lowercase] + [
        "##" + c for c in string.ascii_lowercase]
    vocab = {t: i for i, t in enumerate(tokens)}
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}),
        tokenizer=BertTokenizer(vocab=vocab))
    config = GroundingDinoConfig(
        backbone_config=ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1],
                                     out_features=["stage2", "stage3", "stage4"]),
        use_timm_backbone=False, use_pretrained_backbone=False,
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, encoder_n_points=2, decoder_n_points=2,
        max_text_len=32)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("grounding_dino")
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory) -> Path:
    """SAM on 64-pixel inputs (4 x 4 image embedding, 16 x 16 low-resolution masks)."""
    processor = SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 64},
                                                               pad_size={"height": 64, "width": 64}))
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, window_size=2, global_attn_indexes=[1], num_pos_feats=8,
                           mlp_dim=32),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                 iou_head_hidden_dim=16))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam")
    SamModel(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def owl(owl_dir) -> Owlv2Expert:
    return Owlv2Expert(owl_dir, threshold=0.0, batch_size=2)


@pytest.fixture(scope="module")
def dino(dino_dir) -> GroundingDinoExpert:
    return GroundingDinoExpert(dino_dir, box_threshold=0.0, text_threshold=0.0, batch_size=2)


def _check_maps(maps: list[np.ndarray], images: list[np.ndarray], phrases: list[list[str]]) -> None:
    assert len(maps) == len(images)
    for sal, image, words in zip(maps, images, phrases, strict=True):
        assert sal.shape == image.shape[:2] and sal.dtype == np.float32
        assert sal.min() >= 0 and sal.max() <= 1
        assert sal.max() == (1.0 if words else 0.0)  # every phrase-bearing image has a box at threshold 0


def test_boxes_to_map_exact():
    boxes = np.array([[1, 1, 3, 3], [2, 2, 5, 4], [0.5, 3.2, 1.5, 3.8]])
    expected = np.array([[0, 0, 0, 0, 0, 0],
                         [0, .5, .5, 0, 0, 0],
                         [0, .5, 1, 1, 1, 0],
                         [.25, .25, 1, 1, 1, 0],
                         [0, 0, 0, 0, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(boxes_to_map(boxes, np.array([0.5, 1.0, 0.25]), 5, 6), expected)


def test_boxes_to_map_clips_ignores_and_normalises():
    sal = boxes_to_map(np.array([[-3, -3, 2, 1], [10, 10, 12, 12], [1, 1, 1, 3]]), np.array([0.3, 0.9, 0.9]), 4, 4)
    np.testing.assert_array_equal(sal, np.pad(np.ones((1, 2), np.float32), ((0, 3), (0, 2))))
    assert not boxes_to_map(np.array([[0, 0, 4, 4], [1, 1, 2, 2]]), np.array([0.0, -1.0]), 4, 4).any()
    empty = boxes_to_map(np.zeros((0, 4)), np.zeros(0), 3, 5)
    assert empty.shape == (3, 5) and empty.dtype == np.float32 and not empty.any()


@pytest.mark.parametrize(("boxes", "scores", "size"), [
    (np.zeros((2, 3)), np.zeros(2), (4, 4)),
    (np.zeros((2, 4)), np.zeros(3), (4, 4)),
    (np.zeros((1, 4)), np.ones(1), (0, 4)),
])
def test_boxes_to_map_rejects_bad_input(boxes, scores, size):
    with pytest.raises(ValueError):
        boxes_to_map(boxes, scores, *size)


def test_registered():
    assert EXPERTS["owlv2"] is Owlv2Expert and EXPERTS["grounding_dino"] is GroundingDinoExpert


def test_owlv2_maps(owl, images):
    _check_maps(owl(images, PHRASES), images, PHRASES)
    for (boxes, scores), words in zip(owl.detect(images, PHRASES), PHRASES, strict=True):
        assert boxes.shape == (len(scores), 4) and boxes.dtype == scores.dtype == np.float32
        assert len(scores) == (16 if words else 0)  # one box per 16-pixel patch, all above threshold 0


def test_owlv2_padded_queries_never_win(owl, images):
    """An image's detections do not depend on the other images' query counts in its batch."""
    alone = owl.detect(images[2:], [["x"]])[0]
    batched = owl.detect(images[1:], [["red circle", "blue square", "green"], ["x"]])[1]
    for a, b in zip(alone, batched, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_grounding_dino_maps(dino, images):
    _check_maps(dino(images, PHRASES), images, PHRASES)


def test_grounding_prompt():
    assert grounding_prompt(["Red Circle", " blue square. "]) == "red circle. blue square."


@pytest.mark.parametrize("make", [
    lambda owl_dir, dino_dir: Owlv2Expert(owl_dir, threshold=1.01),
    lambda owl_dir, dino_dir: GroundingDinoExpert(dino_dir, box_threshold=1.01),
    lambda owl_dir, dino_dir: GroundingDinoExpert(dino_dir, box_threshold=0.0, text_threshold=1.01),
], ids=["owlv2", "dino_box", "dino_text"])
def test_threshold_above_one_gives_zero_maps(make, owl_dir, dino_dir, images):
    expert = make(owl_dir, dino_dir)
    assert all(not sal.any() for sal in expert(images, PHRASES))
    assert all(len(scores) == 0 for _, scores in expert.detect(images, PHRASES))


@pytest.mark.parametrize(("images_", "phrases", "match"), [
    ([np.zeros((8, 8, 3), np.uint8)] * 2, [["x"]], "2 images but 1 phrase lists"),
    ([np.zeros((8, 8), np.uint8)], [["x"]], "RGB uint8"),
    ([np.zeros((8, 8, 3), np.float32)], [["x"]], "RGB uint8"),
    ([np.zeros((8, 8, 3), np.uint8)], [["x", " "]], "non-blank strings"),
    ([np.zeros((8, 8, 3), np.uint8)], ["x"], "non-blank strings"),
])
def test_bad_input_raises(owl, dino, images_, phrases, match):
    for expert in (owl, dino):
        with pytest.raises(ValueError, match=match):
            expert(images_, phrases)


def test_sam_refined(owl, sam_dir, images):
    refiner = SamRefiner(sam_dir)
    refined = Refined(owl, refiner)
    assert refined.name == "owlv2+sam" and refined.phrase_conditioned
    maps = refined(images, PHRASES)
    assert len(maps) == len(images)
    for sal, image, words in zip(maps, images, PHRASES, strict=True):
        assert sal.shape == image.shape[:2] and sal.dtype == np.float32
        assert sal.min() >= 0 and sal.max() <= 1 and (words or not sal.any())
    sal = refiner(images[:1], [(np.array([[0, 0, 70, 40], [5, 5, 5, 30]]), np.array([0.8, 0.9]))])[0]
    assert sal.max() in (0.0, 1.0)  # the degenerate box is dropped; the full-image box's mask is max-normalised
    with pytest.raises(ValueError, match="2 images but 1 detections"):
        refiner(images[:2], [(np.zeros((0, 4)), np.zeros(0))])
