"""MMEB aggregation: meta-task, IND, OOD and overall scores as unweighted means over datasets.

The one place the grouping is defined: our runs (`aggregate`), their bootstrap replicates (`group_means` on a
replicates × datasets array, ssame.evaluate.stats) and the published per-dataset scores (`published_aggregates`).
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd

from ssame.data.hub import mmeb_datasets

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
GROUPS = ("overall", *META_TASKS, "ind", "ood")
RESOURCES = Path(__file__).resolve().parents[1] / "resources"
PUBLISHED_PER_DATASET = RESOURCES / "mmeb_v1_published_per_dataset.csv"
PUBLISHED_SUMMARY = RESOURCES / "mmeb_v1_published_summary.csv"


def dataset_groups(datasets: list[str], manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each aggregate of GROUPS -> positions in `datasets` of the datasets it averages (empty: no dataset)."""
    missing = sorted(set(datasets) - set(manifest["dataset"]))
    if missing:
        raise KeyError(f"datasets not in the manifest: {missing}")
    table = manifest.set_index("dataset").loc[datasets]
    masks = {"overall": np.ones(len(datasets), dtype=bool)}
    masks |= {task: (table["meta_task"] == task).to_numpy() for task in META_TASKS}
    masks |= {"ind": (table["split"] == "IND").to_numpy(), "ood": (table["split"] == "OOD").to_numpy()}
    return {name: np.flatnonzero(mask) for name, mask in masks.items()}


def group_means(values: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """Unweighted mean over the last axis (datasets) of `values` for each group; None for an empty group."""
    return {name: values[..., index].mean(axis=-1) if index.size else None for name, index in groups.items()}


def aggregate(scores: dict[str, float], manifest: pd.DataFrame) -> dict[str, float | None]:
    """Per-dataset hit@1 -> {overall, <meta-task>..., ind, ood}; a group with no dataset is None."""
    names = list(scores)
    means = group_means(np.array([scores[name] for name in names], dtype=np.float64), dataset_groups(names, manifest))
    return {name: None if mean is None else float(mean) for name, mean in means.items()}


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"published scores not found: {path}")
    table = pd.read_csv(path, keep_default_na=False)
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise KeyError(f"{path}: missing column(s) {missing}")
    return table


def _check_range(value: object, high: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value <= high:
        raise ValueError(f"{where} must be a number in [0, {high:g}], got {value!r}")
    return float(value)


def published_aggregates(path: Path = PUBLISHED_PER_DATASET) -> pd.DataFrame:
    """Published models' per-dataset hit@1 (fractions) aggregated by `aggregate` over the 36 MMEB datasets.

    One row per model (file order): model, then GROUPS as fractions. Raises naming the file and model if a model
    lacks or repeats a dataset, names one outside MMEB, or has a value outside [0, 1].
    """
    table = _read_csv(path, ["model", "dataset", "hit_at_1"])
    mmeb = mmeb_datasets().reset_index()
    rows = []
    for model, group in table.groupby("model", sort=False):
        names = group["dataset"].tolist()
        problems = {"lacks": sorted(set(mmeb["dataset"]) - set(names)),
                    "repeats": sorted({name for name in names if names.count(name) > 1}),
                    "has non-MMEB": sorted(set(names) - set(mmeb["dataset"]))}
        for problem, found in problems.items():
            if found:
                raise ValueError(f"{path}: model {model!r} {problem} dataset(s) {found}")
        scores = {rec.dataset: _check_range(rec.hit_at_1, 1.0, f"{path}: model {model!r} dataset {rec.dataset!r} "
                                                                 "hit_at_1")
                  for rec in group.itertuples()}
        rows.append({"model": model, **aggregate(scores, mmeb)})
    return pd.DataFrame(rows, columns=["model", *GROUPS])


def published_summary(path: Path = PUBLISHED_SUMMARY) -> pd.DataFrame:
    """Published MMEB summary scores in percent (method, backbone, GROUPS, source), checked to lie in [0, 100]."""
    table = _read_csv(path, ["method", "backbone", *GROUPS, "source"])
    for row, rec in enumerate(table.to_dict("records"), start=2):
        for key in GROUPS:
            _check_range(rec[key], 100.0, f"{path}: line {row} ({rec['method']}, {rec['backbone']}) key {key!r}")
    return table[["method", "backbone", *GROUPS, "source"]]
