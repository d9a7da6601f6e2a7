"""Weight-free bottom-up saliency experts (OpenCV contrib `saliency` module)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

Expert = Callable[[np.ndarray], np.ndarray]


def _opencv_expert(factory: Callable[[], object]) -> Expert:
    def compute(image_bgr: np.ndarray) -> np.ndarray:
        ok, sal = factory().computeSaliency(image_bgr)
        if not ok:
            raise RuntimeError("OpenCV saliency computation failed")
        return np.asarray(sal, dtype=np.float32)

    return compute


EXPERTS: dict[str, Expert] = {
    "spectral_residual": _opencv_expert(cv2.saliency.StaticSaliencySpectralResidual_create),
    "fine_grained": _opencv_expert(cv2.saliency.StaticSaliencyFineGrained_create),
}


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 image; a clear error for a missing or unreadable file."""
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"unreadable or corrupt image: {path}")
    return image


def saliency_map(image_bgr: np.ndarray, expert: str, size: int) -> np.ndarray:
    """Saliency of one image resized to size x size and min-max normalised to [0, 1] (float32)."""
    sal = EXPERTS[expert](image_bgr)
    sal = cv2.resize(sal, (size, size), interpolation=cv2.INTER_AREA)
    lo, hi = float(sal.min()), float(sal.max())
    if hi - lo < 1e-8:
        return np.full((size, size), 1.0, dtype=np.float32)
    return ((sal - lo) / (hi - lo)).astype(np.float32)
