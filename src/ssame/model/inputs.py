"""Turn MMEB (text, image path) pairs into Qwen2-VL inputs, the way VLM2Vec feeds Qwen2-VL.

MMEB texts carry the placeholder `<|image_1|>`; it becomes `<|vision_start|>` + one `<|image_pad|>` per merged
visual token + `<|vision_end|>`, the expansion Qwen2VLProcessor performs (that class needs torchvision for its
video half, so the two halves it wraps, tokenizer and image processor, are driven here directly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PLACEHOLDER = "<|image_1|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


@dataclass
class EncodedBatch:
    """Model inputs for one batch plus, per image (in order), its merged token grid and saliency (or None)."""

    inputs: dict[str, torch.Tensor]
    grids: list[tuple[int, int]]
    image_rows: list[int]
    saliency: list[np.ndarray] | None


class InputBuilder:
    """Tokenise text with expanded image placeholders and preprocess the images of a batch."""

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

    def __call__(self, texts: list[str], images: list[str], saliency_store=None) -> EncodedBatch:
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} image paths")
        image_paths, image_rows = [], []
        for row, (text, image) in enumerate(zip(texts, images, strict=True)):
            if image:
                image_paths.append(image)
                image_rows.append(row)
            elif PLACEHOLDER in text:
                raise ValueError(f"text has {PLACEHOLDER} but no image path: {text[:80]!r}")
            elif not text.strip():
                raise ValueError(f"input {row} of the batch has neither text nor image")
        grids: list[tuple[int, int]] = []
        vision: dict[str, torch.Tensor] = {}
        if image_paths:
            vision = self._preprocess(image_paths)
            grids = [(int(h) // self.merge, int(w) // self.merge) for _, h, w in vision["image_grid_thw"].tolist()]
        prompts, k = [], 0
        for text, image in zip(texts, images, strict=True):
            body = text.replace(PLACEHOLDER, "").strip()
            body = self.tokenizer.convert_tokens_to_string(self.tokenizer.tokenize(body)[: self.max_text_tokens])
            if image:
                n = grids[k][0] * grids[k][1]
                prompts.append(f"{VISION_START}{IMAGE_PAD * n}{VISION_END}{body}")
                k += 1
            else:
                prompts.append(body)
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "mm_token_type_ids": (enc["input_ids"] == self.image_token_id).int(), **vision}
        saliency = None
        if saliency_store is not None:
            saliency = [saliency_store.map(images[r], grids[i], texts[r]) for i, r in enumerate(image_rows)]
        return EncodedBatch(inputs, grids, image_rows, saliency)
