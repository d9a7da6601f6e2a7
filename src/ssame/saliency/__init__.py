"""Saliency stage: a bottom-up map for every image the benchmark uses, and the subject phrases of its texts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from ssame.config import Paths
from ssame.data.io import image_root, read_eval, read_manifest, read_train
from ssame.saliency.experts import read_image, saliency_map
from ssame.saliency.store import SaliencyStore, write_shard
from ssame.saliency.subjects import LexiconSubjects

__all__ = ["SaliencyStore", "build"]


def _pairs(data_dir, row) -> Iterator[tuple[str, str]]:
    """(text, image path) pairs of one manifest row, train side then eval side; images may be ''."""
    if row.train_rows > 0:
        train = read_train(data_dir, row.dataset)
        for text_col, image_col in [("qry", "qry_image_path"), ("pos_text", "pos_image_path"),
                                    ("neg_text", "neg_image_path")]:
            yield from zip(train[text_col], train[image_col], strict=True)
    evaluation = read_eval(data_dir, row.dataset)
    yield from zip(evaluation["qry_text"], evaluation["qry_img_path"], strict=True)
    for texts, images in zip(evaluation["tgt_text"], evaluation["tgt_img_path"], strict=True):
        yield from zip(texts, images, strict=True)


def build(params: dict[str, Any]) -> None:
    """Write `<results>/saliency/shards/<dataset>.npz` + `.subjects.jsonl` and `manifest.json`."""
    paths = Paths.from_params(params)
    cfg = params["saliency"]
    root = image_root(paths.data)
    subjects = LexiconSubjects(paths.data / "lexicon.json")
    shard_dir = paths.saliency / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, int]] = {}
    for row in read_manifest(paths.data).itertuples():
        maps: dict = {}
        seen: set[tuple[str, str]] = set()
        with open(shard_dir / f"{row.dataset}.subjects.jsonl", "w") as out:
            for text, image in tqdm(_pairs(paths.data, row), desc=f"saliency {row.dataset}", unit="pair"):
                if image and image not in maps:
                    maps[image] = saliency_map(read_image(root / image), cfg["expert"], cfg["map_size"])
                if text.strip() and (text, image) not in seen:
                    seen.add((text, image))
                    out.write(json.dumps({"text": text, "image_path": image, "subjects": subjects(text)}) + "\n")
        if maps:
            write_shard(shard_dir / f"{row.dataset}.npz", maps)
        summary[row.dataset] = {"images": len(maps)}
    manifest = {"expert": cfg["expert"], "map_size": cfg["map_size"],
                "shards": [name for name, s in summary.items() if s["images"]], "datasets": summary}
    (paths.saliency / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
