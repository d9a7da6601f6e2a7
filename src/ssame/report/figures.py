"""Report figures, each as PNG (the HTML report, the README) and PDF (a manuscript): meta-task bars over seeds,
training curves, the per-dataset heatmap, ablation deltas with CIs and saliency overlays of sample query images."""

from __future__ import annotations

import json
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


FORMATS = (".png", ".pdf")
SMOOTHING = 10  # steps in the rolling mean of a training curve


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Write `fig` atomically as `path` (.png) and its .pdf sibling, then close it."""
    for suffix in FORMATS:
        metadata = {"CreationDate": None} if suffix == ".pdf" else None  # the same figure, the same bytes
        with atomic_path(path.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, dpi=DPI, format=suffix[1:], metadata=metadata)
    plt.close(fig)


SAMPLE_TERMS = ("loss_nce", "loss_soft_kl")  # the sample-level term: InfoNCE, or UniME-V2's soft-label KL


def read_histories(results_dir: Path, variants: list[str], seeds: list[int]) -> pd.DataFrame:
    """Every training job's `history.csv` stacked, with `variant` and `seed` columns and `loss_sample`, its
    sample-level term (SAMPLE_TERMS)."""
    frames = []
    for variant in variants:
        for seed in seeds:
            path = results_dir / "train" / variant / f"seed{seed}" / "history.csv"
            if not path.is_file():
                raise FileNotFoundError(f"missing training history: {path}")
            frame = pd.read_csv(path)
            sample = [term for term in SAMPLE_TERMS if term in frame]
            if "step" not in frame or "loss" not in frame or len(sample) != 1:
                raise KeyError(f"{path}: needs columns 'step', 'loss' and one of {SAMPLE_TERMS}, has "
                               f"{list(frame.columns)}")
            frames.append(frame.assign(variant=variant, seed=seed, loss_sample=frame[sample[0]]))
    return pd.concat(frames, ignore_index=True)


def training_curves(histories: pd.DataFrame, path: Path) -> None:
    """Sample-level term (InfoNCE; UniME-V2: soft-label KL) and total loss per step (rolling mean over SMOOTHING
    steps): mean ± sd over seeds."""
    order = list(dict.fromkeys(histories["variant"]))  # params order, not sorted
    smooth = histories.sort_values("step").copy()
    terms = ["loss_sample", "loss"]
    smooth[terms] = smooth.groupby(["variant", "seed"])[terms].transform(
        lambda s: s.rolling(SMOOTHING, min_periods=1).mean())
    fig, axes = plt.subplots(1, 2, figsize=BARS_FIGSIZE, sharex=True)
    titles = ["sample level: InfoNCE (UniME-V2: soft-label KL)", "total objective"]
    for ax, term, title in zip(axes, terms, titles, strict=True):
        sns.lineplot(data=smooth, x="step", y=term, hue="variant", hue_order=order, errorbar="sd", ax=ax,
                     legend=ax is axes[-1])
        ax.set(title=title, ylabel="loss", xlabel="optimizer step")
    sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1, 1), title="variant")
    fig.suptitle(f"Training loss, rolling mean over {SMOOTHING} steps; band = sd over seeds")
    fig.tight_layout()
    save_figure(fig, path)


def per_dataset_heatmap(table: pd.DataFrame, variants: list[str], path: Path) -> None:
    """hit@1 (%) per dataset (rows, grouped by meta-task and split) and variant (columns), mean over seeds."""
    frame = table.sort_values(["meta_task", "split", "dataset"], kind="stable")
    labels = [f"{d} ({m}, {s})" for d, m, s in zip(frame["dataset"], frame["meta_task"], frame["split"], strict=True)]
    values = frame.set_index(pd.Index(labels))[variants]
    fig, ax = plt.subplots(figsize=(1.2 * len(variants) + 4, 0.32 * len(values) + 1.5))
    sns.heatmap(values, annot=True, fmt=".1f", cmap="viridis", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "hit@1 (%)"})
    ax.set(xlabel="", ylabel="", title="hit@1 per dataset, mean over seeds")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    save_figure(fig, path)


def ablation_bars(delta: pd.DataFrame, path: Path) -> None:
    """Each variant minus the full SSA-ME per aggregate, in hit@1 points, with the paired-bootstrap 95 % CI."""
    frame = delta[delta["aggregate"].isin(METRIC_LABELS)]
    metrics = [m for m in METRIC_LABELS if m in set(frame["aggregate"])]
    methods = list(dict.fromkeys(frame["method"]))
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=BARS_FIGSIZE)
    if not methods:
        ax.text(0.5, 0.5, "no variant to compare with the full SSA-ME (ssame)", ha="center", va="center")
    for i, method in enumerate(methods):
        rows = frame[frame["method"] == method].set_index("aggregate").loc[metrics]
        x = np.arange(len(metrics)) + (i - (len(methods) - 1) / 2) * width
        err = np.vstack([rows["delta"] - rows["ci95_lo"], rows["ci95_hi"] - rows["delta"]])
        ax.bar(x, rows["delta"], width, yerr=err, capsize=2, label=method)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(metrics)), [METRIC_LABELS[m] for m in metrics])
    ax.set(ylabel="Δ hit@1 vs SSA-ME (points)", title="Ablations against the full model (95 % CI over queries)")
    if methods:
        ax.legend(loc="upper left", bbox_to_anchor=(1, 1), title="variant")
    fig.tight_layout()
    save_figure(fig, path)


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


GRID_ROWS = 4  # queries shown in the attention grid


def read_attention(results_dir: Path, variant: str, seeds: list[int]) -> dict[tuple[str, str, str], np.ndarray]:
    """(dataset, text, image) -> the pooled-token attention map of `variant`, mean over `seeds`, from each
    evaluation's `attention.json`."""
    maps: dict[tuple[str, str, str], list[np.ndarray]] = {}
    for seed in seeds:
        path = results_dir / "eval" / variant / f"seed{seed}" / "attention.json"
        if not path.is_file():
            raise FileNotFoundError(f"missing attention maps: {path}")
        for dataset, records in json.loads(path.read_text()).items():
            for record in records:
                maps.setdefault((dataset, record["text"], record["image"]), []).append(np.asarray(record["attention"]))
    return {key: np.mean(values, axis=0) for key, values in maps.items() if len(values) == len(seeds)}


