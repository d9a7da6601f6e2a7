"""MMEB-train / MMEB-eval from the Hugging Face hub, or from a local mirror laid out like the hub repos."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

import datasets
import pandas as pd
from huggingface_hub import hf_hub_download

from . import io

RESOURCE = Path(__file__).resolve().parents[1] / "resources" / "mmeb_v1_datasets.csv"
HUB_KEYS = (
    "train_repo",
    "train_revision",
    "eval_repo",
    "eval_revision",
    "train_subset",
    "train_datasets",
    "eval_datasets",
    "max_train_rows_per_dataset",
    "local_dir",
)
TRAIN_SUBSETS = ("original", "diverse_instruction")


def mmeb_datasets() -> pd.DataFrame:
    """The 36 MMEB-eval datasets: meta_task, split, num_candidates, the matching MMEB-train config and the VLM2Vec
    v1 query/target instructions and modalities (`image`, `text` or `image+text`)."""
    return pd.read_csv(RESOURCE, keep_default_na=False).set_index("dataset")


def _check_config(cfg: dict) -> None:
    missing = [k for k in HUB_KEYS if k not in cfg]
    if missing:
        raise KeyError(f"data.hub is missing {', '.join('data.hub.' + k for k in missing)}")
    if cfg["train_subset"] not in TRAIN_SUBSETS:
        raise ValueError(f"data.hub.train_subset must be one of {TRAIN_SUBSETS}, got {cfg['train_subset']!r}")
    n = cfg["max_train_rows_per_dataset"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"data.hub.max_train_rows_per_dataset must be a positive int, got {n!r}")


def _load(
    repo: str, revision: str, config: str, split: str, local_dir: str | None
) -> tuple[datasets.Dataset, str]:
    """One config split and a name for it in error messages."""
    if local_dir is None:
        return datasets.load_dataset(
            repo, config, revision=revision, split=split
        ), f"{repo}@{revision}:{config}/{split}"
    path = Path(local_dir) / repo / config / f"{split}-00000-of-00001.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"local mirror file not found: {path}")
    return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split), str(path)


def _fetch(repo: str, revision: str, filename: str, local_dir: str | None) -> Path:
    if local_dir is None:
        return Path(hf_hub_download(repo, filename, repo_type="dataset", revision=revision))
    path = Path(local_dir) / repo / filename
    if not path.is_file():
        raise FileNotFoundError(f"local mirror file not found: {path}")
    return path


def _extract(zip_path: Path, dest: Path) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts:
                raise io.DataFormatError(f"{zip_path}: unsafe member path {name!r}")
        zf.extractall(dest)


def _prefixed(series: pd.Series, prefix: str) -> pd.Series:
    """Image paths made relative to the data stage's image root ("" stays "")."""
    if series.empty:
        return series
    if isinstance(series.iloc[0], list):
        return series.map(lambda paths: [f"{prefix}/{p}" if p else "" for p in paths])
    return series.map(lambda p: f"{prefix}/{p}" if p else "")


def _train(cfg: dict, config: str, name: str, data_dir: Path) -> int:
    ds, source = _load(
        cfg["train_repo"], cfg["train_revision"], config, cfg["train_subset"], cfg["local_dir"]
    )
    df = ds.select(range(min(cfg["max_train_rows_per_dataset"], len(ds)))).to_pandas()
    for col in ("neg_text", "neg_image_path"):  # only some MMEB-train configs carry a negative
        if col not in df.columns:
            df[col] = ""
    df = io.validate_train(df.map(lambda v: "" if v is None else v), source)
    _extract(
        _fetch(cfg["train_repo"], cfg["train_revision"], f"images_zip/{config}.zip", cfg["local_dir"]),
        io.image_root(data_dir) / "train",
    )
    for col in ("qry_image_path", "pos_image_path", "neg_image_path"):
        df[col] = _prefixed(df[col], "train")
    io.write_train(data_dir, name, df)
    return len(df)


def _eval(cfg: dict, name: str, num_candidates: int, data_dir: Path) -> int:
    ds, source = _load(cfg["eval_repo"], cfg["eval_revision"], name, "test", cfg["local_dir"])
    df = io.validate_eval(ds.to_pandas(), source)
    for row, texts in enumerate(df["tgt_text"]):
        if len(texts) != num_candidates:
            raise io.DataFormatError(
                f"{source}: row {row} has {len(texts)} candidates, {RESOURCE.name} says {num_candidates}"
            )
    for col in ("qry_img_path", "tgt_img_path"):
        df[col] = _prefixed(df[col], "eval")
    io.write_eval(data_dir, name, df)
    return len(df)


def build_hub(cfg: dict, data_dir: Path) -> None:
    """Fetch (or read the mirror), extract images to images/{train,eval}/, write parquets and manifest."""
    _check_config(cfg)
    table = mmeb_datasets()
    by_config = {row.train_config: name for name, row in table.iterrows() if row.train_config}
    unknown = [c for c in cfg["train_datasets"] if c not in by_config]
    unknown += [d for d in cfg["eval_datasets"] if d not in table.index]
    if unknown:
        raise ValueError(f"data.hub: unknown MMEB dataset(s) {unknown} (not in {RESOURCE.name})")
    train_rows = {by_config[c]: _train(cfg, c, by_config[c], data_dir) for c in cfg["train_datasets"]}
    if cfg["eval_datasets"]:
        _extract(
            _fetch(cfg["eval_repo"], cfg["eval_revision"], "images.zip", cfg["local_dir"]),
            io.image_root(data_dir) / "eval",
        )
    queries = {d: _eval(cfg, d, int(table.loc[d, "num_candidates"]), data_dir) for d in cfg["eval_datasets"]}
    names = [d for d in table.index if d in train_rows or d in queries]
    io.write_manifest(
        data_dir,
        [
            {
                "dataset": d,
                "meta_task": table.loc[d, "meta_task"],
                "split": table.loc[d, "split"],
                "num_candidates": int(table.loc[d, "num_candidates"]),
                "num_queries": queries.get(d, 0),
                "train_rows": train_rows.get(d, 0),
            }
            for d in names
        ],
    )
