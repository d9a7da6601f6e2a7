"""The training recipe: one readable loop over the SSA-ME objective (`objective.py`) under accelerate.

Launch: `accelerate launch --config_file params/accelerate/<cfg>.yaml -m ssame train --params P --variant V --seed S`.
Resumes from the newest checkpoint of (variant, seed) if one exists (`checkpoint.py`).
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, set_seed
from transformers import get_linear_schedule_with_warmup

from ssame.config import Paths, variant_uses_saliency
from ssame.data.io import image_root
from ssame.model import Embedder, InputBuilder, load_backbone
from ssame.model.embedder import CONFIG_FILE
from ssame.saliency.store import SaliencyStore
from ssame.tracking import StepLogger, mlflow_run
from ssame.train import checkpoint
from ssame.train.batches import batch_indices, training_rows
from ssame.train.objective import Objective

LOG_EVERY = 10  # MLflow writes per-step metrics in batches of this many steps


def peak_memory_mib(device: torch.device) -> float:
    """Peak accelerator memory allocated, or this process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_accelerator() -> Accelerator:
    """CPU or GPU accelerator; DDP tolerates parameters without gradient (the LM head is never used for
    embeddings, and the vision tower sits out a text-only batch)."""
    return Accelerator(cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def build_trainer(params: dict[str, Any], variant_name: str, accelerator: Accelerator):
    """(embedder, objective, optimizer, scheduler, tokenizer, image processor), prepared by `accelerator`."""
    paths, cfg = Paths.from_params(params), params["train"]
    variant = params["variants"][variant_name]
    backbone, tokenizer, image_processor = load_backbone(params, paths.data)
    embedder = Embedder(backbone, variant, lora=params["model"].get("lora"))
    store = SaliencyStore(paths.saliency) if variant_uses_saliency(variant) else None
    build = InputBuilder(tokenizer, image_processor, image_root(paths.data), cfg["max_text_tokens"], cache_images=True)
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=cfg["weight_decay"], foreach=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg["warmup_steps"], cfg["steps"])
    embedder, optimizer, scheduler = accelerator.prepare(embedder, optimizer, scheduler)
    objective = Objective(embedder, build, store, variant, cfg, accelerator)
    return embedder, objective, optimizer, scheduler, tokenizer, image_processor


def export_state(params: dict[str, Any], variant_name: str, state: dict[str, torch.Tensor], model_dir: Path) -> None:
    """Write a model folder from a full state dict (gathered from FSDP shards): rebuild the embedder on CPU, load
    the state, save (merging LoRA). Main process only."""
    paths = Paths.from_params(params)
    backbone, tokenizer, image_processor = load_backbone(params, paths.data)
    embedder = Embedder(backbone, params["variants"][variant_name], lora=params["model"].get("lora"))
    embedder.load_state_dict(state)
    embedder.save(model_dir, tokenizer, image_processor)


def save_model(params: dict[str, Any], variant_name: str, accelerator: Accelerator, embedder, tokenizer,
               image_processor, model_dir: Path) -> None:
    """The final model folder, whatever the distribution strategy (all processes call this)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        state = accelerator.get_state_dict(embedder)  # collective: full parameters on the main process
        if accelerator.is_main_process:
            export_state(params, variant_name, state, model_dir)
    elif accelerator.is_main_process:
        accelerator.unwrap_model(embedder).save(model_dir, tokenizer, image_processor)


def train(params: dict[str, Any], variant_name: str, seed: int) -> dict[str, float]:
    """Train one (variant, seed); write the model folder and metrics.json; return the metrics."""
    paths, cfg = Paths.from_params(params), params["train"]
    set_seed(seed)
    accelerator = make_accelerator()
    if cfg.get("grad_cache_chunk_size") and accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("train.grad_cache_chunk_size: GradCache needs several backward passes per optimizer step, "
                         "but accelerate steps a DeepSpeed engine on every backward; use the DDP or FSDP config")
    if cfg["batch_size"] % accelerator.num_processes:
        raise ValueError(f"train.batch_size {cfg['batch_size']} is not divisible by "
                         f"{accelerator.num_processes} processes")
    embedder, objective, optimizer, scheduler, tokenizer, image_processor = build_trainer(
        params, variant_name, accelerator)
    rows = objective.annotate(training_rows(paths.data))
    batches = batch_indices(len(rows), cfg["batch_size"], seed)
    ckpt_dir, every = paths.checkpoints(variant_name, seed), cfg.get("checkpoint_every") or 0
    history: list[dict[str, float]] = []
    start_step, run_id, elapsed = 0, None, 0.0
    if every and (last := checkpoint.latest(ckpt_dir)) is not None:
        record = checkpoint.load(accelerator, last)
        start_step, history, run_id, elapsed = record["step"], record["history"], record["run_id"], record["seconds"]
        accelerator.print(f"resumed {variant_name}/seed{seed} from {last} (step {start_step})")
    for _ in range(start_step):  # the batch stream is a pure function of the seed: replay it
        next(batches)
    run_name = f"train/{variant_name}/seed{seed}"
    tags = {"stage": "train", "variant": variant_name, "seed": str(seed)}
    main = accelerator.is_main_process
    with mlflow_run(params, run_name, tags, run_id=run_id) if main else nullcontext() as mlflow:
        logger = StepLogger(mlflow) if main else None
        begin = time.perf_counter() - elapsed
        for step in range(start_step + 1, cfg["steps"] + 1):
            tick = time.perf_counter()
            record = objective.backward(rows.iloc[next(batches)])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            seconds = time.perf_counter() - tick
            history.append(record)
            if logger:
                logger.log({**record, "lr": scheduler.get_last_lr()[0],
                            "samples_per_second": cfg["batch_size"] / seconds,
                            "peak_memory_mib": peak_memory_mib(accelerator.device)}, step)
                if step % LOG_EVERY == 0:
                    logger.flush()
            if every and step % every == 0 and step < cfg["steps"]:
                if logger:
                    logger.flush()
                checkpoint.save(accelerator, ckpt_dir, step, {
                    "history": history, "run_id": mlflow.active_run().info.run_id if main else None,
                    "seconds": time.perf_counter() - begin})
        seconds = time.perf_counter() - begin
        tail = history[-LOG_EVERY:]
        metrics = {key: sum(r[key] for r in tail) / len(tail) for key in tail[0]}
        metrics |= {"steps": cfg["steps"], "train_seconds": seconds,
                    "samples_per_second": cfg["steps"] * cfg["batch_size"] / seconds,
                    "peak_memory_mib": peak_memory_mib(accelerator.device)}
        model_dir = paths.model(variant_name, seed)
        save_model(params, variant_name, accelerator, embedder, tokenizer, image_processor, model_dir)
        if main:
            logger.flush()
            mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
            paths.train_metrics(variant_name, seed).write_text(json.dumps(metrics, indent=2) + "\n")
            mlflow.log_artifact(str(paths.train_metrics(variant_name, seed)))
            mlflow.log_artifact(str(model_dir / CONFIG_FILE))
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run is complete: its checkpoints are dead weight
    accelerator.wait_for_everyone()
    return metrics

