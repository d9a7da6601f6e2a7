"""Benchmark: training-step throughput of our loop vs a plain transformers `Trainer`, same tiny model and batch.

Usage: python bench/train.py [--params params/default.yaml] [--steps 200] [--warmup 170] [--batch 16] [--repeats 3]
Needs the data stage's output. Both sides train the `baseline` variant (InfoNCE over in-batch negatives, no
saliency, no hard negatives) from the same seeded init with AdamW + linear schedule, one thread, on the *same*
batch stream (the Trainer reads it in order, `train_sampling_strategy="sequential"`: per-step cost depends on a
batch's mix of text-only and image inputs), after the same warm-up steps (by default an epoch: the page cache then holds
every image, so neither side times cold disk reads). The two sides alternate `--repeats` times; prints
samples/s of each run, and the median ratio (target >= 1.0x).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from accelerate.utils import set_seed
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from ssame.config import Paths, load_params
from ssame.losses import info_nce
from ssame.train.batches import BatchOrder, training_rows
from ssame.train.recipe import build_trainer, make_accelerator


class _Timer(TrainerCallback):
    """Wall time of the steps after the warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start = warmup, 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self.start = time.perf_counter()


class _Contrastive(nn.Module):
    """The embedder with the InfoNCE loss in `forward`, the form `Trainer` expects."""

    def __init__(self, embedder: nn.Module, temperature: float):
        super().__init__()
        self.embedder, self.temperature = embedder, temperature

    def forward(self, qry, pos, target_ids):
        q, p = self.embedder([qry, pos])
        return {"loss": info_nce(q.embeddings, p.embeddings, self.temperature, target_ids)}


def _stream(records: list[dict], batch_size: int, steps: int) -> list[dict]:
    """Training records in the order of our loop's batch stream (`BatchOrder`), `steps` batches long."""
    order = BatchOrder(len(records), batch_size, 0)
    return [records[i] for k in range(steps) for i in order[k]]


def ours(params: dict, steps: int, warmup: int) -> float:
    set_seed(0)
    _, objective, optimizer, scheduler, _, _ = build_trainer(params, "baseline", make_accelerator())
    rows = objective.annotate(training_rows(Paths.from_params(params).data))
    order = BatchOrder(len(rows), params["train"]["batch_size"], 0)
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        objective.backward(rows.iloc[order[step]])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return steps * params["train"]["batch_size"] / (time.perf_counter() - start)


def hf_trainer(params: dict, steps: int, warmup: int) -> float:
    set_seed(0)
    cfg = params["train"]
    embedder, objective, *_ = build_trainer(params, "baseline", make_accelerator())
    records = training_rows(Paths.from_params(params).data).to_dict("records")

    def collate(batch: list[dict]) -> dict:
        build = objective.build
        return {"qry": build([r["qry"] for r in batch], [r["qry_image_path"] for r in batch]),
                "pos": build([r["pos_text"] for r in batch], [r["pos_image_path"] for r in batch]),
                "target_ids": torch.tensor([r["target_id"] for r in batch])}

    timer = _Timer(warmup)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=cfg["batch_size"], max_steps=warmup + steps,
            learning_rate=cfg["lr"], weight_decay=cfg["weight_decay"], warmup_steps=cfg["warmup_steps"],
            lr_scheduler_type="linear", report_to=[], save_strategy="no", logging_strategy="no",
            use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True,
            train_sampling_strategy="sequential",
            max_grad_norm=0.0)  # our loop does not clip: same work on both sides
        trainer = Trainer(model=_Contrastive(embedder, cfg["temperature"]), args=args,
                          train_dataset=_stream(records, cfg["batch_size"], warmup + steps),
                          data_collator=collate, callbacks=[timer])
        trainer.train()
    return steps * cfg["batch_size"] / (time.perf_counter() - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default: train.batch_size)")
    parser.add_argument("--warmup", type=int, default=170,
                        help="untimed steps first; the default, an epoch of MMEB-mini at batch 16, reads every image "
                             "once so both loops are timed in their steady state (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params).to_dict()
    params["train"].update(hard_negatives=False, grad_cache_chunk_size=None, checkpoint_every=None)
    if args.batch:
        params["train"]["batch_size"] = args.batch
    print(f"batch {params['train']['batch_size']}, {args.steps} timed steps after {args.warmup} warm-up steps, "
          f"{args.repeats} alternating runs per side")
    ratios = []
    for run in range(args.repeats):
        hf_sps = hf_trainer(params, args.steps, args.warmup)  # first: any one-off cost falls on the Trainer
        ours_sps = ours(params, args.steps, args.warmup)
        ratios.append(ours_sps / hf_sps)
        print(f"run {run}: ssame loop {ours_sps:7.1f} samples/s, transformers Trainer {hf_sps:7.1f} samples/s, "
              f"ratio {ratios[-1]:.2f}x")
    print(f"median ratio ours / Trainer: {statistics.median(ratios):.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
