"""Report figures: meta-task bars over seeds and saliency overlays of sample query images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import seaborn as sns
from PIL import Image

DPI = 120
BARS_FIGSIZE = (9.0, 4.0)
CELL_INCHES = 2.2
OVERLAY_DATASETS = 4
OVERLAY_ALPHA = 0.5
SALIENCY_CMAP = "jet"
METRIC_LABELS = {
    "classification": "Classification",
    "vqa": "VQA",
    "retrieval": "Retrieval",
    "grounding": "Grounding",
    "ind": "IND",
    "ood": "OOD",
    "overall": "Overall",
}
PANEL_TITLES = ["image", "saliency map", "overlay", "ground-truth mask"]


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def metatask_bars(scores: pd.DataFrame, path: Path) -> None:
    """Bars of hit@1 (%) per meta-task, IND, OOD and overall; hue = variant, error bars = sd over seeds."""
    long = scores.melt(id_vars=["variant", "seed"], value_vars=list(METRIC_LABELS), var_name="metric")
    long = long.assign(metric=long["metric"].map(METRIC_LABELS), value=long["value"] * 100)
    fig, ax = plt.subplots(figsize=BARS_FIGSIZE)
    sns.barplot(data=long, x="metric", y="value", hue="variant", order=list(METRIC_LABELS.values()),
                errorbar="sd", capsize=0.1, ax=ax)
    ax.set(xlabel="", ylabel="MMEB hit@1 (%)", title="Mean ± sd over seeds")
    fig.tight_layout()
    _save(fig, path)


def sample_query_images(results_dir: Path, datasets: list[str], limit: int) -> list[tuple[str, str]]:
    """(dataset, image path) for the first query image of each of the first `limit` datasets having one."""
    picks = []
    for dataset in datasets:
        path = results_dir / "data" / "eval" / f"{dataset}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"missing eval split: {path}")
        if "qry_img_path" not in pq.read_schema(path).names:
            raise KeyError(f"{path}: missing column 'qry_img_path'")
        images = pd.read_parquet(path, columns=["qry_img_path"])["qry_img_path"]
        images = images[images.notna() & images.astype(str).ne("")]
        if len(images):
            picks.append((dataset, str(images.iloc[0])))
        if len(picks) == limit:
            break
    return picks


def load_saliency_map(shard: Path, image: str) -> np.ndarray:
    """The (S, S) saliency map stored for `image` in an npz shard with arrays `paths` and `maps`."""
    if not shard.is_file():
        raise FileNotFoundError(f"missing saliency shard: {shard}")
    with np.load(shard) as data:
        missing = [key for key in ("paths", "maps") if key not in data.files]
        if missing:
            raise KeyError(f"{shard}: missing array(s) {missing}")
        hits = np.flatnonzero(data["paths"] == image)
        if not hits.size:
            raise KeyError(f"{shard}: no saliency map for image {image!r}")
        return data["maps"][hits[0]].astype(np.float32)


def saliency_overlays(results_dir: Path, datasets: list[str], path: Path) -> None:
    """Grid of sample query images: image | saliency map | overlay | ground-truth mask (when one exists)."""
    picks = sample_query_images(results_dir, datasets, OVERLAY_DATASETS)
    if not picks:
        raise ValueError(f"no dataset in {results_dir / 'data' / 'manifest.csv'} has query images")
    masks = [(results_dir / "data" / "masks" / image).with_suffix(".png") for _, image in picks]
    ncols = len(PANEL_TITLES) if any(mask.is_file() for mask in masks) else len(PANEL_TITLES) - 1
    fig, axes = plt.subplots(len(picks), ncols, figsize=(CELL_INCHES * ncols, CELL_INCHES * len(picks)),
                             squeeze=False)
    for row, (dataset, image), mask in zip(axes, picks, masks, strict=True):
        rgb = np.asarray(Image.open(results_dir / "data" / "images" / image).convert("RGB"))
        extent = (0, rgb.shape[1], rgb.shape[0], 0)
        saliency = load_saliency_map(results_dir / "saliency" / "shards" / f"{dataset}.npz", image)
        row[0].imshow(rgb, extent=extent)
        row[1].imshow(saliency, cmap=SALIENCY_CMAP, vmin=0, vmax=1, extent=extent)
        row[2].imshow(rgb, extent=extent)
        row[2].imshow(saliency, cmap=SALIENCY_CMAP, vmin=0, vmax=1, alpha=OVERLAY_ALPHA, extent=extent,
                      interpolation="bilinear")
        if ncols == len(PANEL_TITLES) and mask.is_file():
            row[3].imshow(np.asarray(Image.open(mask).convert("L")), cmap="gray", extent=extent)
        row[0].set_ylabel(dataset)
    for ax, title in zip(axes[0], PANEL_TITLES, strict=False):
        ax.set_title(title)
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
        if not ax.images:
            ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
