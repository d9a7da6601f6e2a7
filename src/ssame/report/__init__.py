"""Report stage: tables and figures from the evaluate stage's aggregate files."""

from __future__ import annotations

from pathlib import Path

from ssame.data.io import read_manifest
from ssame.report.figures import metatask_bars, saliency_overlays
from ssame.report.saliency import build_saliency_report
from ssame.report.tables import (
    ablation_table,
    load_aggregates,
    main_table,
    per_dataset_table,
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
]  # plus figures/saliency_<method>.png for every method of params saliency.quality.experts and "fusion"


def build(params: dict) -> None:
    """Write every file in OUTPUT_FILES (and the per-method saliency figures) under `params["reports_dir"]`."""
    results, reports = Path(params["results_dir"]), Path(params["reports_dir"])
    variants, seeds = params["train"]["variants"], params["train"]["seeds"]
    manifest = read_manifest(results / "data")
    datasets = manifest["dataset"].tolist()
    scores, per_dataset = load_aggregates(results, variants, seeds, datasets)
    write_table(main_table(scores), reports / "tables" / "main")
    write_table(ablation_table(scores), reports / "tables" / "ablation")
    write_table(per_dataset_table(per_dataset, manifest, variants), reports / "tables" / "per_dataset")
    metatask_bars(scores, reports / "figures" / "metatask_bars.png")
    saliency_overlays(results, datasets, reports / "figures" / "saliency_overlays.png")
    build_saliency_report(results, reports)
