"""MMEB-mini examples per task: a query and its candidates, ground truth first, hardest negative second."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..prompts import format_v1
from .render import background_box, box_around, save_crop
from .scene import COLOURS, POSITIONS, SHAPES, Obj, Scene

PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
IMAGE_TARGET = format_v1("Represent the given image", image=True)
CROP_TARGET = format_v1("Represent the given cropped image of the object", image=True)
Candidate = tuple[str, str]  # (text, image path)
Example = tuple[str, str, list[Candidate]]  # (query text, query image path, candidates)


@dataclass
class Context:
    """What a task sees: the split's scenes, their images and where to write crops."""

    dataset: str
    rng: np.random.Generator
    scenes: list[Scene]
    paths: list[str]
    images: list[Image.Image]
    image_root: Path
    combos: frozenset[tuple[str, str]]  # colour-shape pairs texts may mention in this dataset


def _describe(colour: str, shape: str, position: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape} {PHRASES[position]}"


def caption(obj: Obj) -> str:
    return _describe(obj.colour, obj.shape, obj.position)


def _ordered(
    gt: str, hard: Iterable[str], rest: Iterable[str], rng: np.random.Generator, n: int
) -> list[str]:
    """gt, then hard negatives in order, then shuffled rest; unique, without gt, n in all."""
    rest = list(rest)
    out = [gt]
    for value in [*hard, *(rest[i] for i in rng.permutation(len(rest)))]:
        if value not in out:
            out.append(value)
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct candidates, {n} needed")
    return out[:n]


def _by_relation(scene: Scene, *relations: str) -> list[Obj]:
    return [d for rel in relations for d in scene.distractors if d.relation == rel]


def shape_cls(ctx: Context, i: int, n: int) -> Example:
    s = ctx.scenes[i]
    hard = [d.shape for d in _by_relation(s, "same_colour", "other")]
    labels = _ordered(s.subject.shape, hard, SHAPES, ctx.rng, n)
    return (
        format_v1("Identify the shape of the main object in the image", image=True),
        ctx.paths[i],
        [(t, "") for t in labels],
    )


def colour_cls(ctx: Context, i: int, n: int) -> Example:
    s = ctx.scenes[i]
    hard = [d.colour for d in _by_relation(s, "same_shape", "other")]
    labels = _ordered(s.subject.colour, hard, COLOURS, ctx.rng, n)
    return (
        format_v1("Identify the colour of the main object in the image", image=True),
        ctx.paths[i],
        [(t, "") for t in labels],
    )


def _vqa(question: str, path: str, answers: list[str]) -> Example:
    query = format_v1("Represent the given image with the following question", question, image=True)
    return query, path, [(a, "") for a in answers]


def _filler(exclude: Iterable[str]) -> list[str]:
    """Answers of the other question types, to pad a VQA candidate list."""
    return [a for a in (*SHAPES, *COLOURS, *POSITIONS) if a not in set(exclude)]


def pos_vqa(ctx: Context, i: int, n: int) -> Example:
    s = ctx.scenes[i]
    hard = [d.position for d in _by_relation(s, "same_colour", "same_shape", "other")]
    same_type = _ordered(s.subject.position, hard, POSITIONS, ctx.rng, len(POSITIONS))
    answers = _ordered(s.subject.position, same_type[1:], _filler(POSITIONS), ctx.rng, n)
    question = f"What is the position of the {s.subject.colour} {s.subject.shape}?"
    return _vqa(question, ctx.paths[i], answers)


def attr_vqa(ctx: Context, i: int, n: int) -> Example:
    s = ctx.scenes[i]
    if ctx.rng.integers(2):
        question = f"What is the colour of the large {s.subject.shape}?"
        gt, vocab = s.subject.colour, COLOURS
        hard = [d.colour for d in _by_relation(s, "same_shape", "other")]
    else:
        question = f"What is the shape of the large {s.subject.colour} object?"
        gt, vocab = s.subject.shape, SHAPES
        hard = [d.shape for d in _by_relation(s, "same_colour", "other")]
    same_type = _ordered(gt, hard, vocab, ctx.rng, len(vocab))
    return _vqa(question, ctx.paths[i], _ordered(gt, same_type[1:], _filler(vocab), ctx.rng, n))


def t2i(ctx: Context, i: int, n: int) -> Example:
    """Caption -> images; negatives hold the described object as a distractor or share its attributes."""
    subj = ctx.scenes[i].subject
    scored = []
    for j, other in enumerate(ctx.scenes):
        o = other.subject
        if caption(o) == caption(subj):
            continue
        score = 3 * any(d.combo == subj.combo for d in other.distractors)
        score += (o.colour == subj.colour) + (o.shape == subj.shape) + (o.position == subj.position)
        scored.append((-score, ctx.rng.random(), j))
    if len(scored) < n - 1:
        raise ValueError(
            f"{ctx.dataset}: only {len(scored)} non-matching images for query {i}, {n - 1} needed"
        )
    negatives = [j for _, _, j in sorted(scored)[: n - 1]]
    query = format_v1("Find an image that matches the given caption", caption(subj))
    return query, "", [(IMAGE_TARGET, ctx.paths[j]) for j in [i, *negatives]]


def i2t(ctx: Context, i: int, n: int) -> Example:
    """Image -> captions; negatives describe its distractors (objects in the image), then other images' subjects.

    As in MMEB's i2t sets, the other negatives are captions drawn like the ground truth, so a model blind to the image
    sits at chance. (Near misses built around the ground truth, one attribute changed, would put it at the centre of
    its candidates: any image-blind word preference then ranks a near miss first, far below chance.)
    """
    subj = ctx.scenes[i].subject
    hard = [caption(d) for d in _by_relation(ctx.scenes[i], "same_colour", "same_shape", "other")]
    others = [caption(ctx.scenes[j].subject) for j in ctx.rng.permutation(len(ctx.scenes))]
    pool = [_describe(c, s, p) for s, c in sorted(ctx.combos) for p in POSITIONS]  # when the split has few images
    captions = _ordered(caption(subj), hard + others, pool, ctx.rng, n)
    query = format_v1("Find an image caption describing the given image", image=True)
    return query, ctx.paths[i], [(c, "") for c in captions]


def ground(ctx: Context, i: int, n: int) -> Example:
    """Image + referring phrase -> crops; negatives isolate distractors, then background."""
    s, image = ctx.scenes[i], ctx.images[i]
    gt_box = box_around(s.subject, s.size)
    boxes = [gt_box] + [box_around(d, s.size) for d in _by_relation(s, "same_colour", "same_shape", "other")]
    boxes = boxes[:n]
    while len(boxes) < n:
        boxes.append(background_box(ctx.rng, s, gt_box[2] - gt_box[0]))
    stem = Path(ctx.paths[i]).with_suffix("")
    crops = []
    for k, box in enumerate(boxes):
        rel = f"{stem.parent}/crops/{stem.name}_{k}.png"
        save_crop(image, box, s.size, ctx.image_root / rel)
        crops.append((CROP_TARGET, rel))
    phrase = f"{s.subject.colour} {s.subject.shape}"
    query = format_v1("Select the portion of the image that isolates the object labeled as", phrase, image=True)
    return query, ctx.paths[i], crops


TASKS: dict[str, Callable[[Context, int, int], Example]] = {
    "shape_cls": shape_cls,
    "colour_cls": colour_cls,
    "pos_vqa": pos_vqa,
    "attr_vqa": attr_vqa,
    "t2i": t2i,
    "i2t": i2t,
    "ground": ground,
}
