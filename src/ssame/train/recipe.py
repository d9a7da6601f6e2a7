"""The training recipe: one readable loop over the SSA-ME objective (`objective.py`) under accelerate.

Launch: `accelerate launch --config_file params/accelerate/<cfg>.yaml -m ssame train --params P --variant V --seed S`.
Batches come from a DataLoader (`data.py`); resumes from the newest checkpoint of (variant, seed) if one exists and
was written under the same params (`checkpoint.py`). The LR schedule steps once per optimizer step on every process
(it is not handed to `accelerator.prepare`, whose wrapper steps it once per process; it is checkpointed through
`register_for_checkpointing`). Gradients are clipped at `train.max_grad_norm` (`clip.py`).
"""

from __future__ import annotations

import resource
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, set_seed

from ssame.atomic import atomic_path, write_json
from ssame.config import (
    Paths,
    as_params,
    pretrained_backbone,
    uses_image_features,
    variant_mines,
    variant_uses_saliency,
)
from ssame.data.io import image_root, train_path
from ssame.features.store import features_for
from ssame.logs import Progress
from ssame.model import Embedder, InputBuilder, load_backbone
from ssame.model.backbone import square_side
from ssame.saliency.store import SaliencyStore
from ssame.schedule import linear_warmup_decay
from ssame.tracking import MODEL_DIGEST_TAG, StepLogger, content_digest, job_tags, log_datasets, mlflow_run
from ssame.train import checkpoint
from ssame.train.batches import BatchOrder, training_rows
from ssame.train.clip import check_deepspeed_clipping, clip_gradients
from ssame.train.data import StepDataset, step_loader
from ssame.train.mined import with_mined
from ssame.train.objective import Objective

