"""The training DataLoader: the batch order by index, workers and resumption yield the same prepared steps, and
per-batch annotation gives the loss of whole-table annotation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.utils import set_seed

from ssame.config import Paths
from ssame.train.batches import BatchOrder, training_rows
from ssame.train.data import StepBatch, StepDataset, step_loader
from ssame.train.recipe import build_trainer, make_accelerator


def _stream(n_rows: int, batch_size: int, seed: int, batches: int) -> list[np.ndarray]:
    """The stream the default profile's recorded results were trained on: a fresh permutation per epoch from one
    seeded generator, the short tail of each epoch dropped."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < batches:
        order = rng.permutation(n_rows)
        out += [order[s:s + batch_size] for s in range(0, n_rows - batch_size + 1, batch_size)]
    return out[:batches]


def test_batch_order_is_the_seeded_stream_by_index():
    stream = _stream(23, 5, seed=3, batches=14)  # 4 batches per epoch: 3.5 epochs
    order = BatchOrder(23, 5, seed=3)
    for k in [13, 0, 7, 7, 2, 12, 4]:  # any order, backwards included
        np.testing.assert_array_equal(order[k], stream[k])
    with pytest.raises(ValueError, match="exceeds the 4 training rows"):
        BatchOrder(4, 5, 0)


@pytest.fixture(scope="module")
def trainer(small_built):
    set_seed(0)
    accelerator = make_accelerator()
    _, objective, *_ = build_trainer(small_built, "ssame", accelerator)
    return objective, training_rows(Paths.from_params(small_built).data)


def _dataset(trainer, chunk: int | None, steps: int = 6) -> StepDataset:
    objective, rows = trainer
    return StepDataset(rows, BatchOrder(len(rows), 8, seed=0), objective.preparer, 1, 0, chunk, steps)


def _flat(step: StepBatch) -> list:
    """Everything a step holds, tensors and plain values, in a fixed order."""
    items: list = [step.n_images, step.grad_cache]
    for chunk in step.chunks:
        items += [chunk.regions, *chunk.ids.values()]
        for name in sorted(chunk.batches):
            batch = chunk.batches[name]
            items += [name, batch.grids, batch.image_rows, *(batch.inputs[k] for k in sorted(batch.inputs))]
            items += [torch.as_tensor(s) for s in batch.saliency or []]
    return items


def _same(a: StepBatch, b: StepBatch) -> bool:
    left, right = _flat(a), _flat(b)
    return len(left) == len(right) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(left, right, strict=True))


@pytest.mark.parametrize("chunk", [None, 3])
def test_workers_and_a_resumed_loader_yield_the_batches_of_an_uninterrupted_run(trainer, chunk):
    dataset = _dataset(trainer, chunk)
    plain = list(step_loader(dataset, 0, num_workers=0, pin_memory=False))
    assert len(plain) == 6 and len(plain[0].chunks) == (3 if chunk else 1)
    workers = list(step_loader(dataset, 0, num_workers=2, pin_memory=False))
    resumed = list(step_loader(dataset, 4, num_workers=1, pin_memory=False))
    assert all(_same(a, b) for a, b in zip(plain, workers, strict=True))
    assert len(resumed) == 2 and all(_same(a, b) for a, b in zip(plain[4:], resumed, strict=True))
    assert not _same(plain[0], plain[1])


def test_the_loader_leaves_the_global_rng_alone(trainer):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    next(iter(step_loader(_dataset(trainer, None), 0, num_workers=0, pin_memory=False)))
    assert torch.equal(torch.rand(3), expected)


def test_per_batch_annotation_gives_the_loss_and_gradients_of_whole_table_annotation(trainer):
    """Ids only mark which rows of a batch share a target or a phrase, so annotating the batch (as the loader does)
    or the whole table (as training did before the loader) must give the same loss, bit for bit."""
    objective, rows = trainer
    idx = BatchOrder(len(rows), 8, seed=0)[2]
    results = []
    for batch in (objective.annotate(rows).iloc[idx], rows.iloc[idx]):
        objective.embedder.zero_grad()
        record = objective.backward(batch)
        results.append((record, [p.grad.clone() for p in objective.embedder.parameters() if p.grad is not None]))
    (table_record, table_grads), (batch_record, batch_grads) = results
    assert table_record == batch_record
    assert all(torch.equal(a, b) for a, b in zip(table_grads, batch_grads, strict=True))
