"""MMEB-mini: a synthetic, seed-deterministic MMEB with salient-subject traps (numpy + PIL only)."""

from __future__ import annotations

import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssame.atomic import write_json

from .. import io
from .render import render, save_png
from .scene import (
    CLUTTER,
    COLOURS,
    IND,
    NEW_BACKGROUND,
    NOVEL,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    Shift,
    sample_scene,
)
from .tasks import TASKS, Context


@dataclass(frozen=True)
class Spec:
    name: str
    meta_task: str
    split: str  # IND (train + eval) | OOD (eval only)
    task: str  # key of tasks.TASKS
    shift: Shift
    probes: str


DATASETS = (
    Spec("MiniShapeCls", "classification", "IND", "shape_cls", IND, "shape of the salient subject"),
    Spec("MiniColourCls", "classification", "IND", "colour_cls", IND, "colour of the salient subject"),
    Spec("MiniPosVQA", "vqa", "IND", "pos_vqa", IND, "where the object named by colour + shape is"),
    Spec("MiniAttrVQA", "vqa", "IND", "attr_vqa", IND, "colour/shape of the large object named by the other"),
    Spec(
        "MiniT2I",
        "retrieval",
        "IND",
        "t2i",
        IND,
        "caption -> image; negatives hold the object as a distractor",
    ),
    Spec("MiniI2T", "retrieval", "IND", "i2t", IND,
         "image -> caption; negatives describe its distractors, then other images' subjects"),
    Spec("MiniGround", "grounding", "IND", "ground", IND, "referring phrase -> crop of the subject"),
    Spec(
        "MiniNovelShapeCls",
        "classification",
        "OOD",
        "shape_cls",
        NOVEL,
        "shape, on unseen colour-shape pairs",
    ),
    Spec("MiniClutterVQA", "vqa", "OOD", "attr_vqa", CLUTTER, "attribute VQA with 5-7 distractors"),
    Spec("MiniNewBgT2I", "retrieval", "OOD", "t2i", NEW_BACKGROUND, "caption -> image on unseen backgrounds"),
    Spec("MiniClutterGround", "grounding", "OOD", "ground", CLUTTER, "grounding with 5-7 distractors"),
)


def num_candidates(spec: Spec, cfg: dict) -> int:
    if spec.meta_task == "classification":
        return len(SHAPES) if spec.task == "shape_cls" else len(COLOURS)
    return cfg[f"{spec.meta_task}_candidates"]


def _rng(cfg: dict, spec: Spec, split: str, stream: int) -> np.random.Generator:
    key = (zlib.crc32(spec.name.encode()), ("train", "eval").index(split), stream)
    return np.random.default_rng(np.random.SeedSequence(cfg["seed"], spawn_key=key))


def num_rows(spec: Spec, split: str, cfg: dict) -> int:
    return cfg["train_rows_per_dataset"] if split == "train" else cfg["eval_queries_per_dataset"]


def dataset_scenes(cfg: dict, spec: Spec, split: str) -> list[Scene]:
    """The scenes of one dataset split; retrieval pools hold at least 2x the candidate count."""
    n = num_rows(spec, split, cfg)
    if spec.task == "t2i":
        n = max(n, 2 * (2 if split == "train" else num_candidates(spec, cfg)))
    rng = _rng(cfg, spec, split, 0)
    return [sample_scene(rng, cfg["image_size"], spec.shift) for _ in range(n)]


def _build_split(cfg: dict, spec: Spec, split: str, data_dir: Path) -> None:
    scenes = dataset_scenes(cfg, spec, split)
    paths, images = [], []
    for k, scene in enumerate(scenes):
        rel = f"{spec.name}/{split}/{k:05d}.png"
        image, mask = render(scene)
        save_png(image, io.image_root(data_dir) / rel)
        save_png(mask, io.mask_path(data_dir, rel))
        paths.append(rel)
        images.append(image)
    combos = frozenset(spec.shift.subjects) | frozenset(spec.shift.distractor_combos)
    ctx = Context(
        spec.name, _rng(cfg, spec, split, 1), scenes, paths, images, io.image_root(data_dir), combos
    )
    n_cand = 2 if split == "train" else num_candidates(spec, cfg)
    examples = [TASKS[spec.task](ctx, i, n_cand) for i in range(num_rows(spec, split, cfg))]
    if split == "train":
        rows = [
            {
                "qry": q,
                "qry_image_path": qi,
                "pos_text": c[0][0],
                "pos_image_path": c[0][1],
                "neg_text": c[1][0],
                "neg_image_path": c[1][1],
            }
            for q, qi, c in examples
        ]
        io.write_train(data_dir, spec.name, pd.DataFrame(rows, columns=list(io.TRAIN_COLUMNS)))
    else:
        rows = [
            {
                "qry_text": q,
                "qry_img_path": qi,
                "tgt_text": [t for t, _ in c],
                "tgt_img_path": [p for _, p in c],
            }
            for q, qi, c in examples
        ]
        io.write_eval(data_dir, spec.name, pd.DataFrame(rows, columns=list(io.EVAL_COLUMNS)))


def lexicon() -> dict[str, list[str]]:
    """The attribute words subjects are made of."""
    return {
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "positions": list(POSITIONS),
        "sizes": list(SIZES),
    }


def build_mini(cfg: dict, data_dir: Path, workers: int = 2) -> None:
    """Write MMEB-mini (images, masks, parquets, manifest, lexicon) under `data_dir`, plus `unreadable.json` (empty:
    every image is rendered here) and `eval_checks.json` (zero counts: no duplicates, exact candidate counts)."""
    jobs = [
        (spec, split)
        for spec in DATASETS
        for split in (("train", "eval") if spec.split == "IND" else ("eval",))
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # a plain dict travels to the workers (its values are ints)
        futures = [pool.submit(_build_split, dict(cfg), spec, split, data_dir) for spec, split in jobs]
        for future in futures:
            future.result()
    io.write_manifest(
        data_dir,
        [
            {
                "dataset": s.name,
                "meta_task": s.meta_task,
                "split": s.split,
                "num_candidates": num_candidates(s, cfg),
                "num_queries": cfg["eval_queries_per_dataset"],
                "train_rows": cfg["train_rows_per_dataset"] if s.split == "IND" else 0,
            }
            for s in DATASETS
        ],
    )
    write_json(data_dir / "lexicon.json", lexicon())
    io.write_unreadable(data_dir, {}, {})
    io.write_eval_checks(
        data_dir, {s.name: io.eval_checks(io.read_eval(data_dir, s.name), num_candidates(s, cfg)) for s in DATASETS}
    )
