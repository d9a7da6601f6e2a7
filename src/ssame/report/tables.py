"""Result tables of the report stage: MMEB hit@1 in percent, aggregated over training seeds."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from itertools import combinations
from numbers import Real
from pathlib import Path

import numpy as np
import pandas as pd

from ssame.atomic import atomic_path, write_text
from ssame.data.hub import mmeb_datasets
from ssame.evaluate.aggregate import GROUPS, aggregate, published_aggregates, published_summary
from ssame.evaluate.stats import bootstrap_aggregates, paired_bootstrap_groups

log = logging.getLogger(__name__)
SCORE_COLUMNS = list(GROUPS)
SUMMARY_LABEL = "mean ± std"
PER_DATASET_SOURCE = "per-dataset scores (VLM2Vec repo)"
Hits = dict[str, dict[str, np.ndarray]]  # variant -> dataset -> per-query hit, mean over seeds


INTERPRETABILITY = ("visual_attention_mass", "pointing_game", "mask_share", "pointing_chance")


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


def interpretability_table(results_dir: str | Path, variants: list[str], seeds: list[int]) -> pd.DataFrame:
    """One row per variant: each figure of `aggregate.json`'s `interpretability` in percent, mean and std over
    seeds (ddof=1; 0.0 for one seed; empty where the benchmark has no masks)."""
    rows = []
    for variant in variants:
        values = []
        for seed in seeds:
            path = Path(results_dir) / "eval" / variant / f"seed{seed}" / "aggregate.json"
            if not path.is_file():
                raise FileNotFoundError(f"missing aggregate file: {path}")
            figures = json.loads(path.read_text()).get("interpretability")
            missing = [k for k in INTERPRETABILITY if not isinstance(figures, dict) or k not in figures]
            if missing:
                raise KeyError(f"{path}: missing key(s) {['interpretability.' + k for k in missing]}")
            values.append({k: float("nan") if figures[k] is None else _fraction(figures[k], path, k)
                           for k in INTERPRETABILITY})
        percent = pd.DataFrame(values).mul(100)
        std = percent.std(ddof=1) if len(seeds) > 1 else percent.mean() * 0.0
        rows.append({"method": variant, **{k: percent[k].mean() for k in INTERPRETABILITY},
                     **{f"{k}_std": std[k] for k in INTERPRETABILITY}})
    return pd.DataFrame(rows)


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


def _percent(value: float | None) -> float:
    return float("nan") if value is None else 100 * value


def _seed_percent(scores: pd.DataFrame, variant: str) -> pd.DataFrame:
    """`variant`'s per-seed aggregates (SCORE_COLUMNS) from `load_aggregates`' scores in percent, indexed by seed."""
    rows = scores[scores["variant"] == variant]
    if rows.empty:
        raise KeyError(f"no per-seed scores for variant {variant!r}")
    return rows.set_index("seed")[SCORE_COLUMNS].mul(100)


def _spread(values: pd.Series, prefix: str) -> dict[str, float]:
    """`<prefix>_sd` (ddof=1; 0.0 for one seed), `_min` and `_max` of per-seed values; all NaN if any is NaN."""
    sd = values.std(ddof=1, skipna=False) if len(values) > 1 else 0.0 * values.iloc[0]
    return {f"{prefix}_sd": float(sd), f"{prefix}_min": float(values.min(skipna=False)),
            f"{prefix}_max": float(values.max(skipna=False))}


def ci_table(hits: Hits, scores: pd.DataFrame, manifest: pd.DataFrame, samples: int, seed: int) -> pd.DataFrame:
    """Per variant and aggregate, in percent: hit@1 of the seed-mean hits with its 95 % bootstrap CI over queries
    (ssame.evaluate.stats: evaluation noise), then `seed_sd` (ddof=1; 0.0 for one seed), `seed_min` and `seed_max`
    of the per-seed aggregates in `scores` (training noise); NaN for a group with no dataset."""
    rows = []
    for variant, by_dataset in hits.items():
        point = aggregate({name: float(values.mean()) for name, values in by_dataset.items()}, manifest)
        ci = bootstrap_aggregates(by_dataset, manifest, samples, seed)
        percent = _seed_percent(scores, variant)
        percent.loc[:, [key for key in GROUPS if point[key] is None]] = np.nan  # no dataset: NaN, as hit_at_1
        rows += [{"method": variant, "aggregate": key, "hit_at_1": _percent(point[key]),
                  "ci95_lo": _percent(None if ci[key] is None else ci[key][0]),
                  "ci95_hi": _percent(None if ci[key] is None else ci[key][1]),
                  **_spread(percent[key], "seed")} for key in GROUPS]
    columns = ["method", "aggregate", "hit_at_1", "ci95_lo", "ci95_hi", "seed_sd", "seed_min", "seed_max"]
    return pd.DataFrame(rows, columns=columns)


def significance_table(hits: Hits, scores: pd.DataFrame, manifest: pd.DataFrame, samples: int,
                       seed: int) -> pd.DataFrame:
    """Every unordered pair of variants once, `a` listed after `b` in `hits`, per aggregate that has datasets, in
    hit@1 points: the paired bootstrap over queries of the seed-mean hits (evaluation noise), delta = a − b with its
    95 % CI and p-value; then `seed_delta_sd` (ddof=1; 0.0 for one seed), `seed_delta_min` and `seed_delta_max` of
    the per-seed differences of the aggregates in `scores`, seed k of a against seed k of b (training noise; NaN
    where a seed lacks the group)."""
    rows = []
    for b, a in combinations(hits, 2):
        percent_a, percent_b = _seed_percent(scores, a), _seed_percent(scores, b)
        if set(percent_a.index) != set(percent_b.index):
            raise ValueError(f"seeds differ: {a!r} has {sorted(percent_a.index)}, {b!r} {sorted(percent_b.index)}")
        deltas = percent_a - percent_b  # aligned on seed
        for key, result in paired_bootstrap_groups(hits[a], hits[b], manifest, samples, seed).items():
            lo, hi = result["ci95"]
            rows.append({"a": a, "b": b, "aggregate": key, "delta": 100 * result["delta"], "ci95_lo": 100 * lo,
                         "ci95_hi": 100 * hi, "p_value": result["p_value"], **_spread(deltas[key], "seed_delta")})
    columns = ["a", "b", "aggregate", "delta", "ci95_lo", "ci95_hi", "p_value", "seed_delta_sd", "seed_delta_min",
               "seed_delta_max"]
    return pd.DataFrame(rows, columns=columns)


def ablation_delta_table(significance: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every other variant against `reference` (the full SSA-ME), per aggregate, in hit@1 points: delta = variant −
    reference with its 95 % CI and p-value from `significance_table`, and `p_holm`, the p-values Holm-adjusted within
    each aggregate over the variants compared (one family per aggregate: "is this variant different from the full
    model?" asked once per variant)."""
    from statsmodels.stats.multitest import multipletests

    involved = significance[(significance["a"] == reference) | (significance["b"] == reference)]
    if involved.empty:  # e.g. a run of the baseline alone: the table keeps its columns, with no rows
        log.warning("ablation table: no variant is compared with %r (not in train.variants, or alone)", reference)
        return pd.DataFrame(columns=["method", "aggregate", "delta", "ci95_lo", "ci95_hi", "p_value", "p_holm"])
    flip = involved["a"] == reference  # delta = a − b; the table wants other − reference
    sign = np.where(flip, -1.0, 1.0)
    table = pd.DataFrame({
        "method": np.where(flip, involved["b"], involved["a"]), "aggregate": involved["aggregate"],
        "delta": sign * involved["delta"],
        "ci95_lo": np.where(flip, -involved["ci95_hi"], involved["ci95_lo"]),
        "ci95_hi": np.where(flip, -involved["ci95_lo"], involved["ci95_hi"]),
        "p_value": involved["p_value"]})
    table["p_holm"] = table.groupby("aggregate")["p_value"].transform(
        lambda p: multipletests(p, method="holm")[1])
    rank = table["aggregate"].map({key: i for i, key in enumerate(GROUPS)})
    return table.iloc[np.argsort(rank.to_numpy(), kind="stable")].reset_index(drop=True)  # variants in run order


