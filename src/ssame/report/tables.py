"""Result tables of the report stage: MMEB hit@1 in percent, aggregated over training seeds."""

from __future__ import annotations

import json
from numbers import Real
from pathlib import Path

import pandas as pd

SCORE_COLUMNS = ["overall", "classification", "vqa", "retrieval", "grounding", "ind", "ood"]
SUMMARY_LABEL = "mean ± std"


def _fraction(value: object, path: Path, key: str) -> float:
    """Return `value` as a float, or raise naming `path` and `key` unless it is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: key {key!r} must be a hit@1 fraction in [0, 1], got {value!r}")
    return float(value)


def load_aggregates(
    results_dir: str | Path, variants: list[str], seeds: list[int], datasets: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every `eval/<variant>/seed<seed>/aggregate.json` as fractions.

    Returns (scores: variant, seed, SCORE_COLUMNS) and (per_dataset: variant, seed, dataset, score),
    the latter restricted to `datasets`, each of which every file must report.
    """
    score_rows, dataset_rows = [], []
    for variant in variants:
        for seed in seeds:
            path = Path(results_dir) / "eval" / variant / f"seed{seed}" / "aggregate.json"
            if not path.is_file():
                raise FileNotFoundError(f"missing aggregate file: {path}")
            record = json.loads(path.read_text())
            missing = [key for key in ["variant", "seed", *SCORE_COLUMNS, "per_dataset"] if key not in record]
            reported = record.get("per_dataset", {})
            missing += [f"per_dataset.{name}" for name in datasets if name not in reported]
            if missing:
                raise KeyError(f"{path}: missing key(s) {missing}")
            for key, expected in (("variant", variant), ("seed", seed)):
                if record[key] != expected:
                    raise ValueError(f"{path}: key {key!r} is {record[key]!r}, expected {expected!r}")
            # evaluate writes null for a group with no dataset (e.g. a hub subset without grounding): NaN here
            scores = {key: float("nan") if record[key] is None else _fraction(record[key], path, key)
                      for key in SCORE_COLUMNS}
            score_rows.append({"variant": variant, "seed": seed, **scores})
            dataset_rows += [
                {
                    "variant": variant,
                    "seed": seed,
                    "dataset": name,
                    "score": _fraction(record["per_dataset"][name], path, f"per_dataset.{name}"),
                }
                for name in datasets
            ]
    return pd.DataFrame(score_rows), pd.DataFrame(dataset_rows)


def main_table(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: 100 × mean over seeds, rounded to 1 decimal."""
    table = scores.groupby("variant", sort=False)[SCORE_COLUMNS].mean().mul(100).round(1)
    return table.rename_axis("method").reset_index()


def ablation_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per-seed rows in percent plus a `mean ± std` row per variant (ddof=1; std is 0.0 for one seed)."""
    blocks = []
    for variant, group in scores.groupby("variant", sort=False):
        percent = group[SCORE_COLUMNS].mul(100)
        blocks.append(percent.round(1).assign(method=variant, seed=group["seed"].astype(str)))
        mean, std = percent.mean(), percent.std(ddof=1).fillna(0.0)
        summary = {column: f"{mean[column]:.1f} ± {std[column]:.1f}" for column in SCORE_COLUMNS}
        blocks.append(pd.DataFrame([{"method": variant, "seed": SUMMARY_LABEL, **summary}]))
    return pd.concat(blocks, ignore_index=True)[["method", "seed", *SCORE_COLUMNS]]


def per_dataset_table(per_dataset: pd.DataFrame, manifest: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """Dataset, meta_task, split, then one column per variant: 100 × mean over seeds, rounded to 1 decimal."""
    means = per_dataset.groupby(["dataset", "variant"])["score"].mean().mul(100).round(1).unstack("variant")
    return manifest[["dataset", "meta_task", "split"]].merge(means[variants].reset_index(), on="dataset", how="left")


def write_table(table: pd.DataFrame, stem: Path, floatfmt: str = ".1f") -> None:
    """Write `table` to `<stem>.csv` and `<stem>.md` (GitHub-style markdown, floats as `floatfmt`)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(table.to_markdown(index=False, floatfmt=floatfmt) + "\n")
