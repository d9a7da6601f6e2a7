"""Encode each unique (text, image) input of one side of a dataset exactly once: batched and sharded.

Inputs are sorted (text-only first, then by text length) and cut into batches; batch b runs on process
b mod world_size. Batches therefore hold the same inputs whatever the number of processes, and every process
ends with every embedding (gathered), bit-identical to a single-process run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from ssame.evaluate.interpret import FIGURES, figures
from ssame.model import Embedder, InputBuilder

Key = tuple[str, str]  # (text, image path relative to the image root; "" for none)
MaskLookup = Callable[[str], np.ndarray | None]


@dataclass
class Encoded:
    """Per input, in key order: unit-norm embedding and interpretability figures (NaN where not applicable)."""

    embeddings: torch.Tensor        # (N, D) float32
    figures: dict[str, torch.Tensor]  # FIGURES -> (N,) float32
    forward_passes: int             # inputs sent through the model, over all processes


def batch_plan(keys: list[Key], batch_size: int) -> list[list[int]]:
    """Batches of key indices: text-only inputs first, then by text length, so batches pad little."""
    order = sorted(range(len(keys)), key=lambda i: (bool(keys[i][1]), len(keys[i][0]), i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def _encode_batch(embedder: Embedder, build: InputBuilder, keys: list[Key], store, device: torch.device,
                  masks: MaskLookup | None) -> tuple[torch.Tensor, np.ndarray, int]:
    """(embeddings, figures table, rows forwarded) of one batch."""
    texts, images = (list(x) for x in zip(*keys, strict=True))
    batch = build(texts, images, store)
    batch.inputs = {k: v.to(device) for k, v in batch.inputs.items()}
    out = embedder(batch, with_attention=masks is not None)
    table = np.full((len(keys), len(FIGURES)), np.nan, dtype=np.float32)
    if masks is not None:
        for attention, grid, row in zip(out.visual_attention, batch.grids, batch.image_rows, strict=True):
            values = figures(attention, grid, masks(images[row]))
            table[row] = [values[name] for name in FIGURES]
    return out.embeddings.float().cpu(), table, int(batch.inputs["input_ids"].shape[0])


def encode(embedder: Embedder, build: InputBuilder, keys: list[Key], batch_size: int, store,
           masks: MaskLookup | None, state: PartialState) -> Encoded:
    """Embeddings of `keys` (and, with `masks`, the interpretability figures of inputs with an image)."""
    if not keys:
        raise ValueError("encode: no inputs")
    plan = batch_plan(keys, batch_size)
    mine = [(b, *_encode_batch(embedder, build, [keys[i] for i in plan[b]], store, state.device, masks))
            for b in range(state.process_index, len(plan), state.num_processes)]
    done = sorted(gather_object(mine) if state.num_processes > 1 else mine, key=lambda d: d[0])
    if [b for b, *_ in done] != list(range(len(plan))):
        raise RuntimeError(f"gathered batches {[b for b, *_ in done]}, planned {len(plan)}")
    order = torch.tensor([i for b in range(len(plan)) for i in plan[b]], dtype=torch.long)
    embeddings = torch.empty(len(keys), done[0][1].shape[1])
    embeddings[order] = torch.cat([e for _, e, _, _ in done])
    table = torch.empty(len(keys), len(FIGURES))
    table[order] = torch.from_numpy(np.concatenate([t for _, _, t, _ in done]))
    return Encoded(embeddings, {name: table[:, j].clone() for j, name in enumerate(FIGURES)},
                   sum(n for *_, n in done))
