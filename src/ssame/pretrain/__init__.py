"""Pretrain stage: the tiny Qwen2-VL learns next-token prediction on scene captions and answers, once, before every
variant and seed fine-tunes from it (as the paper fine-tunes a pretrained MLLM). Tiny backbone only; a hub backbone
is pretrained already. Design and cost: docs/pretraining.md.

Writes `<results_dir>/pretrain/model/` (save_pretrained: model, tokenizer, image processor) and `metrics.json`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ssame.atomic import atomic_dir, write_json
from ssame.config import Paths, as_params, uses_pretrain
from ssame.logs import Progress
from ssame.model import InputBuilder
from ssame.model.backbone import load_backbone, square_side
from ssame.pretrain.corpus import QUESTIONS, SAMPLES_PER_SCENE, build_corpus
from ssame.pretrain.lm import encode, lm_loss
from ssame.pretrain.probe import probe
from ssame.schedule import linear_warmup_decay
from ssame.tracking import StepLogger, job_tags, mlflow_run

LOG_EVERY = 20
log = logging.getLogger(__name__)


def build(params: Mapping[str, Any]) -> dict[str, float]:
    """Pretrain the tiny backbone from params `pretrain`; write the model folder and metrics; return the metrics."""
    params = as_params(params)
    if not uses_pretrain(params):
        raise ValueError("pretrain: only the tiny backbone is pretrained here (model.backbone 'tiny', "
                         "pretrain.steps > 0); a hub backbone comes pretrained")
    cfg, paths, mrope = params["pretrain"], Paths.from_params(params), params["model"]["mrope"]
    torch.manual_seed(cfg["seed"])
    model, tokenizer, processor = load_backbone(params, paths.data)
    build_inputs = InputBuilder(tokenizer, processor, paths.data, cfg["max_text_tokens"],
                                image_side=square_side(params["model"]))
    began = time.perf_counter()
    corpus = build_corpus(cfg["seed"], cfg["scenes"], cfg["image_size"])
    corpus_seconds = time.perf_counter() - began
    order = np.random.default_rng(cfg["seed"]).permutation
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], foreach=True)
    scheduler = linear_warmup_decay(optimizer, cfg["warmup_steps"], cfg["steps"])
    per_epoch = len(corpus) // cfg["batch_size"]
    if per_epoch == 0:
        raise ValueError(f"pretrain.batch_size {cfg['batch_size']} exceeds the corpus ({len(corpus)} samples: "
                         f"{SAMPLES_PER_SCENE} per scene of pretrain.scenes {cfg['scenes']})")
    losses: list[float] = []
    model.train()
    tags = job_tags(params, "pretrain", inputs={"data_manifest": paths.data / "manifest.csv",
                                                "tokenizer": paths.data / "tokenizer"})
    with mlflow_run(params, "pretrain", tags, system_metrics=True) as mlflow:
        logger = StepLogger(mlflow)
        progress = Progress(log, "step", cfg["steps"], params["tracking"]["progress_every"])
        began, rows = time.perf_counter(), np.empty(0, dtype=int)
        for step in range(1, cfg["steps"] + 1):
            if len(rows) < cfg["batch_size"]:
                rows = np.concatenate([rows, order(len(corpus))[: per_epoch * cfg["batch_size"]]])
            batch, rows = rows[: cfg["batch_size"]], rows[cfg["batch_size"]:]
            lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
            loss = lm_loss(model, encode(build_inputs, [corpus[i] for i in batch]), mrope)
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"pretrain: the loss is {losses[-1]} at step {step}; lower pretrain.lr")
            logger.log({"loss_lm": losses[-1], "lr": lr}, step)
            progress.update(step, loss_lm=losses[-1], lr=lr)
            if step % LOG_EVERY == 0:
                logger.flush()
        train_seconds = time.perf_counter() - began
        model.eval()
        head = max(1, min(LOG_EVERY, len(losses) // 2))
        metrics = {"loss_lm_first": float(np.mean(losses[:head])), "loss_lm": float(np.mean(losses[-head:])),
                   "steps": cfg["steps"], "samples": len(corpus),
                   "epochs": cfg["steps"] * cfg["batch_size"] / len(corpus),
                   "corpus_seconds": corpus_seconds, "train_seconds": train_seconds,
                   **{f"probe_{k}_accuracy": v for k, v in probe(model, build_inputs, params).items()}}
        logger.flush()
        with atomic_dir(paths.pretrain / "model") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            processor.save_pretrained(tmp)
        write_json(paths.pretrain / "metrics.json", metrics)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(paths.pretrain / "metrics.json"))
    probed = ", ".join(f"{k}: {metrics[f'probe_{k}_accuracy']:.2f}" for k in QUESTIONS
                       if f"probe_{k}_accuracy" in metrics)
    log.info("loss %.3f -> %.3f in %d steps (%.1f s); probe accuracy: %s", metrics["loss_lm_first"],
             metrics["loss_lm"], cfg["steps"], train_seconds, probed or "not run (pretrain.probe_scenes: 0)")
    return metrics
