"""Fusion: phrase-conditioned relevance x bottom-up saliency, one map per (text, image) pair."""

from __future__ import annotations

import numpy as np

from ssame.saliency.experts import Expert, normalise


def fuse(bottom_up: np.ndarray, relevance: np.ndarray | None, floor: float) -> np.ndarray:
    """normalise(relevance * (floor + bottom_up)); without relevance (no phrase, nothing found) the bottom-up map.

    `floor` keeps the inside of a uniformly coloured subject, where centre-surround saliency is low, in the map.
    """
    if relevance is None or float(relevance.max()) <= 0.0:
        return bottom_up
    return normalise(relevance * (floor + bottom_up))


class Fusion:
    """Bottom-up expert + phrase-conditioned experts (max-combined) -> fused maps for a batch of pairs."""

    def __init__(self, bottom_up: Expert, relevance: list[Expert], floor: float):
        if bottom_up.phrase_conditioned:
            raise ValueError(f"bottom-up expert '{bottom_up.name}' is phrase-conditioned")
        for expert in relevance:
            if not expert.phrase_conditioned:
                raise ValueError(f"relevance expert '{expert.name}' is not phrase-conditioned")
        self.bottom_up, self.relevance, self.floor = bottom_up, relevance, floor

    def relevance_maps(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[np.ndarray | None]:
        if not self.relevance:
            return [None] * len(images)
        per_expert = [expert(images, phrases) for expert in self.relevance]
        return [np.max(np.stack(maps), axis=0) for maps in zip(*per_expert, strict=True)]

    def __call__(self, images: list[np.ndarray], phrases: list[list[str]],
                 bottom_up: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Fused maps; pass precomputed bottom-up maps to avoid recomputing them per pair."""
        bottom_up = bottom_up if bottom_up is not None else self.bottom_up(images, [[]] * len(images))
        return [fuse(b, r, self.floor)
                for b, r in zip(bottom_up, self.relevance_maps(images, phrases), strict=True)]
