"""Saliency storage: one `.npz` shard per dataset (`paths`, `maps`) plus `manifest.json`.

Shard arrays: `paths` (N,) str, image paths relative to the data stage's image root; `maps` (N, S, S) float16 in
[0, 1], S = params saliency.map_size. Subject phrases sit beside as `<dataset>.subjects.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def write_shard(path: Path, maps: dict[str, np.ndarray]) -> None:
    keys = sorted(maps)
    stacked = np.stack([maps[k] for k in keys]).astype(np.float16)
    np.savez_compressed(path, paths=np.array(keys), maps=stacked)


class SaliencyStore:
    """Read-only access to the saliency stage's maps, keyed by image path, resized on demand."""

    def __init__(self, saliency_dir: Path):
        manifest_path = saliency_dir / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"saliency manifest not found: {manifest_path} (run `ssame saliency`)")
        self.manifest = json.loads(manifest_path.read_text())
        self._maps: dict[str, np.ndarray] = {}
        for shard in self.manifest["shards"]:
            with np.load(saliency_dir / "shards" / f"{shard}.npz") as npz:
                self._maps.update(zip(npz["paths"].tolist(), npz["maps"], strict=True))

    def __contains__(self, image_path: str) -> bool:
        return image_path in self._maps

    def map(self, image_path: str, grid: tuple[int, int] | None = None) -> np.ndarray:
        """The map of an image (float32), optionally area-resized to a (rows, cols) token grid and renormalised."""
        if image_path not in self._maps:
            raise KeyError(f"no saliency map for image '{image_path}' in the saliency stage's shards")
        sal = self._maps[image_path].astype(np.float32)
        if grid is not None:
            sal = cv2.resize(sal, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        return sal
