"""A weight-free phrase-conditioned expert: colour terms of the phrases grounded by a soft colour-naming model."""

from __future__ import annotations

import re

import cv2
import numpy as np

from ssame.saliency.experts import Expert, register

# Focal colours of common English colour terms (sRGB; CSS named-colour values where one exists).
COLOUR_TERMS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "orange": (255, 140, 0), "purple": (128, 0, 160), "pink": (255, 105, 180), "cyan": (0, 255, 255),
    "magenta": (255, 0, 255), "brown": (139, 69, 19), "black": (0, 0, 0), "white": (255, 255, 255),
    "grey": (128, 128, 128), "gray": (128, 128, 128),
}
_WORD = re.compile(r"[a-z]+")


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)


@register
class ColourTerms(Expert):
    """P(term | pixel) under a softmax over CIELAB distances to every term's focal colour, max over the terms.

    A pixel counts for "red" in proportion to how much better "red" names it than any other term, so a prototype
    off by a few units still wins its pixels. Phrases without a colour term give an all-zero map.
    """

    name = "colour_terms"
    phrase_conditioned = True

    def __init__(self, temperature: float = 15.0):
        self.temperature = temperature
        self.terms = list(COLOUR_TERMS)
        self.focal = _lab(np.array([COLOUR_TERMS[t] for t in self.terms], dtype=np.uint8)[None])

    def one(self, image: np.ndarray, phrases: list[str]) -> np.ndarray:
        wanted = {w for p in phrases for w in _WORD.findall(p.lower()) if w in COLOUR_TERMS}
        if not wanted:
            return np.zeros(image.shape[:2], dtype=np.float32)
        pixels = _lab(image)
        dist = np.linalg.norm(pixels[:, None, :] - self.focal[None], axis=-1)
        logits = -dist / self.temperature
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        columns = [i for i, t in enumerate(self.terms) if t in wanted]
        return prob[:, columns].max(axis=1).reshape(image.shape[:2]).astype(np.float32)