def benchmark_label(datasets: Sequence[str]) -> str:
    """"MMEB" for exactly the 36 MMEB datasets, "MMEB subset (k of 36)" for fewer, else "MMEB-mini"."""
    names, mmeb = set(datasets), set(mmeb_datasets().index)
    if names == mmeb:
        return "MMEB"
    return f"MMEB subset ({len(names)} of {len(mmeb)})" if names < mmeb else "MMEB-mini"


def published_table(per_dataset: pd.DataFrame, manifest: pd.DataFrame, backbone: str) -> pd.DataFrame:
    """Published models aggregated from their per-dataset scores, the published summary rows and our variants
    (per-dataset hit@1 averaged over seeds, aggregated by the same `aggregate`), in percent, with the benchmark."""
    columns = ["benchmark", "source", "method", "backbone", *SCORE_COLUMNS]
    published = published_aggregates().rename(columns={"model": "method"})
    published[SCORE_COLUMNS] *= 100
    published = published.assign(benchmark="MMEB", source=PER_DATASET_SOURCE, backbone="")
    summary = published_summary().assign(benchmark="MMEB")
    seeds = ", ".join(str(seed) for seed in per_dataset["seed"].unique())
    ours = []
    for variant, group in per_dataset.groupby("variant", sort=False):
        scores = group.groupby("dataset", sort=False)["score"].mean().to_dict()
        ours.append({"benchmark": benchmark_label(list(scores)), "source": f"this run (mean over seeds {seeds})",
                     "method": variant, "backbone": backbone,
                     **{key: _percent(value) for key, value in aggregate(scores, manifest).items()}})
    return pd.concat([published[columns], summary[columns], pd.DataFrame(ours, columns=columns)], ignore_index=True)