LOG_EVERY = 10  # MLflow writes per-step metrics in batches of this many steps
log = get_logger(__name__)  # the main process's records only


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
    """(embedder, objective, optimizer, scheduler, tokenizer, image processor): model and optimizer prepared by
    `accelerator`, the LR schedule registered for its checkpoints (stepped by the caller, once per step)."""
    params = as_params(params)
    paths, cfg = Paths.from_params(params), params["train"]
    variant = params["variants"][variant_name]
    backbone, tokenizer, image_processor = load_backbone(params, paths.data, pretrained_backbone(params))
    embedder = Embedder(backbone, variant, lora=params["model"]["lora"], mrope=params["model"]["mrope"])
    store = SaliencyStore(paths.saliency) if variant_uses_saliency(variant) else None
    features = features_for(params, embedder)  # the frozen tower's output, computed once by the features stage
    build = InputBuilder(tokenizer, image_processor, image_root(paths.data), cfg["max_text_tokens"],
                         image_side=square_side(params["model"]), features=features)
    if cfg["freeze_vision"]:  # under LoRA peft has frozen it already
        embedder.qwen.model.visual.requires_grad_(False)
    trainable = [p for p in embedder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg["lr"], weight_decay=cfg["weight_decay"], foreach=True)
    scheduler = linear_warmup_decay(optimizer, cfg["warmup_steps"], cfg["steps"])
    embedder, optimizer = accelerator.prepare(embedder, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    objective = Objective(embedder, build, store, variant, cfg, accelerator, params["mine"])
    return embedder, objective, optimizer, scheduler, tokenizer, image_processor


def export_state(params: dict[str, Any], variant_name: str, state: dict[str, torch.Tensor], model_dir: Path) -> None:
    """Write a model folder from a full state dict (gathered from FSDP shards): rebuild the embedder on CPU, load
    the state, save (merging LoRA). Main process only."""
    params = as_params(params)
    paths = Paths.from_params(params)
    backbone, tokenizer, image_processor = load_backbone(params, paths.data, pretrained_backbone(params))
    embedder = Embedder(backbone, params["variants"][variant_name], lora=params["model"]["lora"],
                        mrope=params["model"]["mrope"])
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


def job_inputs(params: dict[str, Any], variant_name: str, seed: int) -> dict[str, Path]:
    """The files a training job reads, by name, for its run's input digests."""
    paths = Paths.from_params(params)
    inputs = {"data_manifest": paths.data / "manifest.csv"}
    if pretrained_backbone(params):
        inputs["pretrained"] = pretrained_backbone(params)
    if variant_uses_saliency(params["variants"][variant_name]):
        inputs["saliency_manifest"] = paths.saliency / "manifest.json"
    if variant_mines(params["variants"][variant_name]):
        inputs["mined_negatives"] = paths.mine(seed) / "negatives.parquet"
    if uses_image_features(params):
        inputs["image_features"] = paths.features
    return inputs


def embedder_dim(accelerator: Accelerator, embedder) -> int:
    return accelerator.unwrap_model(embedder).qwen.config.text_config.hidden_size


def write_history(history: list[dict[str, float]], path: Path) -> None:
    """One CSV row per optimizer step: `step` (from 1) and every term of the objective's record."""
    frame = pd.DataFrame(history)
    frame.insert(0, "step", range(1, len(frame) + 1))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def check_distribution(cfg, accelerator: Accelerator) -> None:
    """Refuse settings the launch cannot honour (GradCache or mismatched clipping under DeepSpeed, an uneven batch)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        if cfg["grad_cache_chunk_size"]:
            raise ValueError("train.grad_cache_chunk_size: GradCache needs several backward passes per optimizer "
                             "step, but accelerate steps a DeepSpeed engine on every backward; use the DDP or FSDP "
                             "config")
        plugin = accelerator.state.deepspeed_plugin
        check_deepspeed_clipping(cfg["max_grad_norm"], plugin.deepspeed_config.get("gradient_clipping"),
                                 f"the accelerate launch config; params name {cfg['accelerate_config']}")
    if cfg["batch_size"] % accelerator.num_processes:
        raise ValueError(f"train.batch_size {cfg['batch_size']} is not divisible by "
                         f"{accelerator.num_processes} processes")


def train(params: dict[str, Any], variant_name: str, seed: int) -> dict[str, float]:
    """Train one (variant, seed); write the model folder and metrics.json; return the metrics."""
    params = as_params(params)
    paths, cfg = Paths.from_params(params), params["train"]
    set_seed(seed)
    accelerator = make_accelerator()
    check_distribution(cfg, accelerator)
    log.info("train %s/seed%d: processes: %d, distributed: %s, device: %s, data workers per process: %d",
             variant_name, seed, accelerator.num_processes, accelerator.distributed_type.value, accelerator.device,
             cfg["num_workers"])
    ckpt_dir, every = paths.checkpoints(variant_name, seed), cfg["checkpoint_every"] or 0
    shaped_by = checkpoint.params_record(params, variant_name, seed)
    last = checkpoint.latest(ckpt_dir) if every else None
    resumed = checkpoint.read(last, shaped_by) if last else None  # other params: refused before any work
    embedder, objective, optimizer, scheduler, tokenizer, image_processor = build_trainer(
        params, variant_name, accelerator)
    history: list[dict[str, float]] = []
    start_step, run_id, elapsed = 0, None, 0.0
    if resumed:
        checkpoint.restore(accelerator, last)
        start_step, history, run_id, elapsed = (resumed["step"], resumed["history"], resumed["run_id"],
                                                resumed["seconds"])
        log.info("resumed %s/seed%d from %s (step %d)", variant_name, seed, last, start_step)
    rows = training_rows(paths.data)
    if variant_mines(params["variants"][variant_name]):  # UniME-V2: this seed's judged negatives
        rows = with_mined(rows, paths.mine(seed) / "negatives.parquet")
    rows = objective.annotate(rows)  # once: 5 ms/step less than per batch (default profile)
    steps = StepDataset(rows, BatchOrder(len(rows), cfg["batch_size"], seed), objective.preparer,
                        accelerator.num_processes, accelerator.process_index, cfg["grad_cache_chunk_size"],
                        cfg["steps"])
    loader = step_loader(steps, start_step, cfg["num_workers"], accelerator.device.type == "cuda")
    run_name = f"train/{variant_name}/seed{seed}"
    main = accelerator.is_main_process
    wildcards = {"variant": variant_name, "seed": str(seed)}
    tags = job_tags(params, "train", wildcards, job_inputs(params, variant_name, seed)) if main else {}
    with mlflow_run(params, run_name, tags, run_id=run_id, system_metrics=True) if main else nullcontext() as mlflow:
        logger = StepLogger(mlflow) if main else None
        if main and run_id is None:
            log_datasets(mlflow, {name: train_path(paths.data, name) for name in rows["dataset"].unique()}, "train")
        progress = Progress(log, "step", cfg["steps"], params["tracking"]["progress_every"], start_step)
        begin, tick = time.perf_counter() - elapsed, time.perf_counter()
        for step, batch in enumerate(loader, start_step + 1):
            lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
            record = objective.backward(batch)
            grad_norm = clip_gradients(accelerator, embedder, cfg["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            seconds, tick = time.perf_counter() - tick, time.perf_counter()  # data wait included
            history.append(record)
            progress.update(step, loss=record["loss"], lr=lr)
            if logger:
                logger.log({**record, "lr": lr, "grad_norm": grad_norm,
                            "samples_per_second": cfg["batch_size"] / seconds,
                            "peak_memory_mib": peak_memory_mib(accelerator.device)}, step)
                if step % LOG_EVERY == 0:
                    logger.flush()
            if every and step % every == 0 and step < cfg["steps"]:
                if logger:
                    logger.flush()
                checkpoint.save(accelerator, ckpt_dir, step, {
                    "history": history, "run_id": mlflow.active_run().info.run_id if main else None,
                    "seconds": time.perf_counter() - begin}, shaped_by)
        seconds = time.perf_counter() - begin
        if (features := objective.build.features) is not None:  # counted where batches are prepared
            log.info("%s (in this process)", features.usage())
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
            write_json(paths.train_metrics(variant_name, seed), metrics)
            write_history(history, paths.train_history(variant_name, seed))
            mlflow.log_artifact(str(paths.train_metrics(variant_name, seed)))
            mlflow.set_tag(MODEL_DIGEST_TAG, content_digest(model_dir))  # how evaluate runs find this run
            from ssame.model.mlflow_model import log_embedder  # imports mlflow.pyfunc: the main process, at the end

            model = params["model"]
            log_embedder(mlflow, model_dir, {"attn_implementation": model["attn_implementation"],
                                             "mrope": model["mrope"], "max_text_tokens": cfg["max_text_tokens"],
                                             "image_side": square_side(model)}, embedder_dim(accelerator, embedder))
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # the run is complete: its checkpoints are dead weight
    accelerator.wait_for_everyone()
    return metrics
