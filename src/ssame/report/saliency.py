"""Report artefacts of the saliency stage: the quality table and one image | map | overlay grid per method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ssame.data.io import image_root
from ssame.report.figures import plt, save_figure
from ssame.report.tables import write_table

METRICS = ["auc", "iou_top10", "pointing"]


def saliency_quality_table(saliency_dir: Path) -> pd.DataFrame:
    """Per method: unweighted mean over datasets of AUC, IoU of the top 10 % and pointing game; pairs scored."""
    path = saliency_dir / "quality.csv"
    if not path.is_file():
        raise FileNotFoundError(f"missing saliency quality file: {path}")
    quality = pd.read_csv(path)
    if quality.empty:
        return pd.DataFrame(columns=["method", *METRICS, "datasets", "pairs"])
    table = quality.groupby("method", sort=False).agg(
        **{m: (m, "mean") for m in METRICS}, datasets=("dataset", "nunique"), pairs=("n", "sum"))
    return table.sort_values("auc", ascending=False).round(3).reset_index()


def saliency_method_figures(results_dir: Path, figures_dir: Path) -> list[Path]:
    """`saliency_<method>.png` for every method in the saliency stage's `quality_samples.npz`."""
    path = results_dir / "saliency" / "quality_samples.npz"
    if not path.is_file():
        raise FileNotFoundError(f"missing saliency samples: {path}")
    with np.load(path) as npz:
        images, texts, methods, maps = npz["images"], npz["texts"], npz["methods"], npz["maps"]
    root = image_root(results_dir / "data")
    written = []
    for method, method_maps in zip(methods.tolist(), maps, strict=True):
        fig, axes = plt.subplots(len(images), 3, figsize=(6.6, 2.2 * len(images)), squeeze=False)
        for row, image, text, sal in zip(axes, images.tolist(), texts.tolist(), method_maps, strict=True):
            rgb = np.asarray(Image.open(root / image).convert("RGB"))
            extent = (0, rgb.shape[1], rgb.shape[0], 0)
            row[0].imshow(rgb, extent=extent)
            row[1].imshow(sal.astype(np.float32), cmap="jet", vmin=0, vmax=1, extent=extent)
            row[2].imshow(rgb, extent=extent)
            row[2].imshow(sal.astype(np.float32), cmap="jet", vmin=0, vmax=1, alpha=0.5, extent=extent)
            row[0].set_ylabel(text.replace("<|image_1|>", "").strip()[-40:], fontsize=6)
        for ax, title in zip(axes[0], ["image", method, "overlay"], strict=True):
            ax.set_title(title)
        for ax in axes.flat:
            ax.set(xticks=[], yticks=[])
        fig.tight_layout()
        out = figures_dir / f"saliency_{method}.png"
        save_figure(fig, out)
        written.append(out)
    return written


def build_saliency_report(results_dir: Path, reports_dir: Path) -> None:
    write_table(saliency_quality_table(results_dir / "saliency"), reports_dir / "tables" / "saliency_quality",
                floatfmt=".3f")
    saliency_method_figures(results_dir, reports_dir / "figures")
