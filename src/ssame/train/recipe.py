"""The training recipe: InfoNCE (query -> positive, in-batch negatives) + saliency-guided attention loss."""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_linear_schedule_with_warmup

from ssame.config import Paths
from ssame.data.io import image_root
from ssame.losses import gather_with_grad, info_nce, saliency_attention_kl
from ssame.model import Embedder, InputBuilder, load_backbone
from ssame.model.embedder import CONFIG_FILE
from ssame.saliency.store import SaliencyStore
from ssame.tracking import mlflow_run
from ssame.train.batches import batch_indices, training_rows

LOG_EVERY = 10


def _not_built_yet(params: dict[str, Any]) -> None:
    if params["model"].get("lora"):
        raise NotImplementedError("model.lora: LoRA fine-tuning lands with step 3 (issue #4); set it to null")
    if params["train"].get("grad_cache_chunk_size"):
        raise NotImplementedError("train.grad_cache_chunk_size: GradCache lands with step 3 (issue #4)")


def train(params: dict[str, Any], variant_name: str, seed: int) -> dict[str, float]:
    """Train one (variant, seed); write the model folder and metrics.json; return the metrics."""
    _not_built_yet(params)
    paths, cfg = Paths.from_params(params), params["train"]
    variant = params["variants"][variant_name]
    set_seed(seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    backbone, tokenizer, image_processor = load_backbone(params, paths.data)
    if params["model"].get("gradient_checkpointing"):
        backbone.gradient_checkpointing_enable()
    embedder = Embedder(backbone, variant)
    attn_weight = float(variant["attn_loss_weight"])
    store = SaliencyStore(paths.saliency) if embedder.uses_saliency or attn_weight > 0 else None
    build = InputBuilder(tokenizer, image_processor, image_root(paths.data), cfg["max_text_tokens"], cache_images=True)
    rows = training_rows(paths.data)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg["batch_size"] % world:
        raise ValueError(f"train.batch_size {cfg['batch_size']} is not divisible by {world} processes")
    local = cfg["batch_size"] // world
    optimizer = torch.optim.AdamW(embedder.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg["warmup_steps"], cfg["steps"])
    embedder, optimizer, scheduler = accelerator.prepare(embedder, optimizer, scheduler)
    batches = batch_indices(len(rows), cfg["batch_size"], seed)
    run_name = f"train/{variant_name}/seed{seed}"
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    with mlflow_run(params, run_name, {"stage": "train", "variant": variant_name, "seed": str(seed)}) as mlflow:
        for step in range(1, cfg["steps"] + 1):
            global_batch = rows.iloc[next(batches)]
            mine = global_batch.iloc[rank * local:(rank + 1) * local]
            qry = build(mine["qry"].tolist(), mine["qry_image_path"].tolist(), store)
            pos = build(mine["pos_text"].tolist(), mine["pos_image_path"].tolist(), store)
            out_q = embedder(qry, with_attention=attn_weight > 0)
            out_p = embedder(pos, with_attention=attn_weight > 0)
            target_ids = torch.tensor(global_batch["target_id"].tolist(), device=accelerator.device)
            loss_nce = info_nce(gather_with_grad(out_q.embeddings), gather_with_grad(out_p.embeddings),
                                cfg["temperature"], target_ids)
            terms = {"loss_nce": loss_nce}
            attention = out_q.visual_attention + out_p.visual_attention
            if attn_weight > 0 and attention:
                saliency = [torch.as_tensor(s.ravel()) for s in (qry.saliency or []) + (pos.saliency or [])]
                terms["loss_attn"] = saliency_attention_kl(attention, saliency)
            loss = loss_nce + attn_weight * terms.get("loss_attn", torch.zeros(()))
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            record = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()},
                      "lr": scheduler.get_last_lr()[0]}
            if attention:
                record["visual_attention_mass"] = torch.stack([a.detach().sum() for a in attention]).mean().item()
            history.append(record)
            if accelerator.is_main_process and (step % LOG_EVERY == 0 or step == cfg["steps"]):
                mlflow.log_metrics(record, step=step)
        seconds = time.perf_counter() - start
        tail = history[-LOG_EVERY:]
        metrics = {key: sum(r[key] for r in tail) / len(tail) for key in tail[0] if key != "lr"}
        metrics |= {"steps": cfg["steps"], "train_seconds": seconds,
                    "samples_per_second": cfg["steps"] * cfg["batch_size"] / seconds}
        if accelerator.is_main_process:
            mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items()})
            model_dir = paths.model(variant_name, seed)
            accelerator.unwrap_model(embedder).save(model_dir, tokenizer, image_processor)
            paths.train_metrics(variant_name, seed).write_text(json.dumps(metrics, indent=2) + "\n")
            mlflow.log_artifact(str(paths.train_metrics(variant_name, seed)))
            mlflow.log_artifact(str(model_dir / CONFIG_FILE))
    return metrics
