"""Training objectives: sample-level InfoNCE and the saliency-guided attention loss."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` across processes; only the local slice keeps its gradient (the open_clip scheme)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def info_nce(query: torch.Tensor, target: torch.Tensor, temperature: float,
             target_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Query -> target InfoNCE over in-batch negatives; row i's positive is target i.

    `target_ids` (B,) marks identical targets (e.g. two classification rows whose positive is the same label):
    a copy of a row's own positive is masked out of its negatives instead of being pushed away.
    """
    logits = query @ target.T / temperature
    labels = torch.arange(len(query), device=query.device)
    if target_ids is not None:
        same = target_ids[:, None] == target_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, labels)


def saliency_attention_kl(attention: list[torch.Tensor], saliency: list[torch.Tensor],
                          eps: float = 1e-6) -> torch.Tensor:
    """Mean over images of KL(q || p): q = saliency over visual tokens, p = the pooled token's attention on them."""
    if len(attention) != len(saliency) or not attention:
        raise ValueError(f"need one saliency map per attention vector, got {len(saliency)} and {len(attention)}")
    terms = []
    for attn, sal in zip(attention, saliency, strict=True):
        p = attn / attn.sum().clamp_min(eps)
        q = sal.to(attn) / sal.sum().clamp_min(eps)
        terms.append((q * ((q + eps).log() - (p + eps).log())).sum())
    return torch.stack(terms).mean()
