"""Evaluation stage: the VLM2Vec MMEB protocol (encode each unique input once, cosine, hit@1 at index 0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ssame.config import Paths
from ssame.data.io import image_root, read_eval, read_manifest
from ssame.evaluate.aggregate import aggregate
from ssame.model import Embedder, InputBuilder
from ssame.saliency.store import SaliencyStore
from ssame.tracking import mlflow_run


@torch.no_grad()
def encode(embedder: Embedder, build: InputBuilder, keys: list[tuple[str, str]], batch_size: int,
           store: SaliencyStore | None) -> torch.Tensor:
    """Unit-norm embeddings of unique (text, image path) inputs, in order."""
    chunks = []
    for start in range(0, len(keys), batch_size):
        texts, images = zip(*keys[start:start + batch_size], strict=True)
        chunks.append(embedder(build(list(texts), list(images), store)).embeddings)
    return torch.cat(chunks)


def hit_at_1(frame: pd.DataFrame, query_emb: torch.Tensor, query_index: dict, cand_emb: torch.Tensor,
             cand_index: dict) -> list[int]:
    """Per row: 1 if argmax over its own candidates (first maximum, as np.argmax) is index 0."""
    hits = []
    for row in frame.itertuples():
        q = query_emb[query_index[(row.qry_text, row.qry_img_path)]]
        cands = cand_emb[[cand_index[k] for k in zip(row.tgt_text, row.tgt_img_path, strict=True)]]
        hits.append(int(np.argmax((cands @ q).numpy()) == 0))
    return hits


def evaluate_dataset(embedder: Embedder, build: InputBuilder, frame: pd.DataFrame, batch_size: int,
                     store: SaliencyStore | None) -> dict[str, Any]:
    queries = list(dict.fromkeys(zip(frame["qry_text"], frame["qry_img_path"], strict=True)))
    cands = list(dict.fromkeys(k for texts, images in zip(frame["tgt_text"], frame["tgt_img_path"], strict=True)
                               for k in zip(texts, images, strict=True)))
    query_emb = encode(embedder, build, queries, batch_size, store)
    cand_emb = encode(embedder, build, cands, batch_size, store)
    hits = hit_at_1(frame, query_emb, {k: i for i, k in enumerate(queries)},
                    cand_emb, {k: i for i, k in enumerate(cands)})
    return {"hit_at_1": float(np.mean(hits)), "num_queries": len(hits),
            "unique_queries": len(queries), "unique_candidates": len(cands)}


def evaluate(params: dict[str, Any], variant: str, seed: int) -> dict[str, Any]:
    """Score one trained (variant, seed) on every dataset of the manifest; write per-dataset and aggregate JSON."""
    paths = Paths.from_params(params)
    embedder, tokenizer, image_processor = Embedder.load(paths.model(variant, seed),
                                                         params["model"]["attn_implementation"])
    embedder.eval()
    store = SaliencyStore(paths.saliency) if embedder.uses_saliency else None
    build = InputBuilder(tokenizer, image_processor, image_root(paths.data), params["train"]["max_text_tokens"])
    manifest = read_manifest(paths.data)
    out_dir: Path = paths.eval(variant, seed)
    (out_dir / "scores").mkdir(parents=True, exist_ok=True)
    per_dataset: dict[str, float] = {}
    with mlflow_run(params, f"evaluate/{variant}/seed{seed}",
                    {"stage": "evaluate", "variant": variant, "seed": str(seed)}) as mlflow:
        for row in manifest.itertuples():
            result = evaluate_dataset(embedder, build, read_eval(paths.data, row.dataset),
                                      params["evaluate"]["batch_size"], store)
            result = {"dataset": row.dataset, "meta_task": row.meta_task, "split": row.split,
                      "num_candidates": int(row.num_candidates), **result}
            (out_dir / "scores" / f"{row.dataset}.json").write_text(json.dumps(result, indent=2) + "\n")
            per_dataset[row.dataset] = result["hit_at_1"]
            mlflow.log_metric(f"hit_at_1.{row.dataset}", result["hit_at_1"])
        summary = {"variant": variant, "seed": seed, **aggregate(per_dataset, manifest), "per_dataset": per_dataset}
        mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        (out_dir / "aggregate.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_artifact(str(out_dir / "aggregate.json"))
    return summary
