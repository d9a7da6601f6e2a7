"""The learning-rate schedule: linear warmup to the base rate, then linear decay to 0 at the last step.

The same multipliers as transformers' `get_linear_schedule_with_warmup`, without importing transformers.optimization
(about 2 s of every job's start-up on a CPU machine of this kind, docs/training.md).
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return LambdaLR(optimizer, factor)
