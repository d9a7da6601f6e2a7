"""Ranking metrics of the MMEB protocol: one relevant candidate per query, the ground truth at index 0."""

from __future__ import annotations

import numpy as np
import torch

CUTOFFS = (1, 5, 10)


def rank_candidates(scores: torch.Tensor) -> tuple[int, list[int]]:
    """(1-based rank of candidate 0, candidate indices best first) for one query's candidate scores.

    Ties are broken by candidate index, so a tie with the ground truth ranks it first, as VLM2Vec's `argmax`
    (first maximum) does: rank = 1 + number of candidates scored strictly higher than candidate 0.
    """
    ranking = torch.sort(-scores, stable=True).indices
    return int((scores > scores[0]).sum()) + 1, ranking.tolist()


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """hit@{1,5,10}, MRR and NDCG@5 (single relevant item: 1/log2(rank+1) within the top 5) from 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0 or (ranks < 1).any():
        raise ValueError("ranking_metrics: need at least one rank, all >= 1")
    metrics = {f"hit_at_{k}": float(np.mean(ranks <= k)) for k in CUTOFFS}
    metrics["mrr"] = float(np.mean(1.0 / ranks))
    metrics["ndcg_at_5"] = float(np.mean(np.where(ranks <= 5, 1.0 / np.log2(ranks + 1), 0.0)))
    return metrics
