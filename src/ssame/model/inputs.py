"""Turn MMEB (text, image path) pairs into Qwen2-VL inputs, the way VLM2Vec feeds Qwen2-VL.

MMEB's placeholder `<|image_1|>` is replaced in place by a bare `<|image_pad|>` (no vision start/end markers, no
chat template), which is expanded to one pad per merged visual token as Qwen2VLProcessor does (that class needs
torchvision for its video half, so the two halves it wraps, tokenizer and image processor, are driven here
directly). A placeholder in a text without an image stays one literal `<|image_pad|>` token, a text token
(MMEB's WebQA queries carry one; VLM2Vec's processor leaves it unexpanded). Positions: ssame.model.embedder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_transforms import normalize, rescale
from transformers.image_utils import ChannelDimension
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

from ssame.data.prompts import IMAGE_TOKENS, substitute_image_token

# The vision markers are Qwen2-VL vocabulary for the backbone config and the LMM subject prompt, not MMEB inputs.
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", IMAGE_TOKENS["qwen2_vl"]


def check_square(image_processor, side: int) -> None:
    """Raise unless a side x side image passes the Qwen2-VL processor unchanged: side a multiple of patch x merge
    and side² within its [min, max] pixels (then VLM2Vec's 1344 x 1344 images keep their size)."""
    factor = image_processor.patch_size * image_processor.merge_size
    low, high = image_processor.size["shortest_edge"], image_processor.size["longest_edge"]
    if side % factor or not low <= side * side <= high:
        raise ValueError(f"square images of side {side} are resized again by the image processor (side must be a "
                         f"multiple of patch_size x merge_size = {factor}, side² within [{low}, {high}] pixels)")


def pixel_patches(image_processor, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    """`pixel_values` and `image_grid_thw` exactly as `image_processor(images=images, return_tensors="pt")` gives
    them (tests/test_inputs.py), for a batch at once: the PIL processor works image by image (0.3 ms each at 96²;
    its torch twin needs torchvision). Same-size RGB images that the processor would not resize (square_side does
    that, and MMEB-mini's 96² images are at their pixel budget) are rescaled, normalised and cut into patches as one
    array; any other batch goes through the processor."""
    proc = image_processor
    (width, height), *others = {image.size for image in images}
    factor = proc.patch_size * proc.merge_size
    at_size = smart_resize(height, width, factor, proc.size["shortest_edge"], proc.size["longest_edge"]) == (
        height, width)
    if others or not at_size or not (proc.do_rescale and proc.do_normalize) or any(i.mode != "RGB" for i in images):
        return dict(proc(images=images, return_tensors="pt"))
    # the processor's own rescale and normalise, applied once to each of the 256 values of each channel, then looked
    # up per pixel: the same float arithmetic, so the same bits
    last, channels = ChannelDimension.LAST, 3
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], channels, axis=2)  # (256, 1, C)
    table = normalize(rescale(levels, proc.rescale_factor, input_data_format=last), proc.image_mean, proc.image_std,
                      input_data_format=last)[:, 0]  # (256, C) float32
    stacked = np.stack([np.asarray(image) for image in images])  # (N, H, W, C) uint8
    pixels = np.stack([table[:, c].take(stacked[..., c]) for c in range(channels)], axis=-1)
    p, m, t = proc.patch_size, proc.merge_size, proc.temporal_patch_size
    n, rows, cols = len(images), height // p, width // p
    # per image the processor's order: merge-block row, column, row and column within it, channel, time, pixel row,
    # pixel column (each image's frame repeated over time)
    blocks = pixels.reshape(n, rows // m, m, p, cols // m, m, p, channels).transpose(0, 1, 4, 2, 5, 7, 3, 6)
    blocks = np.broadcast_to(blocks[:, :, :, :, :, :, None], (*blocks.shape[:6], t, p, p))
    grid = torch.tensor([[1, rows, cols]] * n, dtype=torch.int64)
    return {"pixel_values": torch.from_numpy(blocks.reshape(n * rows * cols, channels * t * p * p)),
            "image_grid_thw": grid}


class ImageDecodeError(ValueError):
    """An image file PIL cannot decode; `path` is relative to the image root (callers name the dataset row)."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


@dataclass
class EncodedBatch:
    """Model inputs for one batch plus, per image (in order), its merged token grid and saliency (or None)."""

    inputs: dict[str, torch.Tensor]
    grids: list[tuple[int, int]]
    image_rows: list[int]
    saliency: list[np.ndarray] | None


class InputBuilder:
    """Tokenise text with its image placeholder expanded in place and preprocess the images of a batch."""

    def __init__(self, tokenizer, image_processor, image_root: Path, max_text_tokens: int | None,
                 image_side: int | None = None, features=None):
        """`max_text_tokens`: text tokens kept per input, image tokens never cut (None: no truncation);
        `image_side`: resize every image to image_side x image_side first, as VLM2Vec does (None: the processor's
        pixel budget alone; `ssame.model.backbone.square_side` gives it from params); `features`: a
        `ssame.features.store.FeatureStore` whose `image_features` replace the pixels of a batch whose every image it
        holds (the embedder then skips the tower)."""
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_root = image_root
        self.max_text_tokens = max_text_tokens
        self.merge = image_processor.merge_size
        self.image_side = image_side
        self.features = features
        if image_side is not None:
            check_square(image_processor, image_side)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    def _load(self, rel: str | Image.Image) -> Image.Image:
        if isinstance(rel, Image.Image):  # in memory (pretraining's rendered scenes)
            image = rel.resize((self.image_side, self.image_side)) if self.image_side is not None else rel
            return image.convert("RGB")
        path = self.image_root / rel
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                if self.image_side is not None:  # before RGB conversion, as VLM2Vec (Pillow's default filter)
                    image = image.resize((self.image_side, self.image_side))
                return image.convert("RGB")
        except Exception as err:  # whatever PIL raises (OSError, SyntaxError, DecompressionBombError, ...)
            raise ImageDecodeError(rel, f"unreadable or corrupt image: {path}: {type(err).__name__}: {err}") from err

    def preprocess(self, paths: list[str | Image.Image]) -> dict[str, torch.Tensor]:
        """`pixel_values` (patches of all images, concatenated) and `image_grid_thw`. Not cached: one image is
        43 MB of patches at the paper's resolution, and a default run revisits 9 % of its images (docs/training.md)."""
        return pixel_patches(self.image_processor, [self._load(p) for p in paths])

    def _split(self, text: str, image: bool) -> tuple[str, str, bool]:
        """The text before and after the image token, and whether the text holds one (an image without a
        placeholder comes first)."""
        before, found, after = substitute_image_token(text, "qwen2_vl").partition(IMAGE_PAD)
        return ("", text, False) if image and not found else (before, after, bool(found))

    def _truncate(self, head: list[int], tail: list[int]) -> tuple[list[int], list[int]]:
        """At most `max_text_tokens` text tokens, the text before the image first."""
        if self.max_text_tokens is None:
            return head, tail
        head = head[: self.max_text_tokens]
        return head, tail[: self.max_text_tokens - len(head)]

    def __call__(self, texts: list[str], images: list[str | Image.Image], saliency_store=None) -> EncodedBatch:
        """`images`: paths under the image root ('' for none) or PIL images."""
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} image paths")
        image_paths, image_rows = [], []
        for row, (text, image) in enumerate(zip(texts, images, strict=True)):
            if image:
                image_paths.append(image)
                image_rows.append(row)
            elif not text.strip():
                raise ValueError(f"input {row} of the batch has neither text nor image")
        parts = [self._split(text, bool(image)) for text, image in zip(texts, images, strict=True)]
        grids: list[tuple[int, int]] = []
        vision: dict[str, torch.Tensor] = {}
        if image_paths:
            cached = self.features.inputs(image_paths) if self.features is not None else None
            vision = cached if cached is not None else self.preprocess(image_paths)
            grids = [(int(h) // self.merge, int(w) // self.merge) for _, h, w in vision["image_grid_thw"].tolist()]
        pieces = self.tokenizer([p for b, a, _ in parts for p in (b, a)], add_special_tokens=False)["input_ids"]
        pad_counts, sequences = iter(h * w for h, w in grids), []
        for row, (image, (*_, found)) in enumerate(zip(images, parts, strict=True)):
            head, tail = self._truncate(pieces[2 * row], pieces[2 * row + 1])
            pads = next(pad_counts) if image else int(found)  # a placeholder without an image: one literal token
            sequences.append(head + [self.image_token_id] * pads + tail)
        enc = self.tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
        has_image = torch.tensor([bool(image) for image in images]).unsqueeze(1)
        visual = (enc["input_ids"] == self.image_token_id) & has_image
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "mm_token_type_ids": visual.int(), **vision}
        saliency = None
        if saliency_store is not None:
            saliency = [saliency_store.map(images[r], grids[i], texts[r]) for i, r in enumerate(image_rows)]
        return EncodedBatch(inputs, grids, image_rows, saliency)
