"""The pretraining corpus: captions and answers of MMEB-mini-style scenes drawn from their own seed stream.

Scenes come from MMEB-mini's in-distribution generator (`Shift` IND only: no held-out colour-shape pair, no clutter,
no unseen background, so the OOD datasets stay out of distribution) under a seed stream no benchmark split uses.
Texts follow templates no benchmark text uses, so no pretraining image or text is an evaluation image or text
(tests/test_pretrain.py checks both). Each scene gives six (image, text) samples, as an MLLM's pretraining mix
holds captions, dense captions, VQA and region captions.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ssame.data.io import IMAGE_TOKEN
from ssame.data.mini.render import box_around, render
from ssame.data.mini.scene import COLOURS, IND, POSITIONS, SHAPES, Obj, Scene, sample_scene
from ssame.data.mini.tasks import PHRASES

STREAM = zlib.crc32(b"ssame-pretrain")  # a spawn key no MMEB-mini split uses (those hash dataset names)
QUESTIONS = ("colour", "shape", "position")
SAMPLES_PER_SCENE = 3 + len(QUESTIONS)
VOCAB = {"colour": tuple(COLOURS), "shape": SHAPES, "position": tuple(POSITIONS)}


@dataclass(frozen=True)
class Sample:
    """One pretraining example: an image and the text the model learns to generate after it."""

    image: Image.Image
    text: str


def scene_rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAM, stream)))


def scenes(seed: int, count: int, image_size: int, stream: int = 0) -> list[Scene]:
    """`count` in-distribution scenes of the pretraining stream (`stream` 1 holds the probe's scenes)."""
    rng = scene_rng(seed, stream)
    return [sample_scene(rng, image_size, IND) for _ in range(count)]


def name(obj: Obj) -> str:
    return f"{obj.colour} {obj.shape}"


def where(obj: Obj) -> str:
    return PHRASES[obj.position]


def question(obj: Obj, kind: str) -> str:
    """A question about `obj` whose answer is its `kind` (colour, shape or position); the answer follows it."""
    if kind == "colour":
        return f"Q: which colour is the big {obj.shape}? A:"
    if kind == "shape":
        return f"Q: which shape is the big {obj.colour} thing? A:"
    if kind == "position":
        return f"Q: where is the {name(obj)}? A:"
    raise ValueError(f"unknown question kind {kind!r}; known: {QUESTIONS}")


def answer(obj: Obj, kind: str) -> str:
    return {"colour": obj.colour, "shape": obj.shape, "position": obj.position}[kind]


def with_image(text: str) -> str:
    """The text after the image, in MMEB's placeholder layout (the input builder expands it)."""
    return f"{IMAGE_TOKEN}\n{text}"


def samples(scene: Scene, rng: np.random.Generator) -> Iterator[Sample]:
    """Caption, dense caption, the three questions about the subject with their answers, and a region caption of one
    object's crop."""
    image, _ = render(scene)
    objects = [scene.subject, *scene.distractors]
    yield Sample(image, with_image(f"The big {name(scene.subject)} is {where(scene.subject)}."))
    listed = [objects[k] for k in rng.permutation(len(objects))]
    yield Sample(image, with_image("Shapes: " + "; ".join(f"{name(o)} {where(o)}" for o in listed) + "."))
    for kind in QUESTIONS:
        yield Sample(image, with_image(f"{question(scene.subject, kind)} {answer(scene.subject, kind)}"))
    obj = objects[int(rng.integers(len(objects)))]
    crop = image.crop(box_around(obj, scene.size)).resize(image.size, Image.Resampling.BILINEAR)
    yield Sample(crop, with_image(f"Close-up of a {name(obj)}."))


def build_corpus(seed: int, count: int, image_size: int) -> list[Sample]:
    """The whole corpus, in a fixed order (SAMPLES_PER_SCENE per scene)."""
    rng = scene_rng(seed, 2)
    return [sample for scene in scenes(seed, count, image_size) for sample in samples(scene, rng)]
