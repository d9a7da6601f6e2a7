"""MMEB-train / MMEB-eval from the Hugging Face hub at pinned revisions, or from a local mirror laid out like the hub
repos (`data.hub.local_dir`): both are read through `Repo`, by the same file names and the same extraction."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import HfApi, hf_hub_download

from . import images, io

RESOURCE = Path(__file__).resolve().parents[1] / "resources" / "mmeb_v1_datasets.csv"
log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def mmeb_datasets() -> pd.DataFrame:
    """The 36 MMEB-eval datasets: meta_task, split, num_candidates, the matching MMEB-train config and the VLM2Vec
    v1 query/target instructions and modalities (`image`, `text` or `image+text`)."""
    return pd.read_csv(RESOURCE, keep_default_na=False).set_index("dataset")


class Repo:
    """One hub dataset repository at one revision, or its copy under `<local_dir>/<repo>/`."""

    def __init__(self, repo: str, revision: str, local_dir: str | None):
        self.repo, self.revision = repo, revision
        self.local = None if local_dir is None else Path(local_dir) / repo
        self.name = f"{repo}@{revision}" if self.local is None else f"{repo} (local mirror {self.local})"

    @cached_property
    def files(self) -> list[str]:
        if self.local is None:
            return sorted(HfApi().list_repo_files(self.repo, repo_type="dataset", revision=self.revision))
        if not self.local.is_dir():
            raise FileNotFoundError(f"local mirror of {self.repo} not found: {self.local}")
        return sorted(p.relative_to(self.local).as_posix() for p in self.local.rglob("*") if p.is_file())

    def fetch(self, filename: str) -> Path:
        """A file of the repo on local disk. From the hub it is downloaded into the hub cache when needed
        (huggingface_hub resumes a dropped connection and moves a file into the cache only once complete), then
        checked against the sha256 the hub lists for an LFS file: a mismatch is downloaded once more, then an error.
        A local mirror has no hub metadata: its files are used as they are."""
        if filename not in self.files:
            raise FileNotFoundError(f"{self.name}: no file {filename!r}")
        if self.local is not None:
            return self.local / filename
        info = HfApi().get_paths_info(self.repo, filename, repo_type="dataset", revision=self.revision)
        expected = info[0].lfs.sha256 if info and info[0].lfs else None
        path = self._download(filename, force=False)
        if expected and _sha256(path) != expected:
            log.warning("%s: %s does not match its sha256 %s; downloading it again", self.name, filename, expected)
            path = self._download(filename, force=True)
            actual = _sha256(path)
            if actual != expected:
                raise io.DataFormatError(f"{self.name}: {filename} has sha256 {actual} after two downloads, the hub "
                                         f"lists {expected} ({path})")
        return path

    def _download(self, filename: str, force: bool) -> Path:
        return Path(hf_hub_download(self.repo, filename, repo_type="dataset", revision=self.revision,
                                    force_download=force))

    def read_split(self, config: str, split: str) -> tuple[pd.DataFrame, str]:
        """The `<config>/<split>-*.parquet` shards as one frame, and a name for it in messages."""
        shards = [f for f in self.files if f.startswith(f"{config}/{split}-") and f.endswith(".parquet")]
        if not shards:
            found = [f for f in self.files if f.startswith(f"{config}/")]
            raise io.DataFormatError(
                f"{self.name}: config {config!r} has no split {split!r} (no {config}/{split}-*.parquet); files "
                f"under {config}/ at this revision: {found or 'none'}"
            )
        source = f"{self.name} {config}/{split}"
        try:
            table = pa.concat_tables([self._parquet(s) for s in shards])
        except pa.ArrowException as err:
            raise io.DataFormatError(f"{source}: its shards {shards} do not share one schema: {err}") from err
        if not table.num_rows:
            raise io.DataFormatError(f"{source}: no rows in {shards}")
        return table.to_pandas(), source

    def _parquet(self, filename: str) -> pa.Table:
        path = self.fetch(filename)
        try:
            return pq.read_table(path)
        except (pa.ArrowException, OSError) as err:  # e.g. a git-lfs pointer in a clone made without git-lfs
            raise io.DataFormatError(f"{self.name}: {filename} ({path}) is not a readable parquet file: {err}") from err


def _train(repo: Repo, cfg: Mapping[str, Any], config: str, name: str, image_dir: Path) -> tuple[pd.DataFrame,
                                                                                                 list[io.Ref]]:
    """The first rows of one MMEB-train config and its image references (images extracted under `image_dir`)."""
    df, source = repo.read_split(config, cfg["train_subset"])
    df = df.head(cfg["max_train_rows_per_dataset"])
    for col in ("neg_text", "neg_image_path"):  # only some MMEB-train configs carry a negative
        if col not in df.columns:
            df[col] = ""
    df = io.validate_train(df.astype(object).where(df.notna(), ""), source)  # a null cell reads as ""
    refs = io.references(df, io.TRAIN_IMAGE_COLUMNS, f"{name} ({source})")
    images.extract(repo.fetch(f"images_zip/{config}.zip"), refs, image_dir)
    return df, refs


def _eval(repo: Repo, name: str, num_candidates: int) -> tuple[pd.DataFrame, dict[str, int], list[io.Ref]]:
    """One MMEB-eval dataset, its counted VLM2Vec-accepted oddities and its image references."""
    df, source = repo.read_split(name, "test")
    df = io.validate_eval(df, source)
    checks = io.eval_checks(df, num_candidates)
    if checks["duplicated_ground_truth_rows"]:
        log.warning("%s: %d row(s) repeat their ground truth among the candidates (rows %s); kept, as in VLM2Vec",
                    source, checks["duplicated_ground_truth_rows"], io.duplicated_ground_truth_rows(df)[:10])
    if checks["candidate_count_mismatch_rows"]:
        log.warning("%s: %d row(s) do not have the %d candidates %s lists; kept, as in VLM2Vec", source,
                    checks["candidate_count_mismatch_rows"], num_candidates, RESOURCE.name)
    return df, checks, io.references(df, io.EVAL_IMAGE_COLUMNS, f"{name} ({source})")


def _prefixed(df: pd.DataFrame, columns: tuple[str, ...], prefix: str) -> pd.DataFrame:
    """Image paths made relative to the data stage's image root ("" stays "")."""
    df = df.copy()
    for col in columns:
        df[col] = [
            [f"{prefix}/{p}" if p else "" for p in v] if isinstance(v, list) else (f"{prefix}/{v}" if v else "")
            for v in df[col]
        ]
    return df


