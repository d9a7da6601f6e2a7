"""Per-dataset embedding files that double as the resume cache of an interrupted evaluation.

An evaluation writes each dataset's embeddings to `results/cache/eval/<variant>/seed<k>/embeddings/` as soon as they
are computed (atomically), and moves the folder into the Snakemake output at the end. A rerun after a crash reuses
every file whose fingerprint (model files, eval parquet, saliency, input settings) still matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ssame.atomic import atomic_path
from ssame.evaluate.outputs import embeddings_path, keys_path

Key = tuple[str, str]


def fingerprint(files: list[Path], settings: dict[str, Any]) -> str:
    """sha256 over (path, size, mtime) of every file under `files` and the JSON of `settings`."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for root in files:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _keys_frame(keys: dict[str, list[Key]]) -> pd.DataFrame:
    return pd.DataFrame([{"side": side, "index": i, "text": t, "image_path": p}
                         for side, side_keys in keys.items() for i, (t, p) in enumerate(side_keys)])


def save(root: Path, dataset: str, tensors: dict[str, torch.Tensor], keys: dict[str, list[Key]],
         metadata: dict[str, Any]) -> None:
    """Write `<dataset>.keys.parquet` then `<dataset>.safetensors`, each atomically.
    `metadata` (with its `fingerprint`) is stored as one JSON string under the key `ssame`: safetensors keeps
    several metadata keys in arbitrary order, one keeps the file byte-identical across runs."""
    path, keys_file = embeddings_path(root, dataset), keys_path(root, dataset)
    with atomic_path(keys_file) as tmp:
        _keys_frame(keys).to_parquet(tmp, index=False)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                  metadata={"ssame": json.dumps(metadata, sort_keys=True)})


def load(root: Path, dataset: str, fingerprint_: str, keys: dict[str, list[Key]]
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, metadata) if a complete file with this fingerprint and exactly these keys exists, else None."""
    path, keys_file = embeddings_path(root, dataset), keys_path(root, dataset)
    if not (path.is_file() and keys_file.is_file()):
        return None
    with safe_open(path, framework="pt") as f:
        metadata = json.loads((f.metadata() or {}).get("ssame", "{}"))
        if metadata.get("fingerprint") != fingerprint_:
            return None
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if not pd.read_parquet(keys_file).equals(_keys_frame(keys)):
        return None
    return tensors, metadata
