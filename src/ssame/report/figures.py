"""Report figures: meta-task bars over seeds and saliency overlays of sample query images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from PIL import Image

from ssame.atomic import atomic_path
from ssame.data.io import image_root, mask_path, read_eval
from ssame.saliency.store import SaliencyStore

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


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write `fig` atomically (the format from the suffix of `path`) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI)
    plt.close(fig)


def metatask_bars(scores: pd.DataFrame, path: Path) -> None:
    """Bars of hit@1 (%) per meta-task, IND, OOD and overall; hue = variant, error bars = sd over seeds."""
    long = scores.melt(id_vars=["variant", "seed"], value_vars=list(METRIC_LABELS), var_name="metric")
    long = long.assign(metric=long["metric"].map(METRIC_LABELS), value=long["value"] * 100)
    fig, ax = plt.subplots(figsize=BARS_FIGSIZE)
    sns.barplot(data=long, x="metric", y="value", hue="variant", order=list(METRIC_LABELS.values()),
                errorbar="sd", capsize=0.1, ax=ax)
    ax.set(xlabel="", ylabel="MMEB hit@1 (%)", title="Mean ± sd over seeds")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1), title="variant")
    fig.tight_layout()
    save_figure(fig, path)


def sample_query_images(data_dir: Path, datasets: list[str], limit: int) -> list[tuple[str, str]]:
    """(dataset, image path) for the first query image of each of the first `limit` datasets having one."""
    picks = []
    for dataset in datasets:
        images = [image for image in read_eval(data_dir, dataset)["qry_img_path"] if image]
        if images:
            picks.append((dataset, images[0]))
        if len(picks) == limit:
            break
    return picks


def saliency_overlays(results_dir: Path, datasets: list[str], path: Path) -> None:
    """Grid of sample query images: image | saliency map | overlay | ground-truth mask (when one exists)."""
    data_dir = results_dir / "data"
    picks = sample_query_images(data_dir, datasets, OVERLAY_DATASETS)
    if not picks:
        raise ValueError(f"no dataset in {data_dir / 'manifest.csv'} has query images")
    store = SaliencyStore(results_dir / "saliency")
    masks = [mask_path(data_dir, image) for _, image in picks]
    ncols = len(PANEL_TITLES) if any(mask.is_file() for mask in masks) else len(PANEL_TITLES) - 1
    fig, axes = plt.subplots(len(picks), ncols, figsize=(CELL_INCHES * ncols, CELL_INCHES * len(picks)),
                             squeeze=False)
    for row, (dataset, image), mask in zip(axes, picks, masks, strict=True):
        rgb = np.asarray(Image.open(image_root(data_dir) / image).convert("RGB"))
        extent = (0, rgb.shape[1], rgb.shape[0], 0)
        saliency = store.map(image)
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
    save_figure(fig, path)