def _bad_rows(df: pd.DataFrame, bad: Mapping[str, str]) -> pd.Series:
    """Rows of a prefixed train frame that reference an unreadable image."""
    return df.loc[:, list(io.TRAIN_IMAGE_COLUMNS)].isin(list(bad)).any(axis=1)


def build_hub(cfg: Mapping[str, Any], data_dir: Path, bad_input: str) -> None:
    """Fetch (or read the mirror), extract the referenced images to images/{train,eval}/, decode every one of them,
    then write parquets, manifest, `unreadable.json` and `eval_checks.json` (`data.bad_input`: error | skip)."""
    table = mmeb_datasets()
    by_config = {row.train_config: name for name, row in table.iterrows() if row.train_config}
    unknown = [c for c in cfg["train_datasets"] if c not in by_config]
    unknown += [d for d in cfg["eval_datasets"] if d not in table.index]
    if unknown:
        raise ValueError(f"data.hub: unknown MMEB dataset(s) {unknown} (not in {RESOURCE.name})")
    root = io.image_root(data_dir)
    train_repo = Repo(cfg["train_repo"], cfg["train_revision"], cfg["local_dir"])
    train, located = {}, []  # located: (path under the image root, reference)
    for config in cfg["train_datasets"]:
        train[by_config[config]], refs = _train(train_repo, cfg, config, by_config[config], root / "train")
        located += [(f"train/{r.path}", r) for r in refs]
    eval_repo = Repo(cfg["eval_repo"], cfg["eval_revision"], cfg["local_dir"])
    evals, checks, eval_refs = {}, {}, []
    for name in cfg["eval_datasets"]:
        evals[name], checks[name], refs = _eval(eval_repo, name, int(table.loc[name, "num_candidates"]))
        eval_refs += refs
    images.extract(eval_repo.fetch("images.zip"), eval_refs, root / "eval")
    located += [(f"eval/{r.path}", r) for r in eval_refs]

    bad = images.unreadable(root, (path for path, _ in located))
    if bad:
        path, first = next((path, r) for path, r in located if path in bad)
        if bad_input == "error":
            raise io.DataFormatError(f"{first} is unreadable ({root / path}): {bad[path]}; {len(bad)} unreadable "
                                     f"image(s) in all (data.bad_input: skip drops their training rows)")
        log.warning("%d unreadable image(s), first %s: %s (recorded in %s)", len(bad), first, bad[path],
                    io.UNREADABLE_FILE)
    dropped = {}
    for name, df in train.items():
        df = _prefixed(df, io.TRAIN_IMAGE_COLUMNS, "train")
        drop = _bad_rows(df, bad)
        if drop.any():
            dropped[name] = int(drop.sum())
            log.warning("%s: dropped %d training row(s) that reference an unreadable image", name, dropped[name])
        train[name] = df[~drop].reset_index(drop=True)
        io.write_train(data_dir, name, train[name])
    for name, df in evals.items():
        io.write_eval(data_dir, name, _prefixed(df, io.EVAL_IMAGE_COLUMNS, "eval"))
    io.write_unreadable(data_dir, bad, dropped)
    io.write_eval_checks(data_dir, checks)
    io.write_manifest(
        data_dir,
        [
            {
                "dataset": d,
                "meta_task": table.loc[d, "meta_task"],
                "split": table.loc[d, "split"],
                "num_candidates": int(table.loc[d, "num_candidates"]),
                "num_queries": len(evals[d]) if d in evals else 0,
                "train_rows": len(train[d]) if d in train else 0,
            }
            for d in table.index
            if d in train or d in evals
        ],
    )
