"""UniME-V2's hard-negative mining as plain array functions: candidates by similarity, false negatives filtered
by the judge, and the cyclic choice of k negatives per query per epoch (docs/seed_systems.md)."""

from __future__ import annotations

import numpy as np


def top_candidates(similarity: np.ndarray, own: np.ndarray, top_k: int, threshold: float) -> list[np.ndarray]:
    """Per query (row of `similarity`, queries x candidates): candidate indices by decreasing similarity, at most
    `top_k`, without its own positive (`own[i]`) and without any at or above `threshold` δ (likely false
    negatives: near-duplicates of the positive). When δ leaves none, the least similar other candidate is kept
    (so every query has one to judge). Ties keep the lower index first."""
    if similarity.ndim != 2 or len(own) != len(similarity):
        raise ValueError(f"similarity {similarity.shape} needs one own-positive index per row, got {len(own)}")
    if similarity.shape[1] < 2:
        raise ValueError("the candidate pool holds only the query's own positive: nothing to mine")
    picked = []
    for i, row in enumerate(similarity):
        order = np.argsort(-row, kind="stable")
        others = order[order != own[i]]
        keep = others[row[others] < threshold]
        picked.append(keep[:top_k] if len(keep) else others[-1:])
    return picked


def drop_false_negatives(judge: np.ndarray, positive: float, margin: float) -> tuple[np.ndarray, bool]:
    """Positions of `judge` (scores of one query's candidates, in mined order) kept as negatives: those the judge
    scores below the positive's score minus `margin` β. When none is left, the one the judge scores lowest is
    kept (the least likely false negative), so every query has a negative; the flag says this fallback applied."""
    kept = np.flatnonzero(judge < positive - margin)
    if len(kept) or not len(judge):
        return kept, False
    return np.array([int(np.argmin(judge))]), True


def cyclic_choice(available: int, k: int, epoch: int) -> np.ndarray:
    """Positions of the k negatives a query uses in `epoch`: the next k of its mined list, cycling, so successive
    epochs walk through all of them; with fewer than k, the list repeats (padding)."""
    if available < 1:
        raise ValueError("a query needs at least one mined negative")
    return (epoch * k + np.arange(k)) % available
