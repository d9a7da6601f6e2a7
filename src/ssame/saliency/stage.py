"""The saliency stage: subjects from text, visual experts, fusion into one map per pair, quality against masks.

Images the data stage found unreadable (`results/data/unreadable.json`, `data.bad_input`) are skipped and counted per
dataset in `manifest.json`; any other image that cannot be read stops the stage naming the file. An image smaller
than `saliency.map_size` on a side is kept: its maps are upsampled to the stored size and counted (`small_images`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from ssame.atomic import atomic_path, write_json
from ssame.config import Params, Paths, as_params
from ssame.data.io import eval_path, image_root, read_eval, read_manifest, read_train, read_unreadable, train_path
from ssame.saliency.experts import build_expert, expert_kwargs, read_image
from ssame.saliency.fusion import Fusion
from ssame.saliency.quality_report import score_experts
from ssame.saliency.store import shard_exists, write_shard, write_subjects
from ssame.saliency.subjects import build_subjects

BATCH = 64


def _pairs(data_dir: Path, dataset: str, has_train: bool) -> list[tuple[str, str]]:
    """Unique (text, image path) pairs of a dataset, train side then eval side, in first-seen order."""
    pairs: list[tuple[str, str]] = []
    if has_train:
        train = read_train(data_dir, dataset)
        for text_col, image_col in [("qry", "qry_image_path"), ("pos_text", "pos_image_path"),
                                    ("neg_text", "neg_image_path")]:
            pairs += zip(train[text_col], train[image_col], strict=True)
    evaluation = read_eval(data_dir, dataset)
    pairs += zip(evaluation["qry_text"], evaluation["qry_img_path"], strict=True)
    for texts, images in zip(evaluation["tgt_text"], evaluation["tgt_img_path"], strict=True):
        pairs += zip(texts, images, strict=True)
    return list(dict.fromkeys(pairs))


def _fingerprint(cfg: dict[str, Any], files: list[Path], skipped: list[str]) -> str:
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    for path in files:
        digest.update(path.read_bytes())
    digest.update(json.dumps(skipped).encode())
    return digest.hexdigest()


class _Loader:
    """Reads images for the stage: the data stage's unreadable images give None and are recorded in `skipped`."""

    def __init__(self, root: Path, unreadable: dict[str, str]):
        self.root, self.unreadable = root, unreadable
        self.skipped: dict[str, str] = {}

    def __call__(self, rel: str) -> np.ndarray | None:
        if rel in self.unreadable:
            self.skipped[rel] = self.unreadable[rel]
            return None
        return read_image(self.root / rel)


def _resize(sal: np.ndarray, size: int) -> np.ndarray:
    """A map at size x size: area averaging when shrinking both sides, bilinear when any side grows."""
    shrink = min(sal.shape) >= size
    return cv2.resize(sal, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _shard(dataset: str, pairs: list[tuple[str, str]], subjects, fusion: Fusion, load: _Loader,
           size: int, out: Path) -> dict[str, int]:
    texts = list(dict.fromkeys(t for t, _ in pairs if t.strip()))
    phrases = dict(zip(texts, subjects(texts), strict=True))
    write_subjects(out / f"{dataset}.subjects.jsonl", [(t, i, phrases[t]) for t, i in pairs if t.strip()])
    small = 0
    maps: dict[str, np.ndarray] = {}
    pair_maps: dict[tuple[str, str], np.ndarray] = {}
    by_image: dict[str, list[str]] = {}
    for text, image in pairs:
        if image:
            by_image.setdefault(image, []).append(text)
    paths = list(by_image)
    for start in tqdm(range(0, len(paths), BATCH), desc=f"saliency {dataset}", unit="batch"):
        batch = [(p, img) for p in paths[start:start + BATCH] if (img := load(p)) is not None]
        images = [img for _, img in batch]
        small += sum(min(img.shape[:2]) < size for img in images)
        bottom_up = fusion.bottom_up(images, [[]] * len(images))
        maps.update((p, _resize(m, size)) for (p, _), m in zip(batch, bottom_up, strict=True))
        named = [(p, img, b, t) for (p, img), b in zip(batch, bottom_up, strict=True)
                 for t in by_image[p] if phrases.get(t)]
        if named:
            fused = fusion([n[1] for n in named], [phrases[n[3]] for n in named], [n[2] for n in named])
            pair_maps.update(((t, p), _resize(m, size)) for (p, _, _, t), m in zip(named, fused, strict=True))
    write_shard(out, dataset, maps, pair_maps, size, {(t, i): phrases[t][0] for t, i in pair_maps})
    return {"images": len(maps), "pairs": len(pairs), "pairs_with_subject": len(pair_maps), "small_images": small}


def build(params: Params | dict[str, Any]) -> None:
    """Write the shards of every dataset whose inputs or saliency params changed, `quality.csv` and the manifest."""
    params = as_params(params)
    paths = Paths.from_params(params)
    cfg = params["saliency"]
    fusion = Fusion(build_expert(cfg["bottom_up"], **expert_kwargs(cfg, cfg["bottom_up"])),
                    [build_expert(name, **expert_kwargs(cfg, name)) for name in cfg["relevance"]],
                    cfg["fusion_floor"])
    subjects = build_subjects(cfg["subjects"], paths.data)
    unreadable = read_unreadable(paths.data)
    load = _Loader(image_root(paths.data), unreadable)
    out = paths.saliency / "shards"
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = paths.saliency / "manifest.json"
    previous = json.loads(manifest_path.read_text())["datasets"] if manifest_path.is_file() else {}
    summary: dict[str, dict[str, Any]] = {}
    for row in read_manifest(paths.data).itertuples():
        files = [eval_path(paths.data, row.dataset)] + ([train_path(paths.data, row.dataset)] if row.train_rows else [])
        pairs = _pairs(paths.data, row.dataset, row.train_rows > 0)
        skipped = sorted({image for _, image in pairs if image in unreadable})
        fingerprint = _fingerprint(cfg.to_dict(), files, skipped)
        if row.dataset in previous and previous[row.dataset]["fingerprint"] == fingerprint \
                and shard_exists(out, row.dataset):
            summary[row.dataset] = previous[row.dataset]
            continue
        load.skipped = {}
        counts = _shard(row.dataset, pairs, subjects, fusion, load, cfg["map_size"], out)
        summary[row.dataset] = {**counts, "skipped": load.skipped, "fingerprint": fingerprint}
    load.skipped = {}
    quality = score_experts(params, paths.data, fusion, subjects, paths.saliency / "quality_samples.npz", load)
    with atomic_path(paths.saliency / "quality.csv") as tmp:
        quality.to_csv(tmp, index=False)
    manifest = {"bottom_up": cfg["bottom_up"], "relevance": list(cfg["relevance"]), "map_size": cfg["map_size"],
                "shards": list(summary), "datasets": summary,
                "skipped_images": sum(len(d["skipped"]) for d in summary.values()),
                "small_images": sum(d["small_images"] for d in summary.values())}
    write_json(manifest_path, manifest)
