"""What pretraining taught: on held-out scenes, does the model's likelihood pick the right answer about the subject?

For each probe scene and question kind (colour, shape, position), every answer of that kind's vocabulary completes
the question; the answer whose completed text the model finds most likely is its pick. Chance: 1 / vocabulary size
(1/8 colours, 1/6 shapes, 1/5 positions). Scenes come from their own stream (corpus.scenes(..., stream=1)).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ssame.data.mini.render import render
from ssame.model import InputBuilder
from ssame.pretrain import corpus
from ssame.pretrain.lm import encode, token_log_probs

BATCH = 64


@torch.no_grad()
def answer_scores(model, build: InputBuilder, samples: list[corpus.Sample], mrope: str) -> torch.Tensor:
    """Summed log-probability of each sample's text after its image, in batches of BATCH."""
    scores = []
    for start in range(0, len(samples), BATCH):
        log_probs, counted = token_log_probs(model, encode(build, samples[start:start + BATCH]), mrope)
        scores.append((log_probs * counted).sum(-1))
    return torch.cat(scores)


def probe(model, build: InputBuilder, params: Mapping[str, Any]) -> dict[str, float]:
    """Accuracy per question kind over params `pretrain.probe_scenes` held-out scenes ({} when that is 0)."""
    cfg = params["pretrain"]
    if cfg["probe_scenes"] == 0:
        return {}
    scenes = corpus.scenes(cfg["seed"], cfg["probe_scenes"], cfg["image_size"], stream=1)
    images = [render(scene)[0] for scene in scenes]
    accuracy = {}
    for kind, vocab in corpus.VOCAB.items():  # one text per (scene, answer), scene-major
        samples = [corpus.Sample(image, corpus.with_image(f"{corpus.question(scene.subject, kind)} {a}"))
                   for scene, image in zip(scenes, images, strict=True) for a in vocab]
        picks = answer_scores(model, build, samples, params["model"]["mrope"]).view(len(scenes), len(vocab)).argmax(1)
        truth = torch.tensor([vocab.index(corpus.answer(scene.subject, kind)) for scene in scenes])
        accuracy[kind] = float((picks == truth).float().mean())
    return accuracy
