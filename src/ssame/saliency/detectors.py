"""Phrase-conditioned experts from open-vocabulary detectors (OWLv2, Grounding DINO), optionally refined by SAM.

A detector's `detect(images, phrases)` gives, per image, boxes (K, 4) xyxy in pixels and their scores (K,) above
its threshold; `__call__` paints them with `boxes_to_map`. `Refined(detector, SamRefiner(...))` paints SAM's masks
for the same boxes instead, with SAM on the detector's device and one SAM forward pass per batch of images.
Every model is loaded with `from_pretrained(model, revision=revision)` (revision None only for a local folder).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import (
    AutoProcessor,
    GroundingDinoForObjectDetection,
    Owlv2ForObjectDetection,
    Owlv2Processor,
    SamModel,
    SamProcessor,
)

from ssame.saliency.experts import Expert, register, resolve_device

Detections = list[tuple[np.ndarray, np.ndarray]]


def _valid_boxes(boxes: np.ndarray, scores: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the image, keeping those with a finite positive score and a positive clipped area."""
    boxes, scores = np.asarray(boxes, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (len(boxes),):
        raise ValueError(f"expected boxes (K, 4) and scores (K,), got {boxes.shape} and {scores.shape}")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    boxes = np.clip(boxes, 0, [width, height, width, height])
    keep = (np.isfinite(boxes).all(axis=1) & np.isfinite(scores) & (scores > 0)
            & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    return boxes[keep], scores[keep]


def boxes_to_map(boxes: np.ndarray, scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """(height, width) float32 map: per pixel the max score of the boxes overlapping it, scaled so the max is 1.

    Boxes are xyxy in pixels (pixel (r, c) spans [c, c + 1) x [r, r + 1)); boxes are clipped to the image, and
    boxes outside it, degenerate or with a score <= 0 are ignored. No box left gives an all-zero map.
    """
    boxes, scores = _valid_boxes(boxes, scores, height, width)
    out = np.zeros((height, width), dtype=np.float32)
    for (x0, y0, x1, y1), score in zip(boxes, scores, strict=True):
        region = out[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))]
        np.maximum(region, score, out=region)
    return _peak_normalise(out)


def _peak_normalise(sal: np.ndarray) -> np.ndarray:
    peak = sal.max()
    return (sal / peak if peak > 0 else sal).astype(np.float32)


def _check(images: list[np.ndarray], phrases: list[list[str]]) -> None:
    if len(images) != len(phrases):
        raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
    for i, (image, words) in enumerate(zip(images, phrases, strict=True)):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: expected an RGB uint8 (H, W, 3) array, got "
                             f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise ValueError(f"image {i}: phrases must be a list of non-blank strings, got {words!r}")


def _batches(phrases: list[list[str]], batch_size: int) -> Iterator[list[int]]:
    """Indices of the images that have phrases, in chunks of `batch_size`."""
    todo = [i for i, words in enumerate(phrases) if words]
    for start in range(0, len(todo), batch_size):
        yield todo[start:start + batch_size]


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32)


def _numpy(result: dict) -> tuple[np.ndarray, np.ndarray]:
    return result["boxes"].float().cpu().numpy().reshape(-1, 4), result["scores"].float().cpu().numpy()


