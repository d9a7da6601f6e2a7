"""Saliency storage and its one loader.

`<results>/saliency/shards/<dataset>.npz` holds
- `images` (N,) str and `maps` (N, S, S) float16: the bottom-up map of every image of the dataset;
- `pair_texts`, `pair_images` (M,) str and `pair_maps` (M, S, S) float16: the fused map of every (text, image)
  pair whose text names a subject.
S = params `saliency.map_size`, values in [0, 1], image paths relative to the data stage's image root.
`<dataset>.subjects.jsonl` beside it lists every pair's subject phrases; `manifest.json` indexes the shards.
`SaliencyStore` resizes a map to the backbone's merged visual-token grid on demand, the form training consumes.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def write_shard(path: Path, maps: dict[str, np.ndarray], pair_maps: dict[tuple[str, str], np.ndarray],
                size: int) -> None:
    """One dataset's shard; either dict may be empty (a text-only dataset, every image skipped)."""
    images, pairs = sorted(maps), sorted(pair_maps)

    def stack(arrays: list[np.ndarray]) -> np.ndarray:
        return (np.stack(arrays) if arrays else np.zeros((0, size, size))).astype(np.float16)

    np.savez_compressed(
        path, images=np.array(images, dtype=str), maps=stack([maps[k] for k in images]),
        pair_texts=np.array([t for t, _ in pairs], dtype=str), pair_images=np.array([i for _, i in pairs], dtype=str),
        pair_maps=stack([pair_maps[k] for k in pairs]))


def write_subjects(path: Path, pairs: list[tuple[str, str, list[str]]]) -> None:
    """One dataset's `<dataset>.subjects.jsonl`: (text, image path, subject phrases) per pair."""
    with open(path, "w") as handle:
        for text, image, phrases in pairs:
            handle.write(json.dumps({"text": text, "image_path": image, "subjects": phrases}) + "\n")


class SaliencyStore:
    """Read-only access to the saliency stage's maps, by image path and, where one exists, by (text, image) pair."""

    def __init__(self, saliency_dir: Path):
        manifest_path = saliency_dir / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"saliency manifest not found: {manifest_path} (run `ssame saliency`)")
        self.manifest = json.loads(manifest_path.read_text())
        self._maps: dict[str, np.ndarray] = {}
        self._pairs: dict[tuple[str, str], np.ndarray] = {}
        self._subjects: dict[tuple[str, str], str] = {}
        for shard in self.manifest["shards"]:
            path = saliency_dir / "shards" / f"{shard}.npz"
            if not path.is_file():
                raise FileNotFoundError(f"saliency shard listed in {manifest_path} is missing: {path}")
            with np.load(path) as npz:
                self._maps.update(zip(npz["images"].tolist(), npz["maps"], strict=True))
                keys = zip(npz["pair_texts"].tolist(), npz["pair_images"].tolist(), strict=True)
                self._pairs.update(zip(keys, npz["pair_maps"], strict=True))
            self._subjects.update(_read_subjects(saliency_dir / "shards" / f"{shard}.subjects.jsonl"))

    def __contains__(self, image_path: str) -> bool:
        return image_path in self._maps

    def subject(self, text: str, image_path: str) -> str | None:
        """The first subject phrase of a (text, image) pair that has a fused map, else None."""
        return self._subjects.get((text, image_path)) if (text, image_path) in self._pairs else None

    def map(self, image_path: str, grid: tuple[int, int] | None = None, text: str | None = None) -> np.ndarray:
        """The pair's fused map if `text` names a subject, else the image's bottom-up map (float32), optionally
        area-resized to a (rows, cols) token grid."""
        sal = self._pairs.get((text, image_path)) if text is not None else None
        if sal is None:
            if image_path not in self._maps:
                raise KeyError(f"no saliency map for image '{image_path}' in the saliency stage's shards")
            sal = self._maps[image_path]
        sal = sal.astype(np.float32)
        if grid is not None:
            sal = cv2.resize(sal, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        return sal


def _read_subjects(path: Path) -> dict[tuple[str, str], str]:
    """(text, image path) -> first subject phrase, for the pairs of a `<dataset>.subjects.jsonl` that name one."""
    if not path.is_file():
        raise FileNotFoundError(f"saliency subjects file is missing: {path}")
    out: dict[tuple[str, str], str] = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
                if row["subjects"]:
                    out[(row["text"], row["image_path"])] = row["subjects"][0]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: not a subjects record ({err})") from err
    return out
