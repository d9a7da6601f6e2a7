"""Detector experts (OWLv2, Grounding DINO, SAM refinement) on the rehearsal's tiny random models, loaded from disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssame.rehearsal.models import write_tiny_models
from ssame.saliency.detectors import (
    GroundingDinoExpert,
    Owlv2Expert,
    Refined,
    SamRefiner,
    boxes_to_map,
    grounding_prompt,
)
from ssame.saliency.experts import EXPERTS, build_expert

SIZES = [(40, 70), (50, 30), (33, 33)]
PHRASES = [["red circle", "blue square"], [], ["x"]]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_models(tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="module")
def owl_dir(models) -> Path:
    return models["owlv2"]


@pytest.fixture(scope="module")
def dino_dir(models) -> Path:
    return models["grounding_dino"]


@pytest.fixture(scope="module")
def sam_dir(models) -> Path:
    return models["sam"]


def _owl(owl_dir: Path, threshold: float = 0.0, batch_size: int = 2) -> Owlv2Expert:
    return Owlv2Expert(owl_dir, revision=None, threshold=threshold, batch_size=batch_size, device="cpu")


def _dino(dino_dir: Path, box_threshold: float = 0.0, text_threshold: float = 0.0) -> GroundingDinoExpert:
    return GroundingDinoExpert(dino_dir, revision=None, box_threshold=box_threshold, text_threshold=text_threshold,
                               batch_size=2, device="cpu")


@pytest.fixture(scope="module")
def owl(owl_dir) -> Owlv2Expert:
    return _owl(owl_dir)


@pytest.fixture(scope="module")
def dino(dino_dir) -> GroundingDinoExpert:
    return _dino(dino_dir)


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
    for image in images:  # alone, unpadded by larger images: the coarsest feature level stays above 1 x 1
        _check_maps(dino([image], [["x"]]), [image], [["x"]])


def test_grounding_prompt():
    assert grounding_prompt(["Red Circle", " blue square. "]) == "red circle. blue square."


@pytest.mark.parametrize("make", [
    lambda owl_dir, dino_dir: _owl(owl_dir, threshold=1.01),
    lambda owl_dir, dino_dir: _dino(dino_dir, box_threshold=1.01),
    lambda owl_dir, dino_dir: _dino(dino_dir, box_threshold=0.0, text_threshold=1.01),
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


def _refiner(sam_dir: Path, batch_size: int) -> SamRefiner:
    return SamRefiner(sam_dir, revision=None, device="cpu", batch_size=batch_size)


def test_sam_refined(owl, sam_dir, images):
    refiner = _refiner(sam_dir, 2)
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


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_sam_is_batched_and_matches_one_image_at_a_time(sam_dir):
    """All boxes of a batch of images go through one SAM forward pass; the masks equal one call per image, whatever
    the other images' box counts (the processor needs equal counts, so shorter box lists are padded)."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 70), (50, 30), (33, 33), (64, 20),
                                                                            (25, 45)]]
    detections = [(np.array([[2, 3, 60, 35], [10, 0, 30, 20], [0, 0, 70, 40]]), np.array([0.9, 0.5, 0.3])),
                  (np.zeros((0, 4)), np.zeros(0)),  # no box: an all-zero map and no SAM input
                  (np.array([[5, 5, 20, 30]]), np.array([0.7])),
                  (np.array([[0, 10, 20, 50], [3, 3, 15, 15]]), np.array([0.4, 0.8])),
                  (np.array([[1, 1, 44, 24]]), np.array([1.0]))]
    batched, single = _refiner(sam_dir, 3), _refiner(sam_dir, 1)
    batched_calls, single_calls = _count_calls(batched.model), _count_calls(single.model)
    together = batched(images, detections)
    apart = [single([image], [detection])[0] for image, detection in zip(images, detections, strict=True)]
    assert batched_calls[0] == 2  # 4 images with boxes, 3 per pass
    assert single_calls[0] == 4
    assert not together[1].any() and any(m.any() for m in together)  # non-trivial masks: the comparison bites
    for a, b in zip(together, apart, strict=True):
        np.testing.assert_array_equal(a, b)


def test_build_expert_refines_on_the_detector_device(owl_dir, sam_dir, images):
    """Params `sam: {model, revision}` wrap the detector in SAM refinement on the detector's (resolved) device."""
    args = {"model": str(owl_dir), "revision": None, "threshold": 0.0, "batch_size": 2, "device": "auto"}
    refined = build_expert("owlv2", **args, sam={"model": str(sam_dir), "revision": None})
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(refined, Refined) and refined.detector.device == refined.refiner.device == expected
    assert refined.refiner.batch_size == 2
    assert next(refined.refiner.model.parameters()).device.type == expected.type
    plain = build_expert("owlv2", **args, sam=None)
    assert isinstance(plain, Owlv2Expert) and plain.device == expected
