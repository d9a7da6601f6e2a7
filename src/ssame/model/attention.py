"""Fused attention that still returns the pooled (last) token's attention row.

`eager` materialises (B, H, L, L) weights at every layer just so the embedder can read `attn[:, :, -1, :]`.
The `ssame_sdpa_last_row` implementation lets SDPA compute the attention output and recomputes the weights of the
last query row only, softmax(q_last K^T * scaling + mask_last_row), returned as (B, H, 1, L), so
`attentions[layer][:, :, -1, :]` reads the same values as under eager. It is registered through transformers'
`AttentionInterface` and, so that it receives the very mask SDPA gets, `AttentionMaskInterface` (an
implementation missing from the mask interface gets no mask at all, i.e. padding would be ignored).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

LAST_ROW_SDPA = "ssame_sdpa_last_row"
IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


def last_row_weights(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float, is_causal: bool) -> torch.Tensor:
    """Eager-equivalent attention weights of the last query, (B, H, 1, kv_len), without repeating GQA keys.

    `attention_mask` is SDPA's: boolean (True = attend) or additive float, (B, 1|H, q_len, kv_len), or None for
    plain causal (SDPA's `is_causal` is top-left aligned: the last query sees keys [0, q_len)).
    """
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    # head h uses kv head h // n_rep (repeat_kv's order), so grouping the queries is the same as repeating keys
    q = query[:, :, -1, :].reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = (q @ key.transpose(2, 3)).reshape(batch, heads, 1, kv_len) * scaling
    min_value = torch.finfo(scores.dtype).min
    if attention_mask is not None:
        row = attention_mask[..., -1:, :]
        scores = scores.masked_fill(~row, min_value) if row.dtype == torch.bool else scores + row
    elif is_causal and 1 < q_len < kv_len:
        scores = scores.masked_fill(torch.arange(kv_len, device=scores.device) >= q_len, min_value)
    return nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def sdpa_last_row_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                    attention_mask: torch.Tensor | None, dropout: float = 0.0,
                                    scaling: float | None = None, is_causal: bool | None = None,
                                    **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`sdpa_attention_forward` output, plus the last query's attention weights (B, H, 1, kv_len), pre-dropout,
    when the forward was called with `output_attentions=True` (the only way to ask: configs refuse the flag for
    non-eager implementations)."""
    if kwargs.get("position_bias") is not None:
        raise NotImplementedError(f"{LAST_ROW_SDPA} does not support position_bias")
    wanted = kwargs.pop("output_attentions", False)  # popped: sdpa would warn that it cannot return weights
    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                       is_causal=is_causal, **kwargs)
    if not wanted:
        return output, None
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    return output, last_row_weights(query, key, attention_mask, scaling, causal)


def register_last_row_attention() -> str:
    """Register `ssame_sdpa_last_row` (attention function + SDPA's mask builder); idempotent. Returns its name."""
    if AttentionInterface._global_mapping.get(LAST_ROW_SDPA) is not sdpa_last_row_attention_forward:
        AttentionInterface.register(LAST_ROW_SDPA, sdpa_last_row_attention_forward)
    if AttentionMaskInterface._global_mapping.get(LAST_ROW_SDPA) is not sdpa_mask:
        AttentionMaskInterface.register(LAST_ROW_SDPA, sdpa_mask)
    return LAST_ROW_SDPA


def attention_implementation(requested: str, needs_weights: bool) -> str | dict[str, str]:
    """What to pass as `attn_implementation` (from_pretrained, set_attn_implementation or config) for Qwen2-VL.

    eager stays eager. sdpa / flash_attention_2 stay as they are unless attention weights are needed; then the text
    model gets the last-row SDPA variant (no flash variant exists) and the vision tower keeps the requested kernel:
    `{"": requested, "text_config": "ssame_sdpa_last_row", "vision_config": requested}`.
    """
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation must be one of {IMPLEMENTATIONS}, got {requested!r}")
    if requested == "eager" or not needs_weights:
        return requested
    return {"": requested, "text_config": register_last_row_attention(), "vision_config": requested}
