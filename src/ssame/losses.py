"""Training objectives: sample-level InfoNCE (in-batch + hard negatives), subject-level alignment, and the
saliency-guided attention loss; plus cross-process gathering that keeps the gradient on the local slice."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (same shape on every process) across processes; only the local slice keeps its gradient
    (the open_clip scheme: scale the loss by the world size so DDP's gradient averaging restores the full-batch
    gradient)."""
    if _world() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(_world())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def gather_varlen_with_grad(x: torch.Tensor) -> torch.Tensor:
    """`gather_with_grad` for a first dimension that differs between processes (pads, gathers, strips)."""
    if _world() == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(_world())]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    counts = [int(s) for s in sizes]
    padded = torch.cat([x, x.new_zeros((max(counts) - len(x), *x.shape[1:]))])
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    parts[dist.get_rank()] = padded
    return torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])


def info_nce(query: torch.Tensor, target: torch.Tensor, temperature: float,
             target_ids: torch.Tensor | None = None, negatives: torch.Tensor | None = None,
             negative_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Query -> target InfoNCE; row i's positive is target i, its negatives every other target and every hard
    negative of the batch.

    `target_ids` (B,) identifies targets: a copy of a row's own positive (two classification rows with the same
    label) is masked out of its negatives instead of being pushed away. `negatives` (N, D) are hard negatives
    (MMEB's `neg_text`/`neg_image_path`) shared by all queries; `negative_ids` (N,) masks any that equal a row's
    positive.
    """
    logits = query @ target.T / temperature
    labels = torch.arange(len(query), device=query.device)
    if target_ids is not None:
        same = target_ids[:, None] == target_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    if negatives is not None and len(negatives):
        neg_logits = query @ negatives.T / temperature
        if negative_ids is not None and target_ids is not None:
            neg_logits = neg_logits.masked_fill(target_ids[:, None] == negative_ids[None, :], float("-inf"))
        logits = torch.cat([logits, neg_logits], dim=1)
    return F.cross_entropy(logits, labels)


def subject_alignment(regions: torch.Tensor, phrases: torch.Tensor, temperature: float,
                      phrase_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between saliency-pooled visual features (M, D) and their subject-phrase embeddings (M, D);
    rows sharing a phrase (`phrase_ids`) are not each other's negatives. Zero (with a graph) when M = 0."""
    if len(regions) == 0:
        return regions.sum() * 0.0 + phrases.sum() * 0.0
    return 0.5 * (info_nce(regions, phrases, temperature, phrase_ids)
                  + info_nce(phrases, regions, temperature, phrase_ids))


def saliency_pool(hidden: torch.Tensor, saliency: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Saliency-weighted mean of visual-token features: hidden (n, D), saliency (n,) >= 0 -> (D,)."""
    weights = saliency.to(hidden) / saliency.sum().clamp_min(eps)
    return weights @ hidden


def _segment_sums(x: torch.Tensor, ids: torch.Tensor, count: int) -> torch.Tensor:
    """Per-segment sums (count,) of a flat `x` whose element i belongs to segment ids[i], in x's dtype; accumulated in
    at least float32 (as torch.sum does), since index_add in half precision would round every addition."""
    wide = torch.promote_types(x.dtype, torch.float32)
    return x.new_zeros(count, dtype=wide).index_add(0, ids, x.to(wide)).to(x.dtype)


def saliency_attention_kl(attention: list[torch.Tensor], saliency: list[torch.Tensor],
                          eps: float = 1e-6, reduction: str = "mean") -> torch.Tensor:
    """KL(q || p) per image, q = saliency over visual tokens, p = the pooled token's attention on them, renormalised;
    averaged (`mean`) or summed (`sum`, for callers that normalise by a global count). Image i's attention and
    saliency must hold as many values (a saliency grid is flattened).

    Vectorised: the images' vectors are concatenated and summed per image with index_add, a fixed handful of ops
    whatever the number of images; dtypes follow the per-image form (sums in each input's dtype, q and p in the
    attention's)."""
    if len(attention) != len(saliency) or not attention:
        raise ValueError(f"need one saliency map per attention vector, got {len(saliency)} and {len(attention)}")
    lengths = [a.numel() for a in attention]
    for i, (n, sal) in enumerate(zip(lengths, saliency, strict=True)):
        if sal.numel() != n:
            raise ValueError(f"attention vector {i} has {n} visual tokens but its saliency map has {sal.numel()} "
                             "values")
    attn = torch.cat([a if a.dim() == 1 else a.reshape(-1) for a in attention])
    sal = torch.cat([s if s.dim() == 1 else s.reshape(-1) for s in saliency]).to(attn.device)
    count = len(lengths)
    ids = torch.repeat_interleave(torch.arange(count), torch.tensor(lengths)).to(attn.device)
    p = attn / _segment_sums(attn, ids, count).clamp_min(eps)[ids]
    q = sal.to(attn) / _segment_sums(sal, ids, count).clamp_min(eps).to(attn)[ids]
    terms = _segment_sums(q * ((q + eps).log() - (p + eps).log()), ids, count)
    return terms.sum() if reduction == "sum" else terms.mean()


def soft_label_symmetric_kl(query: torch.Tensor, candidates: torch.Tensor, judge: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """UniME-V2's soft-label loss: per query, the model's distribution over its own candidates
    (positive first, then its mined negatives), P = softmax(cos / τ), aligned with the judge's Q = softmax(s / τ) by
    the symmetric KL ½ (KL(P‖Q) + KL(Q‖P)), averaged over queries.

    query (B, D) and candidates (B, 1 + K, D) unit-norm; judge (B, 1 + K) match scores in [0, 1] (no gradient)."""
    logits = torch.einsum("bd,bkd->bk", query, candidates) / temperature
    log_p = F.log_softmax(logits, dim=-1)
    log_q = F.log_softmax(judge.to(logits) / temperature, dim=-1)
    forward = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")   # KL(P || Q)
    backward = F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")  # KL(Q || P)
    return 0.5 * (forward + backward)
