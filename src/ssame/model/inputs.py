"""Turn MMEB (text, image path) pairs into Qwen2-VL inputs, the way VLM2Vec feeds Qwen2-VL.

MMEB's placeholder `<|image_1|>` is replaced in place by a bare `<|image_pad|>` (no vision start/end markers, no
chat template), which is expanded to one pad per merged visual token as Qwen2VLProcessor does (that class needs
torchvision for its video half, so the two halves it wraps, tokenizer and image processor, are driven here
directly). M-RoPE needs no markers: transformers' `get_rope_index` groups tokens by `mm_token_type_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssame.data.io import IMAGE_TOKEN
from ssame.data.prompts import IMAGE_TOKENS, substitute_image_token

# The vision markers are Qwen2-VL vocabulary for the backbone config and the LMM subject prompt, not MMEB inputs.
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", IMAGE_TOKENS["qwen2_vl"]


@dataclass
class EncodedBatch:
    """Model inputs for one batch plus, per image (in order), its merged token grid and saliency (or None)."""

    inputs: dict[str, torch.Tensor]
    grids: list[tuple[int, int]]
    image_rows: list[int]
    saliency: list[np.ndarray] | None


class InputBuilder:
    """Tokenise text with its image placeholder expanded in place and preprocess the images of a batch."""

    def __init__(self, tokenizer, image_processor, image_root: Path, max_text_tokens: int,
                 cache_images: bool = False):
        """`cache_images` keeps each image's preprocessed patches in memory (training revisits images)."""
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_root = image_root
        self.max_text_tokens = max_text_tokens
        self.merge = image_processor.merge_size
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache_images else None

    def _load(self, rel: str) -> Image.Image:
        path = self.image_root / rel
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except OSError as err:
            raise ValueError(f"unreadable or corrupt image: {path}: {err}") from err

    def _preprocess(self, paths: list[str]) -> dict[str, torch.Tensor]:
        """`pixel_values` (patches of all images, concatenated) and `image_grid_thw`, from the cache if enabled."""
        if self._cache is None:
            return dict(self.image_processor(images=[self._load(p) for p in paths], return_tensors="pt"))
        missing = [p for p in dict.fromkeys(paths) if p not in self._cache]
        if missing:
            out = self.image_processor(images=[self._load(p) for p in missing], return_tensors="pt")
            sizes = out["image_grid_thw"].prod(-1).tolist()
            for path, patches, grid in zip(missing, out["pixel_values"].split(sizes), out["image_grid_thw"],
                                           strict=True):
                self._cache[path] = (patches, grid)
        return {"pixel_values": torch.cat([self._cache[p][0] for p in paths]),
                "image_grid_thw": torch.stack([self._cache[p][1] for p in paths])}

    def _split(self, text: str, image: bool) -> tuple[str, str]:
        """The text before and after the image (an image without a placeholder comes first)."""
        before, found, after = substitute_image_token(text, "qwen2_vl").partition(IMAGE_PAD)
        return ("", text) if image and not found else (before, after)

    def __call__(self, texts: list[str], images: list[str], saliency_store=None) -> EncodedBatch:
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} image paths")
        image_paths, image_rows = [], []
        for row, (text, image) in enumerate(zip(texts, images, strict=True)):
            if image:
                image_paths.append(image)
                image_rows.append(row)
            elif IMAGE_TOKEN in text:
                raise ValueError(f"text has {IMAGE_TOKEN} but no image path: {text[:80]!r}")
            elif not text.strip():
                raise ValueError(f"input {row} of the batch has neither text nor image")
        parts = [self._split(text, bool(image)) for text, image in zip(texts, images, strict=True)]
        grids: list[tuple[int, int]] = []
        vision: dict[str, torch.Tensor] = {}
        if image_paths:
            vision = self._preprocess(image_paths)
            grids = [(int(h) // self.merge, int(w) // self.merge) for _, h, w in vision["image_grid_thw"].tolist()]
        pieces = self.tokenizer([p for pair in parts for p in pair], add_special_tokens=False)["input_ids"]
        pad_counts, sequences = iter(h * w for h, w in grids), []
        for row, image in enumerate(images):  # the text budget goes to the text before the image first
            head = pieces[2 * row][: self.max_text_tokens]
            tail = pieces[2 * row + 1][: self.max_text_tokens - len(head)]
            sequences.append(head + [self.image_token_id] * (next(pad_counts) if image else 0) + tail)
        enc = self.tokenizer.pad({"input_ids": sequences}, return_tensors="pt")
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "mm_token_type_ids": (enc["input_ids"] == self.image_token_id).int(), **vision}
        saliency = None
        if saliency_store is not None:
            saliency = [saliency_store.map(images[r], grids[i], texts[r]) for i, r in enumerate(image_rows)]
        return EncodedBatch(inputs, grids, image_rows, saliency)
