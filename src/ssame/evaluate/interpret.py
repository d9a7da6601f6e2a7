"""Interpretability of one encoded input: where the pooled token looks, against the ground-truth subject mask.

- visual-attention mass: the pooled (last) token's attention on the image's visual tokens, summed (heads and the
  variant's attention layers averaged) — low mass on image+text queries is visual neglect;
- pointing game: 1 if the visual token with the most attention overlaps the subject mask, else 0;
- mask share: the share of the visual attention that falls inside the mask (each token weighted by the fraction
  of its cell the mask covers);
- pointing chance: the share of tokens overlapping the mask (the pointing game's score for uniform attention).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ssame.data.io import mask_path

FIGURES = ("visual_attention_mass", "pointing_game", "mask_share", "pointing_chance")


def load_mask(data_dir: Path, image_path: str) -> np.ndarray | None:
    """The subject mask of `image_path` as a bool array, or None when the benchmark has none (MMEB from the hub)."""
    path = mask_path(data_dir, image_path)
    if not path.is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"unreadable mask: {path}")
    return mask > 127


def cell_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) fraction of each merged visual token's image cell that the mask covers."""
    h, w = grid
    return cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)


def figures(attention: torch.Tensor, grid: tuple[int, int], mask: np.ndarray | None) -> dict[str, float]:
    """FIGURES for one image's pooled-token attention over its (h*w) visual tokens; NaN where no mask."""
    weights = attention.detach().float().cpu().numpy()
    if weights.size != grid[0] * grid[1]:
        raise ValueError(f"{weights.size} attention weights for a {grid[0]}x{grid[1]} token grid")
    mass = float(weights.sum())
    if mask is None or mass <= 0:
        return {"visual_attention_mass": mass, "pointing_game": np.nan, "mask_share": np.nan,
                "pointing_chance": np.nan}
    coverage = cell_coverage(mask, grid).ravel()
    return {"visual_attention_mass": mass,
            "pointing_game": float(coverage[int(weights.argmax())] > 0),
            "mask_share": float((weights * coverage).sum() / mass),
            "pointing_chance": float((coverage > 0).mean())}
