"""The LR schedule equals transformers' linear warm-up schedule at every step."""

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from ssame.schedule import linear_warmup_decay


def lrs(make, warmup: int, total: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = make(optimizer, warmup, total)
    seen = []
    for _ in range(total + 3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 10), (10, 10), (5, 40)])
def test_matches_transformers(warmup: int, total: int) -> None:
    ours = lrs(linear_warmup_decay, warmup, total)
    assert ours == lrs(get_linear_schedule_with_warmup, warmup, total)
    assert ours[0] == (0.0 if warmup else 0.5) and ours[total] == 0.0


def test_resumes_from_state_dict() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    first = linear_warmup_decay(optimizer, 2, 8)
    for _ in range(5):
        optimizer.step()
        first.step()
    again = linear_warmup_decay(optimizer, 2, 8)
    again.load_state_dict(first.state_dict())
    assert again.get_last_lr() == first.get_last_lr() == [0.5]
