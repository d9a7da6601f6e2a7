"""The learning-rate schedule of training and pretraining: linear warm-up from 0, then linear decay to 0.

The same rule as transformers' `get_linear_schedule_with_warmup` (tests/test_schedule.py checks them step for step),
kept here because importing that function imports `transformers.trainer_utils` and with it peft, for a two-line
rule (0.4 s of every training job's start-up, docs/training.md). torch's `LinearLR` cannot start at 0.
"""

from __future__ import annotations

from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _factor(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def linear_warmup_decay(optimizer: Optimizer, warmup: int, total: int) -> LambdaLR:
    """LR factor rising linearly over `warmup` steps, then falling linearly to 0 at step `total`."""
    return LambdaLR(optimizer, partial(_factor, warmup=warmup, total=total))
