"""Report stage: tables and figures from the evaluate stage's aggregate and prediction files."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from ssame.config import Paths, as_params, reported_variants, variant_labels
from ssame.data.io import read_manifest
from ssame.evaluate.stats import variant_hits
from ssame.report.figures import (
    FORMATS,
    ablation_bars,
    attention_grid,
    metatask_bars,
    per_dataset_heatmap,
    read_histories,
    saliency_overlays,
    training_curves,
)
from ssame.report.saliency import build_saliency_report
from ssame.report.tables import (
    SCORE_COLUMNS,
    ablation_delta_table,
    ablation_table,
    best_in_column,
    ci_table,
    interpretability_table,
    load_aggregates,
    main_table,
    per_dataset_table,
    published_table,
    significance_table,
    write_table,
)

# The saliency stage's own tables and figures, under target `all` only; plus figures/saliency_<method>.{png,pdf}, one
# per method of params saliency.quality.experts and "fusion".
SALIENCY_TABLES = ["saliency_quality"]
SALIENCY_FIGURES = ["saliency_overlays"]
TABLES = ["main", "ablation", "ablation_delta", "per_dataset", "ci", "significance", "published", "interpretability"]
FIGURES = ["metatask_bars", "training_curves", "per_dataset_heatmap", "ablation_bars", "attention_grid"]
TABLE_FORMATS = (".csv", ".md", ".tex", ".html")


def output_files(seed_systems: bool) -> list[str]:
    """The files a report writes, relative to its folder (`Paths.report`), the per-method saliency figures aside."""
    tables = TABLES if seed_systems else TABLES + SALIENCY_TABLES
    figures = FIGURES if seed_systems else FIGURES + SALIENCY_FIGURES
    return [f"tables/{t}{x}" for t in tables for x in TABLE_FORMATS] + [
        f"figures/{f}{x}" for f in figures for x in FORMATS]


REFERENCE = "ssame"  # the full SSA-ME: every other variant's delta in tables/ablation_delta


def _p_formats(table) -> list[str]:
    return [".4f" if column.startswith("p_") else ".1f" for column in table.columns]


def labelled(table: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    """`table` with variant names replaced by their labels, in the method/a/b cells and in column names."""
    out = table.rename(columns=labels)
    for column in ("method", "a", "b"):
        if column in out:
            out[column] = out[column].replace(labels)
    return out


def build(params: dict, seed_systems: bool = False) -> None:
    """Write every file of `output_files` under `Paths.report(seed_systems)`: target `all`'s report of
    `train.variants` (with the saliency stage's tables and figures), or target `seed_systems`'s of every variant."""
    params = as_params(params)
    results, reports = Path(params["results_dir"]), Paths.from_params(params).report(seed_systems)
    variants, seeds = reported_variants(params, seed_systems), params["train"]["seeds"]
    manifest = read_manifest(results / "data")
    manifest = manifest[manifest["num_queries"] > 0]  # as the evaluate stage: a dataset without rows is not scored
    datasets = manifest["dataset"].tolist()
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("fork")) as side:
        # the saliency stage's figures, which need nothing below, render in a forked process meanwhile
        saliency = None if seed_systems else side.submit(_saliency_part, results, datasets, reports)
        _evaluation_part(params, seed_systems, results, reports, variants, seeds, manifest, datasets)
        if saliency is not None:
            saliency.result()


def _saliency_part(results: Path, datasets: list[str], reports: Path) -> None:
    saliency_overlays(results, datasets, reports / "figures" / "saliency_overlays.png")
    build_saliency_report(results, reports)


def _evaluation_part(params, seed_systems: bool, results: Path, reports: Path, variants: list[str], seeds: list[int],
                     manifest: pd.DataFrame, datasets: list[str]) -> None:
    """The tables and figures of the evaluated variants."""
    scores, per_dataset = load_aggregates(results, variants, seeds, datasets)
    tables, labels = reports / "tables", variant_labels(params)

    def write(table: pd.DataFrame, name: str, **options) -> None:
        write_table(labelled(table, labels), tables / name, **options)

    main = main_table(scores)
    write(main, "main", bold=best_in_column(main, SCORE_COLUMNS))
    write(ablation_table(scores), "ablation")
    by_dataset = per_dataset_table(per_dataset, manifest, variants)
    write(by_dataset, "per_dataset")
    boot = params["evaluate"]["bootstrap"]
    hits = {variant: variant_hits(Paths.from_params(params), variant, seeds, datasets) for variant in variants}
    write(ci_table(hits, scores, manifest, boot["samples"], boot["seed"]), "ci")
    significance = significance_table(hits, scores, manifest, boot["samples"], boot["seed"])
    write(significance, "significance", floatfmt=_p_formats(significance))
    delta = ablation_delta_table(significance, REFERENCE)
    write(delta, "ablation_delta", floatfmt=_p_formats(delta))
    published = published_table(per_dataset, manifest, params["model"]["backbone"])
    write(published, "published", bold=best_in_column(published, SCORE_COLUMNS, within="benchmark"))
    write(interpretability_table(results, variants, seeds), "interpretability")
    figures = reports / "figures"
    metatask_bars(scores, figures / "metatask_bars.png")
    training_curves(read_histories(results, variants, seeds), figures / "training_curves.png")
    per_dataset_heatmap(by_dataset, variants, figures / "per_dataset_heatmap.png")
    ablation_bars(delta, figures / "ablation_bars.png")
    compared = [v for v in ("baseline", REFERENCE) if v in variants] or variants[:2]
    attention_grid(results, compared, seeds, figures / "attention_grid.png")
