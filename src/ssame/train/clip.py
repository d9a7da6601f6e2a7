"""Gradient clipping at `train.max_grad_norm`, the same under DDP, FSDP and DeepSpeed ZeRO-2.

DDP and FSDP clip in the loop with `accelerator.clip_grad_norm_` (FSDP-aware: the norm of the full, unsharded
gradient). Under DeepSpeed the engine clips inside its own step, at the DeepSpeed config's `gradient_clipping`
(accelerate fills an absent or "auto" value with 1.0), so a config that disagrees with the param is refused.
"""

from __future__ import annotations

import math
from typing import Any

ACCELERATE_FILL = 1.0  # accelerate fills an absent or "auto" `gradient_clipping` (Accelerator._prepare_deepspeed)


def deepspeed_clipping(gradient_clipping: Any) -> float:
    """The max norm a DeepSpeed engine clips at, from its config's `gradient_clipping` (0 = off)."""
    if gradient_clipping is None or gradient_clipping == "auto":
        return ACCELERATE_FILL
    return float(gradient_clipping)


def check_deepspeed_clipping(max_grad_norm: float | None, gradient_clipping: Any, source: str) -> None:
    """Raise unless DeepSpeed would clip exactly as `train.max_grad_norm` says (None: no clipping)."""
    wanted, actual = max_grad_norm or 0.0, deepspeed_clipping(gradient_clipping)
    if wanted != actual:
        said = "absent (accelerate uses 1.0)" if gradient_clipping is None else repr(gradient_clipping)
        raise ValueError(f"train.max_grad_norm is {max_grad_norm} but the DeepSpeed config ({source}) has "
                         f"gradient_clipping {said}: DeepSpeed clips inside its engine, so set "
                         f"deepspeed_config.gradient_clipping to {wanted} (0 = off) or change train.max_grad_norm")


def clip_gradients(accelerator, model, max_grad_norm: float | None) -> float:
    """Clip the model's synchronised gradients to `max_grad_norm` (None: leave them, exactly) and return their
    total norm before clipping; under DeepSpeed the engine has already clipped, and its norm is returned."""
    norm = accelerator.clip_grad_norm_(model.parameters(), math.inf if max_grad_norm is None else max_grad_norm)
    return float("nan") if norm is None else float(norm)
