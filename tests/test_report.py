"""Report stage: tables and figures built from small synthetic upstream files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ssame.report import OUTPUT_FILES, build
from ssame.report.tables import SCORE_COLUMNS, SUMMARY_LABEL
from ssame.saliency.store import write_shard, write_subjects

VARIANTS = ["baseline", "ssame"]
SEEDS = [0, 1]
DATASETS = {
    "ShapeCls": ("classification", "IND"),
    "ShapeVQA": ("vqa", "OOD"),
    "TextRet": ("retrieval", "IND"),
}
IMAGE_SIZE, MAP_SIZE = 24, 8


def _scores(variant: str, seed: int) -> dict[str, float]:
    rng = np.random.default_rng([VARIANTS.index(variant), seed])
    values = rng.uniform(0.1, 0.9, len(SCORE_COLUMNS))
    return {key: float(value) for key, value in zip(SCORE_COLUMNS, values, strict=True)}


def _write_inputs(results: Path) -> None:
    for variant in VARIANTS:
        for seed in SEEDS:
            per_dataset = dict(zip(DATASETS, _scores(variant, seed + 7).values(), strict=False))
            record = {"variant": variant, "seed": seed, **_scores(variant, seed), "per_dataset": per_dataset}
            path = results / "eval" / variant / f"seed{seed}" / "aggregate.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(record))
    data = results / "data"
    (data / "eval").mkdir(parents=True)
    rows = [(name, task, split, 4, 2, 8 if split == "IND" else 0) for name, (task, split) in DATASETS.items()]
    columns = ["dataset", "meta_task", "split", "num_candidates", "num_queries", "train_rows"]
    pd.DataFrame(rows, columns=columns).to_csv(data / "manifest.csv", index=False)
    shards = results / "saliency" / "shards"
    shards.mkdir(parents=True)
    for index, name in enumerate(DATASETS):
        has_images = name != "TextRet"
        images = [f"{name}/q{i}.png" if has_images else "" for i in range(2)]
        pd.DataFrame({"qry_text": ["q", "q"], "qry_img_path": images, "tgt_text": [["a"], ["b"]],
                      "tgt_img_path": [[""], [""]]}).to_parquet(data / "eval" / f"{name}.parquet")
        if not has_images:
            continue
        for image in images:
            for root in ("images", "masks") if index == 0 else ("images",):
                (data / root / image).parent.mkdir(parents=True, exist_ok=True)
                pixels = np.random.default_rng(index).integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
                Image.fromarray(pixels).save(data / root / image)
        maps = np.random.default_rng(index).random((len(images), MAP_SIZE, MAP_SIZE)).astype(np.float16)
        write_shard(shards / f"{name}.npz", dict(zip(images, maps, strict=True)), {}, MAP_SIZE)
        write_subjects(shards / f"{name}.subjects.jsonl", [])
    shard_names = [name for name in DATASETS if name != "TextRet"]
    (results / "saliency" / "manifest.json").write_text(json.dumps({"shards": shard_names}))
    pd.DataFrame({"method": ["fusion", "fusion", "uniform"], "dataset": ["ShapeCls", "ShapeVQA", "ShapeCls"],
                  "n": [3, 2, 3], "auc": [0.9, 0.7, 0.5], "iou_top10": [0.4, 0.2, 0.0],
                  "pointing": [1.0, 0.5, 0.0]}).to_csv(results / "saliency" / "quality.csv", index=False)
    sample = f"{shard_names[0]}/q0.png"
    np.savez(results / "saliency" / "quality_samples.npz", images=np.array([sample]), texts=np.array(["the q"]),
             methods=np.array(["uniform", "fusion"]), maps=np.ones((2, 1, MAP_SIZE, MAP_SIZE), dtype=np.float16))


@pytest.fixture
def params(tmp_path: Path) -> dict:
    _write_inputs(tmp_path / "results")
    return {"results_dir": str(tmp_path / "results"), "reports_dir": str(tmp_path / "reports"),
            "train": {"variants": VARIANTS, "seeds": SEEDS}}


def test_build_writes_tables_and_figures(params: dict) -> None:
    build(params)
    reports = Path(params["reports_dir"])
    main = pd.read_csv(reports / "tables" / "main.csv")
    assert list(main.columns) == ["method", *SCORE_COLUMNS]
    assert main["method"].tolist() == VARIANTS
    ablation = pd.read_csv(reports / "tables" / "ablation.csv", dtype=str)
    per_dataset = pd.read_csv(reports / "tables" / "per_dataset.csv")
    assert list(per_dataset.columns) == ["dataset", "meta_task", "split", *VARIANTS]
    for variant in VARIANTS:
        percent = pd.DataFrame([_scores(variant, seed) for seed in SEEDS]) * 100
        row = main.set_index("method").loc[variant]
        for key in SCORE_COLUMNS:
            assert row[key] == pytest.approx(round(percent[key].mean(), 1))
        summary = ablation[(ablation["method"] == variant) & (ablation["seed"] == SUMMARY_LABEL)].iloc[0]
        for key in SCORE_COLUMNS:
            assert summary[key] == f"{percent[key].mean():.1f} ± {percent[key].std(ddof=1):.1f}"
        first = pd.DataFrame([_scores(variant, seed + 7) for seed in SEEDS]).iloc[:, 0].mean() * 100
        assert per_dataset.loc[0, variant] == pytest.approx(round(first, 1))
    assert len(ablation) == len(VARIANTS) * (len(SEEDS) + 1)
    for name in OUTPUT_FILES:
        assert (reports / name).stat().st_size > 0
        if name.endswith(".png"):
            with Image.open(reports / name) as image:
                assert image.format == "PNG" and min(image.size) > 0


def test_missing_aggregate_names_path(params: dict) -> None:
    path = Path(params["results_dir"]) / "eval" / "ssame" / "seed1" / "aggregate.json"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=str(path)):
        build(params)


def test_out_of_range_score_names_key(params: dict) -> None:
    path = Path(params["results_dir"]) / "eval" / "baseline" / "seed0" / "aggregate.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "vqa": 1.7}))
    with pytest.raises(ValueError, match=r"aggregate\.json: key 'vqa'.*1\.7"):
        build(params)


def test_missing_key_names_key(params: dict) -> None:
    path = Path(params["results_dir"]) / "eval" / "baseline" / "seed1" / "aggregate.json"
    record = json.loads(path.read_text())
    del record["per_dataset"]["ShapeVQA"]
    path.write_text(json.dumps(record))
    with pytest.raises(KeyError, match=r"seed1.*per_dataset\.ShapeVQA"):
        build(params)


def test_single_seed_std_is_zero(params: dict) -> None:
    build({**params, "train": {"variants": VARIANTS, "seeds": [0]}})
    ablation = pd.read_csv(Path(params["reports_dir"]) / "tables" / "ablation.csv", dtype=str)
    summary = ablation[ablation["seed"] == SUMMARY_LABEL]
    assert summary["overall"].str.endswith(" ± 0.0").all()


def test_saliency_quality_table_and_method_figures(params: dict) -> None:
    build(params)
    reports = Path(params["reports_dir"])
    table = pd.read_csv(reports / "tables" / "saliency_quality.csv")
    assert table["method"].tolist() == ["fusion", "uniform"]  # sorted by AUC
    fusion = table.iloc[0]
    assert fusion["auc"] == pytest.approx(0.8) and fusion["pairs"] == 5 and fusion["datasets"] == 2
    for method in ["uniform", "fusion"]:
        with Image.open(reports / "figures" / f"saliency_{method}.png") as image:
            assert image.size[0] > 0



def test_group_without_datasets_is_an_empty_cell(params: dict) -> None:
    path = Path(params["results_dir"]) / "eval" / VARIANTS[0] / f"seed{SEEDS[0]}" / "aggregate.json"
    record = json.loads(path.read_text())
    record["retrieval"] = None
    path.write_text(json.dumps(record))
    build(params)
    main = pd.read_csv(Path(params["reports_dir"]) / "tables" / "main.csv").set_index("method")
    other_seed = 100 * _scores(VARIANTS[0], SEEDS[1])["retrieval"]
    assert main.loc[VARIANTS[0], "retrieval"] == pytest.approx(other_seed, abs=0.05)
