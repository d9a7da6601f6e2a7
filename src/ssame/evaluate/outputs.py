"""The evaluate stage's per-dataset files, their one writer and reader (format: docs/evaluation.md).

    <eval_dir>/scores/<dataset>.json          metrics, counts, interpretability figures, bootstrap CI of hit@1
    <eval_dir>/predictions/<dataset>.jsonl    per scored query row: {"query", "rank", "correct", "ranking"}
    <eval_dir>/embeddings/<dataset>.safetensors   "query" (Nq, D) and "candidate" (Nc, D) float32, unit norm
    <eval_dir>/embeddings/<dataset>.keys.parquet  side, index, text, image_path: the input of each tensor row
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ssame.atomic import atomic_path

SIDES = ("query", "candidate")
PREDICTION_KEYS = ("query", "rank", "correct", "ranking")


def scores_path(eval_dir: Path, dataset: str) -> Path:
    return Path(eval_dir) / "scores" / f"{dataset}.json"


def predictions_path(eval_dir: Path, dataset: str) -> Path:
    return Path(eval_dir) / "predictions" / f"{dataset}.jsonl"


def embeddings_path(eval_dir: Path, dataset: str) -> Path:
    return Path(eval_dir) / "embeddings" / f"{dataset}.safetensors"


def keys_path(eval_dir: Path, dataset: str) -> Path:
    return Path(eval_dir) / "embeddings" / f"{dataset}.keys.parquet"


def write_predictions(path: Path, rows: list[int], ranks: list[int], rankings: list[list[int]]) -> None:
    """One JSON line per scored query row (`rows`: its row in the eval parquet), in row order; `ranking` may be
    truncated (see params evaluate.ranking_depth)."""
    with atomic_path(path) as tmp, tmp.open("w") as f:
        for row, rank, ranking in zip(rows, ranks, rankings, strict=True):
            f.write(json.dumps({"query": row, "rank": rank, "correct": rank == 1, "ranking": ranking}) + "\n")


def read_predictions(eval_dir: Path, dataset: str) -> pd.DataFrame:
    """Columns query, rank, correct, ranking; raises naming the file and line on a malformed record."""
    path = predictions_path(eval_dir, dataset)
    if not path.is_file():
        raise FileNotFoundError(f"missing predictions file: {path}")
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {line_no} is not JSON: {err}") from err
        missing = [k for k in PREDICTION_KEYS if k not in record]
        if missing:
            raise ValueError(f"{path}: line {line_no} lacks key(s) {missing}")
        previous = records[-1]["query"] if records else -1
        query, rank = record["query"], record["rank"]
        if not (isinstance(query, int) and query > previous and isinstance(rank, int) and rank >= 1):
            raise ValueError(f"{path}: line {line_no} has query {query!r} / rank {rank!r}; expected an integer "
                             f"query row > {previous} (rows in order) and an integer rank >= 1")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no predictions")
    return pd.DataFrame(records, columns=list(PREDICTION_KEYS))


def read_hits(eval_dir: Path, dataset: str) -> np.ndarray:
    """Per query row: 1.0 if the ground truth ranked first, else 0.0 (the input of every bootstrap)."""
    return (read_predictions(eval_dir, dataset)["rank"].to_numpy() == 1).astype(np.float64)
