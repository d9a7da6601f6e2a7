"""Saliency quality against ground-truth subject masks: ROC AUC, IoU of the top-k % region, pointing game."""

from __future__ import annotations

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score


def _at(sal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if sal.shape != mask.shape:
        sal = cv2.resize(sal.astype(np.float32), (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    return sal


def auc(sal: np.ndarray, mask: np.ndarray) -> float:
    """Probability that a subject pixel scores above a background pixel (ties count half); 0.5 = chance."""
    mask = mask.astype(bool)
    if mask.all() or not mask.any():
        raise ValueError("AUC needs a mask with both subject and background pixels")
    return float(roc_auc_score(mask.ravel(), _at(sal, mask).ravel()))


def iou_top(sal: np.ndarray, mask: np.ndarray, fraction: float) -> float:
    """IoU between the mask and the `fraction` of pixels with the highest saliency (ties broken by position)."""
    mask = mask.astype(bool)
    values = _at(sal, mask).ravel()
    top = np.zeros(values.size, dtype=bool)
    top[np.argsort(-values, kind="stable")[: max(1, round(fraction * values.size))]] = True
    return float((top & mask.ravel()).sum() / (top | mask.ravel()).sum())


def pointing(sal: np.ndarray, mask: np.ndarray) -> float:
    """1 if the map's maximum (first, in raster order) falls inside the mask."""
    return float(mask.astype(bool).ravel()[int(np.argmax(_at(sal, mask).ravel()))])
