"""Evaluation stage: the VLM2Vec MMEB protocol (each unique input encoded once, cosine, ground truth at index 0).

Per dataset it writes scores, per-query predictions and the embeddings with their keys (ssame.evaluate.outputs);
a run interrupted part-way resumes from the datasets already embedded (ssame.evaluate.cache). Run it in one process
or sharded: `accelerate launch -m ssame evaluate ...` (or torchrun) gives identical files.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from ssame.atomic import replace_dir, write_json
from ssame.config import Paths, as_params
from ssame.data.io import (
    EVAL_IMAGE_COLUMNS,
    DataFormatError,
    check_images,
    eval_path,
    image_root,
    read_eval,
    read_eval_checks,
    read_manifest,
    read_unreadable,
)
from ssame.evaluate import cache, outputs, rows
from ssame.evaluate.aggregate import aggregate
from ssame.evaluate.encode import Encoded, Key, encode
from ssame.evaluate.interpret import FIGURES, load_mask
from ssame.evaluate.metrics import rank_candidates, ranking_metrics
from ssame.evaluate.stats import bootstrap_aggregates
from ssame.features.store import features_for
from ssame.logs import Progress
from ssame.model import Embedder, InputBuilder
from ssame.model.backbone import pixel_budget, square_side
from ssame.model.inputs import ImageDecodeError
from ssame.saliency.store import SaliencyStore
from ssame.tracking import MODEL_DIGEST_TAG, job_tags, log_datasets, mlflow_run

log = logging.getLogger(__name__)


def unique_inputs(frame: pd.DataFrame) -> tuple[list[Key], list[Key]]:
    """Unique (text, image) inputs of the query side and of the candidate side, in first-seen order."""
    queries = list(dict.fromkeys(zip(frame["qry_text"], frame["qry_img_path"], strict=True)))
    cands = list(dict.fromkeys(k for texts, images in zip(frame["tgt_text"], frame["tgt_img_path"], strict=True)
                               for k in zip(texts, images, strict=True)))
    return queries, cands


def rank_rows(frame: pd.DataFrame, queries: list[Key], query_emb: torch.Tensor, cands: list[Key],
              cand_emb: torch.Tensor) -> tuple[list[int], list[list[int]]]:
    """Per row: rank of its ground truth among its own candidates (cosine) and the full candidate ranking."""
    q_index = {k: i for i, k in enumerate(queries)}
    c_index = {k: i for i, k in enumerate(cands)}
    ranks, rankings = [], []
    for rec in frame.itertuples():
        rows = torch.tensor([c_index[k] for k in zip(rec.tgt_text, rec.tgt_img_path, strict=True)])
        rank, ranking = rank_candidates(cand_emb[rows] @ query_emb[q_index[(rec.qry_text, rec.qry_img_path)]])
        ranks.append(rank)
        rankings.append(ranking)
    return ranks, rankings


class DatasetEvaluator:
    """Everything fixed across the datasets of one (variant, seed): model, inputs, files, processes."""

    def __init__(self, params: dict[str, Any], variant: str, seed: int):
        self.params, self.state = params, PartialState(cpu=not torch.cuda.is_available())
        self.paths = Paths.from_params(params)
        model_dir = self.paths.model(variant, seed)
        self.eval_dir = self.paths.eval(variant, seed)
        model = params["model"]
        self.embedder, tokenizer, image_processor = Embedder.load(model_dir, model["attn_implementation"],
                                                                  mrope=model["mrope"])
        check_processor(image_processor, pixel_budget(model), model_dir)
        self.embedder.to(self.state.device).eval()
        self.store = SaliencyStore(self.paths.saliency) if self.embedder.uses_saliency else None
        self.features = features_for(params, self.embedder)
        self.build = InputBuilder(tokenizer, image_processor, image_root(self.paths.data),
                                  params["evaluate"]["max_text_tokens"], image_side=square_side(model),
                                  features=self.features)
        self.cache_dir = self.paths.results / "cache" / "eval" / self.paths.run(variant, seed)
        self.settings = {"max_text_tokens": params["evaluate"]["max_text_tokens"],
                         "attn_implementation": model["attn_implementation"], "mrope": model["mrope"],
                         "image_side": square_side(model), "pixels": pixel_budget(model)}
        self.unreadable = read_unreadable(self.paths.data)
        self.checks = read_eval_checks(self.paths.data)
        self.samples = params["evaluate"]["attention_maps"]
        self.maps: dict[str, list[dict[str, Any]]] = {}
        self.model_files = [model_dir, *([self.paths.saliency] if self.store else []),
                            *([self.paths.features] if self.features else [])]
        self._masks: dict[str, np.ndarray | None] = {}

    def mask(self, image_path: str) -> np.ndarray | None:
        if image_path not in self._masks:
            self._masks[image_path] = load_mask(self.paths.data, image_path)
        return self._masks[image_path]

    def embeddings(self, dataset: str, queries: list[Key], cands: list[Key]) -> dict[str, Any]:
        """Cached or freshly encoded tensors of both sides (query side with interpretability figures)."""
        evaluate = self.params["evaluate"]
        stamp = cache.fingerprint([*self.model_files, eval_path(self.paths.data, dataset)], self.settings)
        keys = {"query": queries, "candidate": cands}
        found = [cache.load(self.cache_dir, dataset, stamp, keys) if self.state.is_main_process else None]
        if self.state.num_processes > 1:
            found = broadcast_object_list(found)
        if found[0] is not None:
            tensors, meta = found[0]
            return {"tensors": tensors, "forward_passes": int(meta["forward_passes"]), "seconds": 0.0}
        start = time.perf_counter()
        query = encode(self.embedder, self.build, queries, evaluate["batch_size"], self.store, self.mask, self.state)
        cand: Encoded = encode(self.embedder, self.build, cands, evaluate["batch_size"], self.store, None, self.state)
        seconds = time.perf_counter() - start
        tensors = {"query": query.embeddings, "candidate": cand.embeddings,
                   **{f"query_{name}": values for name, values in query.figures.items()}}
        passes = query.forward_passes + cand.forward_passes
        if self.state.is_main_process:
            cache.save(self.cache_dir, dataset, tensors, keys, {"fingerprint": stamp, "forward_passes": passes})
        return {"tensors": tensors, "forward_passes": passes, "seconds": seconds}

    @torch.no_grad()
    def sample_attention(self, keys: list[Key]) -> list[dict[str, Any]]:
        """The pooled token's attention over the visual tokens of each (text, image) query, as a (rows, cols) map
        of the merged token grid (the report's "where the model looks" grid)."""
        if not keys:
            return []
        texts, images = (list(x) for x in zip(*keys, strict=True))
        batch = self.build(texts, images, self.store)
        batch.inputs = {k: v.to(self.state.device) for k, v in batch.inputs.items()}
        out = self.embedder(batch, with_attention=True)
        return [{"text": text, "image": image, "grid": list(grid),
                 "attention": attention.float().cpu().reshape(grid).tolist()}
                for (text, image), attention, grid in zip(keys, out.visual_attention, batch.grids, strict=True)]

    def __call__(self, row: Any) -> tuple[dict[str, Any], np.ndarray, float]:
        """(scores record, per-row hits, encode seconds) of one manifest row; files written by the main process."""
        full = read_eval(self.paths.data, row.dataset)
        rows.check_count(full, row.dataset, int(row.num_queries))
        check_images(self.paths.data, f"dataset {row.dataset}", full, EVAL_IMAGE_COLUMNS)
        kept = rows.drop_unreadable(full, row.dataset, self.unreadable, self.params["evaluate"]["drop_unreadable"])
        frame = kept.frame
        queries, cands = unique_inputs(frame)
        try:
            found = self.embeddings(row.dataset, queries, cands)
        except ImageDecodeError as err:
            raise DataFormatError(f"{rows.locate(full, row.dataset, {err.path})} cannot be decoded: {err}") from err
        tensors = found["tensors"]
        if self.state.is_main_process:
            self.maps[row.dataset] = self.sample_attention([q for q in queries if q[1]][:self.samples])
        ranks, rankings = rank_rows(frame, queries, tensors["query"], cands, tensors["candidate"])
        hits = (np.asarray(ranks) == 1).astype(np.float64)
        unique = len(queries) + len(cands)
        figures = {name: _nanmean(tensors[f"query_{name}"]) for name in FIGURES}
        record = {"dataset": row.dataset, "meta_task": row.meta_task, "split": row.split,
                  "num_candidates": int(row.num_candidates), "num_queries": len(frame),
                  **ranking_metrics(np.asarray(ranks)),
                  "unique_queries": len(queries), "unique_candidates": len(cands),
                  "input_references": len(frame) + int(frame["tgt_text"].map(len).sum()),
                  "forward_passes": found["forward_passes"], "forward_ratio": found["forward_passes"] / unique,
                  **figures, **kept.record, **rows.accepted_counts(self.checks, row.dataset)}
        if self.state.is_main_process:
            write_json(outputs.scores_path(self.eval_dir, row.dataset), record)
            depth = self.params["evaluate"]["ranking_depth"]
            outputs.write_predictions(outputs.predictions_path(self.eval_dir, row.dataset), kept.rows, ranks,
                                      [r[:depth] for r in rankings])
        return record, hits, found["seconds"]


def link_train_run(mlflow: Any, model_digest: str) -> None:
    """Tag the active run with the id of the train run that logged this exact model folder (`ssame.train_run_id`),
    found by content digest; "not found" when that run was not tracked in this store."""
    found = mlflow.search_runs(filter_string=f"tags.`{MODEL_DIGEST_TAG}` = '{model_digest}'",
                               order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    if not found:
        log.warning("no train run in the MLflow store logged this model (digest %s)", model_digest)
    mlflow.set_tag("ssame.train_run_id", found[0].info.run_id if found else "not found")


def check_processor(image_processor, pixels: int, model_dir: Path) -> None:
    """The model folder's image processor must use the pixel budget of params `model` (what training used)."""
    size = (image_processor.size["shortest_edge"], image_processor.size["longest_edge"])
    if size != (pixels, pixels):
        raise ValueError(f"{model_dir}: the model's image processor has min/max pixels {size}, params model give "
                         f"{pixels} (model.image_resize / image_side / image_pixels); retrain or set them back")


def _nanmean(values: torch.Tensor) -> float | None:
    """Mean over the inputs a figure applies to; None (JSON null) when it applies to none."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else None


def evaluate(params: dict[str, Any], variant: str, seed: int) -> dict[str, Any]:
    """Score one trained (variant, seed) on every eval dataset of the manifest; write per-dataset files and
    `aggregate.json` (with bootstrap 95 % CIs), log to MLflow; returns the aggregate record."""
    params = as_params(params)
    evaluator = DatasetEvaluator(params, variant, seed)
    paths, state, eval_dir = evaluator.paths, evaluator.state, evaluator.eval_dir
    manifest = read_manifest(paths.data)
    manifest = manifest[manifest["num_queries"] > 0]
    run = None
    if state.is_main_process:
        inputs = {"model": paths.model(variant, seed), "data_manifest": paths.data / "manifest.csv",
                  **({"image_features": paths.features} if evaluator.features else {})}
        tags = job_tags(params, "evaluate", {"variant": variant, "seed": str(seed)}, inputs)
        run = mlflow_run(params, f"evaluate/{variant}/seed{seed}", tags)
    with run or contextlib.nullcontext() as mlflow:
        if mlflow is not None:
            link_train_run(mlflow, tags["ssame.input.model"])
            log_datasets(mlflow, {name: eval_path(paths.data, name) for name in manifest["dataset"]}, "eval")
        records, hits = {}, {}
        progress = Progress(log, "dataset", len(manifest), 1)
        for done, row in enumerate(manifest.itertuples(), 1):
            record, hits[row.dataset], seconds = evaluator(row)
            records[row.dataset] = record
            if state.is_main_process:
                progress.update(done, name=row.dataset, hit_at_1=record["hit_at_1"],
                                encoded=f"{record['forward_passes']} inputs in {seconds:.1f} s")
            if mlflow is not None:
                speed = {"inputs_per_second": record["forward_passes"] / seconds} if seconds else {}
                mlflow.log_metrics({f"{k}.{row.dataset}": v for k, v in (record | speed).items()
                                    if isinstance(v, float)})
        if evaluator.features is not None:
            log.info("%s (in this process)", evaluator.features.usage())
        boot = params["evaluate"]["bootstrap"]
        scores = {name: rec["hit_at_1"] for name, rec in records.items()}
        summary = {"variant": variant, "seed": seed, **aggregate(scores, manifest), "per_dataset": scores,
                   "ci95": bootstrap_aggregates(hits, manifest, boot["samples"], boot["seed"]),
                   "forward_ratio": sum(r["forward_passes"] for r in records.values())
                   / sum(r["unique_queries"] + r["unique_candidates"] for r in records.values()),
                   "interpretability": {name: _mean_over_datasets([r[name] for r in records.values()])
                                        for name in FIGURES}}
        if state.is_main_process:
            replace_dir(evaluator.cache_dir / "embeddings", eval_dir / "embeddings")
            shutil.rmtree(evaluator.cache_dir)
            write_json(eval_dir / "aggregate.json", summary)
            write_json(eval_dir / "attention.json", evaluator.maps)
            mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)}
                               | {k: v for k, v in summary["interpretability"].items() if v is not None})
            mlflow.log_artifact(str(eval_dir / "aggregate.json"))
    state.wait_for_everyone()
    return summary


def _mean_over_datasets(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None