def attention_grid(results_dir: Path, columns: list[str], seeds: list[int], path: Path) -> None:
    """Where the model looks, on the same queries for every method in `columns`: image | saliency map (the
    pair's) | each method's pooled-token attention over the image (mean over seeds, per-map colour scale).
    Queries: the first of each dataset that has a ground-truth subject mask (else any), up to GRID_ROWS."""
    data_dir = results_dir / "data"
    maps = {method: read_attention(results_dir, method, seeds) for method in columns}
    shared = [key for key in maps[columns[0]] if all(key in maps[m] for m in columns)]
    firsts: dict[str, tuple[str, str, str]] = {}  # dataset -> its first query
    for key in shared:
        firsts.setdefault(key[0], key)
    picks = sorted(firsts.values(), key=lambda key: not mask_path(data_dir, key[2]).is_file())[:GRID_ROWS]
    ncols = 2 + len(columns)
    fig, axes = plt.subplots(max(len(picks), 1), ncols, figsize=(CELL_INCHES * ncols, CELL_INCHES * max(len(picks), 1)),
                             squeeze=False)
    store = SaliencyStore(results_dir / "saliency") if picks else None
    for row, (dataset, text, image) in zip(axes, picks, strict=False):
        rgb = np.asarray(Image.open(image_root(data_dir) / image).convert("RGB"))
        extent = (0, rgb.shape[1], rgb.shape[0], 0)
        row[0].imshow(rgb, extent=extent)
        row[1].imshow(store.map(image, text=text), cmap=SALIENCY_CMAP, vmin=0, vmax=1, extent=extent)
        for ax, method in zip(row[2:], columns, strict=True):
            attention = maps[method][(dataset, text, image)]
            ax.imshow(rgb, extent=extent)
            ax.imshow(attention / max(float(attention.max()), 1e-12), cmap=SALIENCY_CMAP, vmin=0, vmax=1,
                      alpha=OVERLAY_ALPHA, extent=extent, interpolation="bilinear")
        row[0].set_ylabel(dataset)
    for ax, title in zip(axes[0], ["image", "saliency map", *(f"{m} attention" for m in columns)], strict=True):
        ax.set_title(title)
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
        if not ax.images:
            ax.axis("off")
    if not picks:
        axes[0][0].text(0.5, 0.5, "no query image", ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, path)
