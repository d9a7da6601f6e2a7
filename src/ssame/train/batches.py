"""Training rows and a seeded, epoch-wise shuffled batch stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ssame.data.io import read_manifest, read_train


def training_rows(data_dir: Path) -> pd.DataFrame:
    """All MMEB-train rows of the in-distribution datasets, in manifest order, with a `dataset` column."""
    manifest = read_manifest(data_dir)
    frames = [read_train(data_dir, name).assign(dataset=name)
              for name in manifest.loc[manifest["train_rows"] > 0, "dataset"]]
    if not frames:
        raise ValueError(f"{data_dir / 'manifest.csv'}: no dataset has training rows")
    rows = pd.concat(frames, ignore_index=True)
    rows["target_id"] = pd.factorize(rows["pos_text"] + "\x00" + rows["pos_image_path"])[0]
    return rows


def batch_indices(n_rows: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless stream of index batches: a fresh seeded permutation per epoch, the short tail dropped."""
    if batch_size > n_rows:
        raise ValueError(f"train.batch_size {batch_size} exceeds the {n_rows} training rows")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n_rows)
        for start in range(0, n_rows - batch_size + 1, batch_size):
            yield order[start:start + batch_size]
