"""Which rows of an eval dataset are scored: missing and unreadable images, and what VLM2Vec accepts (counted).

Every error names the dataset, row, column and image path (`ssame.data.io.Ref`). An image the data stage found
unreadable (`results/data/unreadable.json`) stops the evaluation unless `evaluate.drop_unreadable`; then the rows
that reference it are dropped and counted. A duplicated ground truth or an unexpected candidate count is what VLM2Vec
scores without complaint: the data stage counts them (`eval_checks.json`), the evaluation warns and reports them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import pandas as pd

from ssame.data.io import EVAL_CHECK_KEYS, EVAL_IMAGE_COLUMNS, DataFormatError, Ref, first_reference

log = logging.getLogger(__name__)


def _paths(frame: pd.DataFrame) -> set[str]:
    return (set(frame["qry_img_path"]) | {p for images in frame["tgt_img_path"] for p in images}) - {""}


def locate(frame: pd.DataFrame, dataset: str, paths: set[str]) -> Ref:
    """The first reference (row order) of an eval frame to one of `paths`."""
    return first_reference(frame, EVAL_IMAGE_COLUMNS, f"dataset {dataset}", paths)


def check_count(frame: pd.DataFrame, dataset: str, expected: int) -> None:
    """The eval parquet holds the rows manifest.csv counts: a shorter or longer file would be scored as if whole."""
    if len(frame) != expected:
        raise DataFormatError(f"dataset {dataset}: the eval parquet holds {len(frame)} rows but manifest.csv counts "
                              f"{expected} queries (rerun the data stage)")


@dataclass
class Kept:
    """The rows scored: `frame` (index reset), their row numbers in the eval parquet, and what was dropped."""

    frame: pd.DataFrame
    rows: list[int]
    total: int                                                    # rows in the eval parquet
    dropped_images: dict[str, str] = field(default_factory=dict)  # unreadable path -> reason

    @property
    def record(self) -> dict[str, object]:
        """The drop, as scores/<dataset>.json reports it."""
        return {"dropped_rows": self.total - len(self.rows),
                "dropped_images": dict(sorted(self.dropped_images.items()))}


def drop_unreadable(frame: pd.DataFrame, dataset: str, unreadable: Mapping[str, str], allow: bool) -> Kept:
    """All rows when none references an unreadable image; otherwise an error naming the first such reference, or,
    with `allow` (params `evaluate.drop_unreadable`), the rows without one."""
    bad = _paths(frame) & set(unreadable)
    if not bad:
        return Kept(frame, list(range(len(frame))), len(frame))
    first = locate(frame, dataset, bad)
    if not allow:
        raise DataFormatError(f"{first} is unreadable ({unreadable[first.path]}; results/data/unreadable.json); set "
                              "evaluate.drop_unreadable: true to drop the rows that reference an unreadable image")
    keep = [row for row, (query, targets) in enumerate(zip(frame["qry_img_path"], frame["tgt_img_path"], strict=True))
            if query not in bad and bad.isdisjoint(targets)]
    if not keep:
        raise DataFormatError(f"dataset {dataset}: every row references an unreadable image (first: {first})")
    kept = Kept(frame.iloc[keep].reset_index(drop=True), keep, len(frame), {p: unreadable[p] for p in bad})
    log.warning("dataset %s: dropped %d of %d rows that reference %d unreadable image(s), first %s",
                dataset, len(frame) - len(keep), len(frame), len(bad), first)
    return kept


def accepted_counts(checks: Mapping[str, Mapping[str, int]], dataset: str) -> dict[str, int]:
    """The data stage's counts of rows VLM2Vec scores as they are (a repeated ground truth: a tie, which first-argmax
    scores as correct; a candidate count other than the table's), with a warning when any is non-zero."""
    if dataset not in checks:
        raise DataFormatError(f"results/data/eval_checks.json has no entry for dataset {dataset} "
                              "(rerun the data stage)")
    counts = {key: int(checks[dataset][key]) for key in EVAL_CHECK_KEYS}
    if any(counts.values()):
        log.warning("dataset %s: %s (scored as VLM2Vec does)", dataset,
                    ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in counts.items() if n))
    return counts
