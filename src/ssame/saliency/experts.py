"""Visual experts behind one interface and a registry; `saliency.experts` in params picks them by name.

An expert maps a batch of RGB uint8 images and the subject phrases of each image's text to one float32 map per
image, at the image's resolution, in [0, 1]. Bottom-up experts ignore the phrases; phrase-conditioned experts return
an all-zero map for an image without phrases (fusion then falls back to bottom-up saliency). A new expert is one
class registered with `@register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
from PIL import Image

EXPERTS: dict[str, type[Expert]] = {}


def register(cls: type[Expert]) -> type[Expert]:
    EXPERTS[cls.name] = cls
    return cls


# Experts living in modules with heavy imports register when first asked for.
_PLUGINS = {"colour_terms": "ssame.saliency.colour", "owlv2": "ssame.saliency.detectors",
            "grounding_dino": "ssame.saliency.detectors"}


def build_expert(name: str, **kwargs: Any) -> Expert:
    """An expert by registry name, built by its class's `build` from `kwargs` (params `saliency.expert_args.<name>`);
    a detector given `sam: {model, revision}` has its boxes refined into SAM masks."""
    if name not in EXPERTS and name in _PLUGINS:
        importlib.import_module(_PLUGINS[name])
    if name not in EXPERTS:
        raise KeyError(f"unknown saliency expert '{name}'; registered: {sorted({*EXPERTS, *_PLUGINS})}")
    return EXPERTS[name].build(**kwargs)


def expert_kwargs(saliency: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The keyword arguments params give expert `name`: `saliency.expert_args.<name>`; none when it has no entry
    (a weight-free expert) or a null one (a detector the profile does not use; the schema requires it when used)."""
    args = saliency["expert_args"]
    if name not in args or args[name] is None:
        return {}
    return dict(args[name])


def resolve_device(device: str) -> str:
    """A torch device name: `auto` is cuda when torch sees a GPU, else cpu; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def normalise(sal: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (float32); a constant map becomes all ones (no information, no preference)."""
    sal = np.asarray(sal, dtype=np.float32)
    lo, hi = float(sal.min()), float(sal.max())
    if hi - lo < 1e-8:
        return np.ones_like(sal)
    return (sal - lo) / (hi - lo)


class Expert:
    """Base class: `__call__(images, phrases) -> maps`, one (H, W) float32 map in [0, 1] per image."""

    name: ClassVar[str]
    phrase_conditioned: ClassVar[bool] = False

    @classmethod
    def build(cls, **kwargs: Any) -> Expert:
        """The expert from params' keyword arguments (detectors override this to resolve the device and add SAM)."""
        return cls(**kwargs)

    def __call__(self, images: list[np.ndarray], phrases: list[list[str]]) -> list[np.ndarray]:
        if len(images) != len(phrases):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
        return [self.one(image, words) for image, words in zip(images, phrases, strict=True)]

    def one(self, image: np.ndarray, phrases: list[str]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement one() or __call__()")


class _OpenCVExpert(Expert):
    factory: ClassVar[Callable[[], Any]]

    def one(self, image: np.ndarray, phrases: list[str]) -> np.ndarray:
        ok, sal = self.factory().computeSaliency(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"OpenCV {self.name} saliency failed on an image of shape {image.shape}")
        return normalise(sal)


@register
class SpectralResidual(_OpenCVExpert):
    """Hou & Zhang's spectral residual (OpenCV contrib), bottom-up."""

    name = "spectral_residual"
    factory = staticmethod(cv2.saliency.StaticSaliencySpectralResidual_create)


@register
class FineGrained(_OpenCVExpert):
    """Montabone & Soto's fine-grained center-surround saliency (OpenCV contrib), bottom-up."""

    name = "fine_grained"
    factory = staticmethod(cv2.saliency.StaticSaliencyFineGrained_create)


@register
class CenterBias(Expert):
    """Isotropic Gaussian at the image centre (sigma = `sigma` x the shorter side): the classic baseline."""

    name = "center_bias"

    def __init__(self, sigma: float = 0.25):
        self.sigma = sigma

    def one(self, image: np.ndarray, phrases: list[str]) -> np.ndarray:
        h, w = image.shape[:2]
        ys, xs = (np.arange(h) - (h - 1) / 2)[:, None], (np.arange(w) - (w - 1) / 2)[None, :]
        s = self.sigma * min(h, w)
        return np.exp(-(ys**2 + xs**2) / (2 * s**2)).astype(np.float32)


@register
class Uniform(Expert):
    """The same value everywhere: the chance baseline."""

    name = "uniform"

    def one(self, image: np.ndarray, phrases: list[str]) -> np.ndarray:
        return np.ones(image.shape[:2], dtype=np.float32)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 image, decoded by PIL as training and the data stage's readability check decode it; a clear error
    naming the file when it is missing or unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except Exception as err:  # whatever PIL raises (OSError, SyntaxError, DecompressionBombError, ...), as training
        raise ValueError(f"unreadable or corrupt image: {path} ({type(err).__name__}: {err})") from err
