"""The frozen vision tower's features of every benchmark image, written once and read by every later job.

`<results>/features/` holds `features.safetensors` (`features` (T, D) in the model dtype: every image's merged
visual tokens, concatenated in key order; `offsets` (N+1,) int64; `grid_thw` (N, 3) int64, the processor's patch
grid) and `features.json` (`images`: the N keys, image paths relative to the data stage's image root, sorted;
`tower`: digest of the vision tower's weights; `settings`: the image sizing the features were computed under).
The folder is written atomically. `FeatureStore` reads it batch by batch (the default run's 8 k images: 33 MB)
and answers a batch of image paths with the model inputs that replace `pixel_values`; a batch with any image it does
not hold goes through the tower as before (`InputBuilder`). Valid only while the tower is the one digested:
training freezes it (`train.freeze_vision`), and every reader checks the digest against its model. Design:
docs/training.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ssame.atomic import atomic_dir
from ssame.config import Paths, uses_image_features
from ssame.model.backbone import pixel_budget, square_side

TENSORS, RECORD = "features.safetensors", "features.json"


class FeatureStoreError(ValueError):
    """A features folder that does not match its model or its own record; the message names the file."""


def tower_digest(visual: nn.Module) -> str:
    """sha256 over the vision tower's parameters and buffers (names, dtypes, shapes, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(visual.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_settings(model: dict[str, Any]) -> dict[str, Any]:
    """What, besides the tower, fixes an image's features (params `model`): its sizing and the dtype."""
    return {"image_side": square_side(model), "pixels": pixel_budget(model), "dtype": model["dtype"]}


def write(folder: Path, images: list[str], features: list[torch.Tensor], grid_thw: torch.Tensor, tower: str,
          settings: dict[str, Any]) -> Path:
    """Write (replacing) the features folder: per image in `images` order, its (tokens, D) features and grid."""
    if not len(images) == len(features) == len(grid_thw):
        raise ValueError(f"{len(images)} images, {len(features)} feature blocks, {len(grid_thw)} grids")
    offsets = torch.zeros(len(images) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor([len(f) for f in features], dtype=torch.int64).cumsum(0)
    with atomic_dir(folder) as tmp:
        save_file({"features": torch.cat(features).contiguous(), "offsets": offsets,
                   "grid_thw": grid_thw.to(torch.int64).contiguous()}, tmp / TENSORS)
        (tmp / RECORD).write_text(json.dumps({"images": images, "tower": tower, "settings": settings}, indent=1)
                                  + "\n")
    return folder


def features_for(params: dict[str, Any], embedder) -> FeatureStore | None:
    """The features stage's store, checked against `embedder`'s tower, when params `model.image_features` is
    cached; else None (inputs keep their pixels)."""
    if not uses_image_features(params):
        return None
    store = FeatureStore(Paths.from_params(params).features)
    store.check(embedder.qwen.model.visual, image_settings(params["model"]))
    return store


class FeatureStore:
    """Read-only: the features of the images the features stage encoded, by image path. The offsets and grids are
    loaded (16 + 24 bytes per image); each batch's features are read from the file with os.pread, so a process holds
    only the batches it asked for, whatever the number of images (tests/test_features.py; bench/memory.py)."""

    def __init__(self, folder: Path):
        record_path, tensors_path = folder / RECORD, folder / TENSORS
        if not (record_path.is_file() and tensors_path.is_file()):
            raise FileNotFoundError(f"image features not found in {folder} (run `ssame features`)")
        try:
            record = json.loads(record_path.read_text())
            self.images: list[str] = list(record["images"])
            self.tower: str = record["tower"]
            self.settings: dict[str, Any] = dict(record["settings"])
        except (ValueError, KeyError, TypeError) as err:
            raise FeatureStoreError(f"{record_path}: not a features record ({type(err).__name__}: {err}); rerun "
                                    "`ssame features`") from err
        self.folder, self.path = folder, tensors_path
        try:
            with safe_open(tensors_path, framework="pt") as tensors:
                self.offsets, self.grid_thw = tensors.get_tensor("offsets"), tensors.get_tensor("grid_thw")
            self.dtype, (rows, self.dim), self.start = _features_layout(tensors_path)
        except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as err:
            raise FeatureStoreError(f"{tensors_path}: unreadable ({type(err).__name__}: {err}); rerun "
                                    "`ssame features`") from err
        if not (len(self.offsets) == len(self.grid_thw) + 1 == len(self.images) + 1 and int(self.offsets[-1]) == rows):
            raise FeatureStoreError(f"{tensors_path}: {len(self.images)} images in {record_path.name}, "
                                    f"{len(self.grid_thw)} grids, {len(self.offsets)} offsets ending at "
                                    f"{int(self.offsets[-1])} for {rows} feature rows")
        self.row_bytes = self.dim * self.dtype.itemsize
        self.index = {image: i for i, image in enumerate(self.images)}
        self._fd: int | None = None
        self.hits = self.misses = 0  # batches answered here / left to the tower (logged by the readers)

    def __getstate__(self) -> dict:  # a DataLoader worker opens the file itself
        return {**self.__dict__, "_fd": None}

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def check(self, visual: nn.Module, settings: dict[str, Any]) -> None:
        """Raise unless `visual` is the tower these features came from and the image sizing is the same."""
        if settings != self.settings:
            raise FeatureStoreError(f"{self.folder / RECORD}: computed with image settings {self.settings}, params "
                                    f"give {settings}; rerun `ssame features`")
        if tower_digest(visual) != self.tower:
            raise FeatureStoreError(f"{self.folder / RECORD}: the model's vision tower is not the one these features "
                                    "came from (its weights changed: a tower trained with train.freeze_vision false, "
                                    "or another backbone); rerun `ssame features` or set model.image_features: pixels")

    def usage(self) -> str:
        """How many batches this process answered from the file and how many it left to the tower (for logs)."""
        return f"image features: {self.hits} batches read from {self.folder}, {self.misses} sent through the tower"

    def __contains__(self, image: str) -> bool:
        return image in self.index

    def inputs(self, images: list[str]) -> dict[str, torch.Tensor] | None:
        """`image_features` (the images' tokens, concatenated) and `image_grid_thw` for a batch of image paths, or
        None when one of them is not held (the batch then goes through the tower)."""
        rows = [self.index.get(image) for image in images]
        if None in rows:
            self.misses += 1
            return None
        self.hits += 1
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        spans = [(int(self.offsets[r]), int(self.offsets[r + 1])) for r in rows]
        size, at = self.row_bytes, self.start
        data = bytearray(b"".join(os.pread(self._fd, (stop - begin) * size, at + begin * size)
                                  for begin, stop in spans))
        if len(data) != sum(stop - begin for begin, stop in spans) * self.row_bytes:
            raise FeatureStoreError(f"{self.path}: truncated (rerun `ssame features`)")
        return {"image_features": torch.frombuffer(data, dtype=self.dtype).view(-1, self.dim),
                "image_grid_thw": self.grid_thw[rows]}


def _features_layout(path: Path) -> tuple[torch.dtype, tuple[int, int], int]:
    """(dtype, shape, byte offset in the file) of the `features` tensor, from the safetensors header."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        entry = json.loads(handle.read(length))["features"]
    begin, end = entry["data_offsets"]
    dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[entry["dtype"]]
    rows, dim = entry["shape"]
    if end - begin != rows * dim * dtype.itemsize:
        raise ValueError(f"features: {end - begin} bytes for shape {entry['shape']} {entry['dtype']}")
    return dtype, (rows, dim), 8 + length + begin
