"""Score every expert of `saliency.quality.experts` and the configured fusion against ground-truth masks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from ssame.atomic import atomic_path
from ssame.data.io import mask_path, read_eval, read_manifest
from ssame.saliency.experts import build_expert, expert_kwargs
from ssame.saliency.fusion import Fusion
from ssame.saliency.quality import auc, iou_top, pointing

TOP_FRACTION = 0.10
FIGURE_SAMPLES = 4
COLUMNS = ["method", "dataset", "n", "auc", "iou_top10", "pointing"]


def _mask(data_dir: Path, image: str) -> np.ndarray | None:
    path = mask_path(data_dir, image)
    if not path.is_file():
        return None
    mask = np.asarray(Image.open(path).convert("L")) > 127
    return mask if mask.any() and not mask.all() else None


def _samples(data_dir: Path, per_dataset: int) -> tuple[list[tuple], list[tuple]]:
    """(scored, shown): up to `per_dataset` query pairs with a mask per dataset, and the first query pair of up to
    FIGURE_SAMPLES datasets (mask or not); each item is (dataset, text, image path, mask or None)."""
    scored, shown = [], []
    for dataset in read_manifest(data_dir)["dataset"]:
        frame = read_eval(data_dir, dataset)
        pairs = [(t, i) for t, i in dict.fromkeys(zip(frame["qry_text"], frame["qry_img_path"], strict=True)) if i]
        if pairs and len(shown) < FIGURE_SAMPLES:
            shown.append((dataset, *pairs[0], _mask(data_dir, pairs[0][1])))
        with_mask = ((dataset, t, i, m) for t, i in pairs if (m := _mask(data_dir, i)) is not None)
        scored += [s for _, s in zip(range(per_dataset), with_mask, strict=False)]
    return scored, shown


def score_experts(params: Mapping[str, Any], data_dir: Path, fusion: Fusion, subjects, figure_path: Path,
                  load: Callable[[str], np.ndarray | None]) -> pd.DataFrame:
    """Mean AUC, IoU of the top 10 % and pointing game per (method, dataset); empty when no masks exist.

    Images come through `load` (None for an image the data stage found unreadable); such an image is left out.
    Also writes `figure_path` (npz: `images`, `texts`, `methods`, `maps` (methods, samples, S, S)): every method's
    map for the first query image of up to FIGURE_SAMPLES datasets, which the report stage draws.
    """
    cfg = params["saliency"]
    scored, shown = _samples(data_dir, cfg["quality"]["samples_per_dataset"])
    loaded = {s[2]: load(s[2]) for s in [*scored, *shown]}
    scored = [s for s in scored if loaded[s[2]] is not None]
    shown = [s for s in shown if loaded[s[2]] is not None]
    samples = scored + shown
    images = [loaded[s[2]] for s in samples]
    phrases = subjects([s[1] for s in samples]) if samples else []
    experts = {name: build_expert(name, **expert_kwargs(cfg, name)) for name in cfg["quality"]["experts"]}
    maps = {name: expert(images, phrases) for name, expert in experts.items()}
    maps["fusion"] = fusion(images, phrases)
    size = cfg["map_size"]
    with atomic_path(figure_path) as tmp:
        np.savez_compressed(
            tmp, images=np.array([s[2] for s in shown], dtype=str),
            texts=np.array([s[1] for s in shown], dtype=str), methods=np.array(list(maps), dtype=str),
            maps=np.array([[cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) for m in method[len(scored):]]
                           for method in maps.values()], dtype=np.float16).reshape(len(maps), len(shown), size, size))
    rows = [{"method": name, "dataset": s[0], "auc": auc(m, s[3]), "iou_top10": iou_top(m, s[3], TOP_FRACTION),
             "pointing": pointing(m, s[3])}
            for name, method in maps.items() for s, m in zip(scored, method, strict=False)]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    grouped = pd.DataFrame(rows).groupby(["method", "dataset"], sort=False)
    return grouped.mean().join(grouped.size().rename("n")).reset_index()[COLUMNS]
