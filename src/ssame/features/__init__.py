"""Features stage (`model.image_features: cached`): the frozen vision tower runs once over every benchmark image.

Training with `train.freeze_vision` never changes the tower, so every (variant, seed) would otherwise decode,
patch and encode the same images again in each of its jobs. This stage encodes each image the training and
evaluation tables reference (the data stage's unreadable images aside) with the tower every job starts from (the
pretrained tiny backbone, or the hub checkpoint) and writes `<results>/features/` (`store.py`). Train, mine and
evaluate jobs then read the features instead of the pixels; the numbers are those of the pixel path up to float
rounding (tests/test_features.py). Design and cost: docs/training.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ssame.config import Paths, as_params, pretrained_backbone, uses_image_features
from ssame.data.io import (
    EVAL_IMAGE_COLUMNS,
    TRAIN_IMAGE_COLUMNS,
    DataFormatError,
    first_reference,
    image_root,
    read_eval,
    read_manifest,
    read_train,
    read_unreadable,
    references,
)
from ssame.features.store import image_settings, tower_digest, write
from ssame.logs import Progress
from ssame.model import InputBuilder
from ssame.model.backbone import load_backbone, square_side
from ssame.model.inputs import ImageDecodeError

log = logging.getLogger(__name__)


def _tables(data_dir: Path) -> list[tuple[str, pd.DataFrame, tuple[str, ...]]]:
    """(where, table, image columns) of every evaluation and training table of the manifest."""
    tables = []
    for row in read_manifest(data_dir).itertuples():
        tables.append((f"dataset {row.dataset} (eval)", read_eval(data_dir, row.dataset), EVAL_IMAGE_COLUMNS))
        if row.train_rows > 0:
            tables.append((f"dataset {row.dataset} (train)", read_train(data_dir, row.dataset), TRAIN_IMAGE_COLUMNS))
    return tables


def benchmark_images(data_dir: Path) -> list[str]:
    """Every image path the training and evaluation tables reference, sorted, the unreadable ones left out."""
    found = {ref.path for where, frame, columns in _tables(data_dir) for ref in references(frame, columns, where)}
    return sorted(found - set(read_unreadable(data_dir)))


def _undecodable(data_dir: Path, err: ImageDecodeError) -> DataFormatError:
    """The error naming the first table row that references the image `err` could not decode."""
    for where, frame, columns in _tables(data_dir):
        try:
            return DataFormatError(f"{first_reference(frame, columns, where, {err.path})} cannot be decoded: {err}")
        except KeyError:  # not referenced by this table
            continue
    return DataFormatError(str(err))


def build(params: Mapping[str, Any]) -> dict[str, float]:
    """Encode every benchmark image with the tower training starts from; write the features folder."""

    params = as_params(params)
    model_cfg = params["model"]
    if not uses_image_features(params):
        raise ValueError("features: params model.image_features is 'pixels'; the stage runs for 'cached' only")
    paths = Paths.from_params(params)
    backbone, tokenizer, processor = load_backbone(params, paths.data, pretrained_backbone(params))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone.to(device).eval()
    build_inputs = InputBuilder(tokenizer, processor, image_root(paths.data), None, image_side=square_side(model_cfg))
    images = benchmark_images(paths.data)
    batch = params["evaluate"]["batch_size"]  # images per tower call (the features depend on it in the last bits)
    features, grids, began = [], [], time.perf_counter()
    progress = Progress(log, "batch", -(-len(images) // batch), params["tracking"]["progress_every"])
    with torch.no_grad():
        for k, start in enumerate(range(0, len(images), batch), 1):
            try:
                pixels = build_inputs.preprocess(images[start:start + batch])
            except ImageDecodeError as err:  # changed since the data stage checked it
                raise _undecodable(paths.data, err) from err
            out = backbone.model.get_image_features(pixels["pixel_values"].to(device),
                                                    pixels["image_grid_thw"].to(device)).pooler_output
            features.extend(f.cpu() for f in out)
            grids.append(pixels["image_grid_thw"])
            progress.update(k, images=start + len(out))
    seconds = time.perf_counter() - began
    grid_thw = torch.cat(grids) if grids else torch.zeros(0, 3)
    write(paths.features, images, features, grid_thw, tower_digest(backbone.model.visual), image_settings(model_cfg))
    tokens = sum(len(f) for f in features)
    log.info("features: %d images, %d visual tokens, in %.1f s", len(images), tokens, seconds)
    return {"images": len(images), "tokens": tokens, "seconds": seconds}

