"""Report stage: tables and figures from the evaluate stage's aggregate and prediction files."""

from __future__ import annotations

from pathlib import Path

from ssame.config import Paths, as_params
from ssame.data.io import read_manifest
from ssame.evaluate.stats import variant_hits
from ssame.report.figures import metatask_bars, saliency_overlays
from ssame.report.saliency import build_saliency_report
from ssame.report.tables import (
    ablation_table,
    ci_table,
    interpretability_table,
    load_aggregates,
    main_table,
    per_dataset_table,
    published_table,
    significance_table,
    write_table,
)

OUTPUT_FILES = [
    "tables/main.csv",
    "tables/main.md",
    "tables/ablation.csv",
    "tables/ablation.md",
    "tables/per_dataset.csv",
    "tables/per_dataset.md",
    "figures/metatask_bars.png",
    "figures/saliency_overlays.png",
    "tables/saliency_quality.csv",
    "tables/saliency_quality.md",
    "tables/ci.csv",
    "tables/ci.md",
    "tables/significance.csv",
    "tables/significance.md",
    "tables/published.csv",
    "tables/published.md",
    "tables/interpretability.csv",
    "tables/interpretability.md",
]  # plus figures/saliency_<method>.png for every method of params saliency.quality.experts and "fusion"


def build(params: dict) -> None:
    """Write every file in OUTPUT_FILES (and the per-method saliency figures) under `params["reports_dir"]`."""
    params = as_params(params)
    results, reports = Path(params["results_dir"]), Path(params["reports_dir"])
    variants, seeds = params["train"]["variants"], params["train"]["seeds"]
    manifest = read_manifest(results / "data")
    manifest = manifest[manifest["num_queries"] > 0]  # as the evaluate stage: a dataset without rows is not scored
    datasets = manifest["dataset"].tolist()
    scores, per_dataset = load_aggregates(results, variants, seeds, datasets)
    tables = reports / "tables"
    write_table(main_table(scores), tables / "main")
    write_table(ablation_table(scores), tables / "ablation")
    write_table(per_dataset_table(per_dataset, manifest, variants), tables / "per_dataset")
    boot = params["evaluate"]["bootstrap"]
    hits = {variant: variant_hits(Paths.from_params(params), variant, seeds, datasets) for variant in variants}
    write_table(ci_table(hits, scores, manifest, boot["samples"], boot["seed"]), tables / "ci")
    significance = significance_table(hits, scores, manifest, boot["samples"], boot["seed"])
    write_table(significance, tables / "significance",
                floatfmt=[".4f" if column == "p_value" else ".1f" for column in significance.columns])
    write_table(published_table(per_dataset, manifest, params["model"]["backbone"]), tables / "published")
    write_table(interpretability_table(results, variants, seeds), tables / "interpretability")
    metatask_bars(scores, reports / "figures" / "metatask_bars.png")
    saliency_overlays(results, datasets, reports / "figures" / "saliency_overlays.png")
    build_saliency_report(results, reports)
