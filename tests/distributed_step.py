"""One global batch through the training objective; rank 0 saves the loss terms and every gradient.

Run under any launcher: `torchrun --nproc_per_node N distributed_step.py PARAMS_JSON OUT`. The batch mixes datasets
whose texts name subjects, so every loss term is active.
"""

import json
import sys
from pathlib import Path

import pandas as pd
import torch
from accelerate.utils import set_seed

from ssame.train.batches import training_rows
from ssame.train.recipe import build_trainer, make_accelerator


def subject_rich_batch(rows: pd.DataFrame, size: int) -> pd.DataFrame:
    """`size` rows, half from the VQA and half from the grounding dataset (texts that name a subject)."""
    parts = [rows[rows["dataset"] == name].head(size // 2) for name in ("MiniAttrVQA", "MiniGround")]
    return pd.concat(parts)


if __name__ == "__main__":
    params = json.loads(Path(sys.argv[1]).read_text())
    set_seed(0)
    accelerator = make_accelerator()
    embedder, objective, *_ = build_trainer(params, "ssame", accelerator)
    rows = training_rows(Path(params["results_dir"]) / "data")
    record = objective.backward(subject_rich_batch(rows, params["train"]["batch_size"]))
    if accelerator.is_main_process:
        grads = {n: p.grad for n, p in accelerator.unwrap_model(embedder).named_parameters() if p.grad is not None}
        torch.save({"record": record, "grads": grads, "world": accelerator.num_processes}, sys.argv[2])