def _formats(table: pd.DataFrame, floatfmt: str | Sequence[str]) -> dict[str, str]:
    """Column -> format spec of its floats (one spec for all, or one per column)."""
    specs = [floatfmt] * len(table.columns) if isinstance(floatfmt, str) else list(floatfmt)
    return dict(zip(table.columns, specs, strict=True))


def best_in_column(table: pd.DataFrame, columns: Sequence[str], within: str | None = None) -> pd.DataFrame:
    """Boolean frame: True where a cell of `columns` is its column's maximum (within each group of `within`)."""
    best = pd.DataFrame(False, index=table.index, columns=table.columns)
    groups = table.groupby(within, sort=False) if within else [(None, table)]
    for _, group in groups:
        for column in columns:
            values = pd.to_numeric(group[column], errors="coerce")
            if values.notna().any():
                best.loc[group.index, column] = values == values.max()
    return best


def _styler(table: pd.DataFrame, floatfmt: str | Sequence[str], bold: pd.DataFrame | None, escape: str,
            bold_props: str):
    """pandas Styler of `table` without its index: floats as `floatfmt`, NaN as --, text escaped for `escape`
    ("latex" or "html"), cells True in `bold` styled with `bold_props`."""
    specs = _formats(table, floatfmt)
    formatters = {c: (lambda v, spec=specs[c]: format(v, spec)) for c in table.columns
                  if pd.api.types.is_float_dtype(table[c])}
    styler = table.style.set_uuid("ssame")  # fixed element ids: the same table, the same bytes
    styler = styler.hide(axis="index").format(formatters, na_rep="--", escape=escape)
    styler = styler.format_index(escape=escape, axis=1)
    if bold is not None:
        styler = styler.apply(lambda _: bold.replace({True: bold_props, False: ""}), axis=None)
    return styler


def latex_table(table: pd.DataFrame, floatfmt: str | Sequence[str] = ".1f", bold: pd.DataFrame | None = None) -> str:
    """A booktabs tabular of `table` (\\usepackage{booktabs}); cells True in `bold` in bold."""
    align = "".join("r" if pd.api.types.is_numeric_dtype(table[c]) else "l" for c in table.columns)
    return _styler(table, floatfmt, bold, "latex", "textbf:--rwrap;").to_latex(hrules=True, column_format=align)


def html_table(table: pd.DataFrame, floatfmt: str | Sequence[str] = ".1f", bold: pd.DataFrame | None = None) -> str:
    """A standalone HTML page of `table` (what the Snakemake report shows); cells True in `bold` in bold."""
    styler = _styler(table, floatfmt, bold, "html", "font-weight: bold;").set_table_styles([
        {"selector": "", "props": "border-collapse: collapse; font: 14px sans-serif;"},
        {"selector": "th, td", "props": "padding: 3px 10px; border-bottom: 1px solid #ccc; text-align: right;"}])
    return f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n{styler.to_html()}</body></html>\n"


def write_table(table: pd.DataFrame, stem: Path, floatfmt: str | Sequence[str] = ".1f",
                bold: pd.DataFrame | None = None) -> None:
    """Write `table` to `<stem>.csv`, `<stem>.md` (GitHub-style markdown, floats as `floatfmt`, one format or one
    per column), `<stem>.tex` (`latex_table`) and `<stem>.html` (`html_table`), cells True in `bold` in bold."""
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    write_text(stem.with_suffix(".md"), table.to_markdown(index=False, floatfmt=floatfmt) + "\n")
    write_text(stem.with_suffix(".tex"), latex_table(table, floatfmt, bold))
    write_text(stem.with_suffix(".html"), html_table(table, floatfmt, bold))
