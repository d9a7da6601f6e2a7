"""Score every expert of `saliency.quality.experts` and the configured fusion against ground-truth masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ssame.data.io import image_root, mask_path, read_eval, read_manifest
from ssame.saliency.experts import build_expert, read_image
from ssame.saliency.fusion import Fusion
from ssame.saliency.quality import auc, iou_top, pointing

TOP_FRACTION = 0.10


def _samples(data_dir: Path, per_dataset: int) -> list[tuple[str, str, str, np.ndarray]]:
    """(dataset, query text, image path, mask) for the first query images of each dataset that have a mask."""
    samples = []
    for dataset in read_manifest(data_dir)["dataset"]:
        frame = read_eval(data_dir, dataset)
        taken = 0
        for text, image in dict.fromkeys(zip(frame["qry_text"], frame["qry_img_path"], strict=True)):
            if taken == per_dataset:
                break
            path = mask_path(data_dir, image) if image else None
            if path is None or not path.is_file():
                continue
            mask = np.asarray(Image.open(path).convert("L")) > 127
            if mask.any() and not mask.all():
                samples.append((dataset, text, image, mask))
                taken += 1
    return samples


def score_experts(params: dict[str, Any], data_dir: Path, fusion: Fusion, subjects, args: dict) -> pd.DataFrame:
    """Mean AUC, IoU of the top 10 % and pointing game per (method, dataset); empty when no masks exist."""
    cfg = params["saliency"]["quality"]
    samples = _samples(data_dir, cfg["samples_per_dataset"])
    columns = ["method", "dataset", "n", "auc", "iou_top10", "pointing"]
    if not samples:
        return pd.DataFrame(columns=columns)
    images = [read_image(image_root(data_dir) / s[2]) for s in samples]
    phrases = subjects([s[1] for s in samples])
    methods = {name: build_expert(name, **args.get(name, {})) for name in cfg["experts"]}
    maps = {name: expert(images, phrases) for name, expert in methods.items()}
    maps["fusion"] = fusion(images, phrases)
    rows = [{"method": name, "dataset": s[0], "auc": auc(m, s[3]), "iou_top10": iou_top(m, s[3], TOP_FRACTION),
             "pointing": pointing(m, s[3])} for name, method_maps in maps.items()
            for s, m in zip(samples, method_maps, strict=True)]
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["method", "dataset"], sort=False)
    return grouped.mean().join(grouped.size().rename("n")).reset_index()[columns]