class _Detector(Expert):
    """Shared `__call__`: `detect` then `boxes_to_map`; an image without phrases gets no boxes (a zero map)."""

    phrase_conditioned = True

    def __init__(self, batch_size: int, device: str):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.device = batch_size, torch.device(resolve_device(device))

    @classmethod
    def build(cls, *, sam: Mapping[str, Any] | None, device: str, **kwargs: Any) -> Expert:
        """From params `saliency.expert_args.<name>`: boxes refined by `sam` (on the same device) unless it is null."""
        detector = cls(device=device, **kwargs)
        if sam is None:
            return detector
        return Refined(detector, SamRefiner(sam["model"], revision=sam["revision"], device=str(detector.device),
                                            batch_size=detector.batch_size))

    def detect(self, images: list[np.ndarray], phrases: list[list[str]]) -> Detections:
        """Per image, (boxes (K, 4) xyxy pixels, scores (K,)) of the detections above the threshold."""
        _check(images, phrases)
        out = [_empty() for _ in images]
        for idx in _batches(phrases, self.batch_size):
            with torch.no_grad():
                results = self._detect([images[i] for i in idx], [phrases[i] for i in idx])
            for i, result in zip(idx, results, strict=True):
                out[i] = _numpy(result)
        return out

    def _detect(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[dict]:
        """One batch of images that all have phrases -> the processor's results ("boxes", "scores" tensors)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _detect()")

    def __call__(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[np.ndarray]:
        return [boxes_to_map(boxes, scores, *image.shape[:2])
                for image, (boxes, scores) in zip(images, self.detect(images, phrases), strict=True)]


@register
class Owlv2Expert(_Detector):
    """OWLv2 open-vocabulary detection with one text query per phrase; boxes scoring > `threshold`."""

    name = "owlv2"

    def __init__(self, model: str | Path, *, revision: str | None, threshold: float, batch_size: int, device: str):
        super().__init__(batch_size, device)
        self.threshold = threshold
        self.processor = Owlv2Processor.from_pretrained(model, revision=revision)
        self.model = Owlv2ForObjectDetection.from_pretrained(model, revision=revision).to(self.device).eval()

    def _detect(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[dict]:
        inputs = self.processor(images=images, text=phrases, truncation=True, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        # The processor pads every image to the batch's largest query count; padded queries must never win a box.
        counts = torch.tensor([len(p) for p in phrases], device=self.device)
        padded = torch.arange(outputs.logits.shape[-1], device=self.device)[None, :] >= counts[:, None]
        outputs.logits = outputs.logits.masked_fill(padded[:, None, :], torch.finfo(outputs.logits.dtype).min)
        return self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=[image.shape[:2] for image in images])


def grounding_prompt(phrases: list[str]) -> str:
    """Grounding DINO's prompt: lower-case phrases, each ending with '.', e.g. "red circle. blue square."."""
    return " ".join(p.strip().lower().rstrip(".").strip() + "." for p in phrases)


@register
class GroundingDinoExpert(_Detector):
    """Grounding DINO on the prompt of all phrases; boxes scoring > `box_threshold` with a token > `text_threshold`."""

    name = "grounding_dino"

    def __init__(self, model: str | Path, *, revision: str | None, box_threshold: float, text_threshold: float,
                 batch_size: int, device: str):
        super().__init__(batch_size, device)
        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.processor = AutoProcessor.from_pretrained(model, revision=revision)
        self.model = GroundingDinoForObjectDetection.from_pretrained(model, revision=revision).to(self.device).eval()

    def _detect(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[dict]:
        prompts = [grounding_prompt(p) for p in phrases]
        inputs = self.processor(images=images, text=prompts, padding=True, return_tensors="pt").to(self.device)
        results = self.processor.post_process_grounded_object_detection(
            self.model(**inputs), inputs.input_ids, threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[image.shape[:2] for image in images])
        # A box is grounded only if some phrase token clears text_threshold (its text label is then non-empty).
        for result in results:
            if not len(result["scores"]):  # the processor labels an empty detection set [""]
                continue
            grounded = torch.tensor([bool(label.strip()) for label in result["text_labels"]], dtype=torch.bool)
            result["boxes"], result["scores"] = result["boxes"][grounded], result["scores"][grounded]
        return results


class SamRefiner:
    """SAM masks prompted by boxes: per image the union of the masks, each weighted by its box's score.

    Images are refined `batch_size` at a time, each batch in one SAM forward pass on `device` (all boxes of all its
    images); images without a valid box get an all-zero map without a pass.
    """

    def __init__(self, model: str | Path, *, revision: str | None, device: str, batch_size: int):
        self.device, self.batch_size = torch.device(resolve_device(device)), batch_size
        self.processor = SamProcessor.from_pretrained(model, revision=revision)
        self.model = SamModel.from_pretrained(model, revision=revision).to(self.device).eval()

    def __call__(self, images: list[np.ndarray], detections: Detections) -> list[np.ndarray]:
        """One float32 (H, W) map in [0, 1] per image, max-normalised; no valid box gives an all-zero map."""
        if len(images) != len(detections):
            raise ValueError(f"{len(images)} images but {len(detections)} detections")
        valid = [_valid_boxes(boxes, scores, *image.shape[:2])
                 for image, (boxes, scores) in zip(images, detections, strict=True)]
        out = [np.zeros(image.shape[:2], dtype=np.float32) for image in images]
        todo = [i for i, (boxes, _) in enumerate(valid) if len(boxes)]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            masks = self.masks([images[i] for i in idx], [valid[i][0] for i in idx])
            for i, mask in zip(idx, masks, strict=True):
                out[i] = _peak_normalise((mask * valid[i][1][:, None, None]).max(axis=0))
        return out

    def masks(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """One SAM forward pass for every box of `images` (each (K_i, 4), K_i >= 1): per image (K_i, H, W) bool."""
        most = max(len(b) for b in boxes)
        # SamProcessor needs the same box count per image: repeat an image's first box (its extra masks are dropped;
        # SAM decodes each box prompt independently, so the kept masks do not depend on the padding).
        padded = [np.concatenate([b, np.repeat(b[:1], most - len(b), axis=0)]).tolist() for b in boxes]
        inputs = self.processor(images=images, input_boxes=padded, return_tensors="pt")
        with torch.no_grad():
            outputs = self.model(pixel_values=inputs.pixel_values.to(self.device),
                                 input_boxes=inputs.input_boxes.to(self.device), multimask_output=False)
            masks = self.processor.post_process_masks(outputs.pred_masks, inputs.original_sizes,
                                                      inputs.reshaped_input_sizes)
        return [mask[:len(b), 0].cpu().numpy() for mask, b in zip(masks, boxes, strict=True)]


class _BoxDetector(Protocol):
    name: str

    def detect(self, images: list[np.ndarray], phrases: list[list[str]]) -> Detections: ...


class Refined(Expert):
    """A detector whose boxes are turned into SAM masks rather than painted as rectangles."""

    phrase_conditioned = True

    def __init__(self, detector: _BoxDetector, refiner: SamRefiner):
        self.detector, self.refiner = detector, refiner
        self.name = f"{detector.name}+sam"

    def __call__(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[np.ndarray]:
        return self.refiner(images, self.detector.detect(images, phrases))
