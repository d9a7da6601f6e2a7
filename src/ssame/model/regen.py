"""Feature regeneration: recalibrate visual tokens by the saliency map before they enter the language model."""

from __future__ import annotations

import torch
from torch import nn


class FeatureRegenerator(nn.Module):
    """v' = v * (1 + tanh(gamma) * (2 s - 1)) + tanh(delta) * s * MLP(v), per visual token.

    s is the token's saliency rescaled so the image's most salient token is 1. The first term emphasises subject
    tokens and suppresses background ones through a learned per-channel gain; the second is a gated residual that
    rewrites subject tokens (delta starts at 0, so the module starts as pure recalibration). See docs/ssame_design.md.
    """

    def __init__(self, hidden_size: int, gain_init: float = 0.5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((hidden_size,), gain_init))
        self.delta = nn.Parameter(torch.zeros(hidden_size))
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, tokens: torch.Tensor, saliency: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
        """tokens (n, d), saliency (n,) >= 0 -> regenerated tokens (n, d). `sizes`: the tokens of each image when
        several images' tokens are concatenated (each is rescaled by its own peak); None: one image."""
        if saliency.shape != tokens.shape[:1]:
            raise ValueError(f"saliency has {tuple(saliency.shape)} values for {tokens.shape[0]} visual tokens")
        lengths = torch.tensor(sizes if sizes is not None else [len(tokens)], device=saliency.device)
        if int(lengths.sum()) != len(tokens):
            raise ValueError(f"image sizes {sizes} do not add up to the {len(tokens)} visual tokens")
        peak = torch.segment_reduce(saliency, "max", lengths=lengths).clamp_min(1e-6)
        x = tokens.to(self.gamma.dtype)  # fp32 master weights under a bf16 backbone: compute here, cast back
        s = (saliency / peak.repeat_interleave(lengths)).to(x.dtype)[:, None]
        gain = 1 + torch.tanh(self.gamma) * (2 * s - 1)
        return (x * gain + torch.tanh(self.delta) * s * self.mlp(x)).to(tokens.dtype)
