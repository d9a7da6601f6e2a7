"""Report stage: tables and figures built from small synthetic upstream files."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ssame.data.hub import mmeb_datasets
from ssame.evaluate.aggregate import PUBLISHED_SUMMARY, published_aggregates
from ssame.evaluate.outputs import write_predictions
from ssame.evaluate.stats import bootstrap_aggregates, paired_bootstrap_groups
from ssame.report import build, output_files
from ssame.report.tables import (
    INTERPRETABILITY,
    PER_DATASET_SOURCE,
    SCORE_COLUMNS,
    SUMMARY_LABEL,
    ablation_delta_table,
    benchmark_label,
    ci_table,
    significance_table,
)
from ssame.saliency.store import write_shard, write_subjects

VARIANTS = ["baseline", "ssame"]
SEEDS = [0, 1]
DATASETS = {
    "ShapeCls": ("classification", "IND"),
    "ShapeVQA": ("vqa", "OOD"),
    "TextRet": ("retrieval", "IND"),
}
IMAGE_SIZE, MAP_SIZE = 24, 8
QUERIES = 40  # rows of each predictions file (independent of the small eval parquets the figures read)
BOOTSTRAP = {"samples": 200, "seed": 3}


def _scores(variant: str, seed: int) -> dict[str, float]:
    rng = np.random.default_rng([VARIANTS.index(variant), seed])
    values = rng.uniform(0.1, 0.9, len(SCORE_COLUMNS))
    return {key: float(value) for key, value in zip(SCORE_COLUMNS, values, strict=True)}


def _figures(variant: str, seed: int) -> dict[str, float | None]:
    rng = np.random.default_rng([VARIANTS.index(variant), seed, 99])
    return dict(zip(INTERPRETABILITY, [*rng.uniform(0.0, 1.0, 3).tolist(), None], strict=True))


def _ranks(variant: str, seed: int, dataset: str) -> np.ndarray:
    """1-based ranks of one predictions file; the ssame variant ranks the ground truth first more often."""
    rng = np.random.default_rng([VARIANTS.index(variant), seed, list(DATASETS).index(dataset)])
    return np.where(rng.random(QUERIES) < 0.4 + 0.3 * VARIANTS.index(variant), 1, rng.integers(2, 5, QUERIES))


def _write_inputs(results: Path) -> None:
    for variant in VARIANTS:
        for seed in SEEDS:
            per_dataset = dict(zip(DATASETS, _scores(variant, seed + 7).values(), strict=False))
            record = {"variant": variant, "seed": seed, **_scores(variant, seed), "per_dataset": per_dataset,
                      "interpretability": _figures(variant, seed)}
            path = results / "eval" / variant / f"seed{seed}" / "aggregate.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(record))
            maps = {name: [{"text": "q", "image": f"{name}/q0.png", "grid": [2, 2],
                            "attention": np.random.default_rng([seed, 6]).random((2, 2)).tolist()}]
                    for name in DATASETS if name != "TextRet"}
            (path.parent / "attention.json").write_text(json.dumps(maps))
            history = results / "train" / variant / f"seed{seed}" / "history.csv"
            history.parent.mkdir(parents=True)
            loss = np.linspace(2.0, 1.0, 12) + np.random.default_rng([seed, 5]).normal(0, 0.05, 12)
            pd.DataFrame({"step": range(1, 13), "loss_nce": loss, "loss": loss + 0.1}).to_csv(history, index=False)
            for name in DATASETS:
                ranks = _ranks(variant, seed, name).tolist()
                write_predictions(path.parent / "predictions" / f"{name}.jsonl", list(range(QUERIES)), ranks,
                                  [[0]] * QUERIES)
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
        write_shard(shards, name, dict(zip(images, maps, strict=True)), {}, MAP_SIZE, {})
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
def params(tmp_path: Path, default_params) -> dict:
    _write_inputs(tmp_path / "results")
    params = copy.deepcopy(default_params)
    params.update(results_dir=str(tmp_path / "results"), reports_dir=str(tmp_path / "reports"))
    params["train"].update(variants=VARIANTS, seeds=SEEDS)
    params["evaluate"]["bootstrap"] = BOOTSTRAP
    return params


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
    for name in output_files(seed_systems=False):
        assert (reports / name).stat().st_size > 0
        if name.endswith(".png"):
            with Image.open(reports / name) as image:
                assert image.format == "PNG" and min(image.size) > 0
        if name.endswith(".pdf"):
            assert (reports / name).read_bytes().startswith(b"%PDF")
    latex = (reports / "tables" / "main.tex").read_text()
    assert latex.count("\\toprule") == latex.count("\\midrule") == latex.count("\\bottomrule") == 1
    for key in SCORE_COLUMNS:  # the best variant of every column in bold, and only it
        best = main[key].max()
        assert f"\\textbf{{{best:.1f}}}" in latex
    assert latex.count("\\textbf") == sum((main[k] == main[k].max()).sum() for k in SCORE_COLUMNS)
    assert "\nbaseline & overall & " in (reports / "tables" / "ablation_delta.tex").read_text()


def test_rebuilt_report_has_the_same_bytes(params: dict) -> None:
    """The committed reports/ must not churn: the same inputs give byte-identical tables and figures (no random
    element ids in HTML, no creation date in PDF)."""
    build(params)
    reports = Path(params["reports_dir"])
    first = {name: (reports / name).read_bytes() for name in output_files(seed_systems=False)}
    build(params)
    assert [name for name in first if (reports / name).read_bytes() != first[name]] == []


def test_seed_systems_report_adds_them_in_its_own_folder(params: dict) -> None:
    """Target all reports train.variants; target seed_systems reports them with train.seed_systems, under
    reports_dir/seed_systems, without the saliency stage's own tables and figures."""
    params = {**params, "train": {**params["train"], "variants": VARIANTS[:1], "seed_systems": VARIANTS[1:]}}
    build(params)
    build(params, seed_systems=True)
    reports = Path(params["reports_dir"])
    assert pd.read_csv(reports / "tables" / "main.csv")["method"].tolist() == VARIANTS[:1]
    both = reports / "seed_systems"
    assert pd.read_csv(both / "tables" / "main.csv")["method"].tolist() == VARIANTS
    assert sorted(p.relative_to(both).as_posix() for p in both.rglob("*.*")) == sorted(output_files(True))
    assert not (both / "tables" / "saliency_quality.csv").exists()
    assert (reports / "tables" / "saliency_quality.csv").is_file()


def test_attention_maps_are_seed_means_of_the_same_queries(params: dict) -> None:
    from ssame.report.figures import read_attention

    results = Path(params["results_dir"])
    maps = read_attention(results, "ssame", SEEDS)
    expected = np.mean([np.random.default_rng([seed, 6]).random((2, 2)) for seed in SEEDS], axis=0)
    np.testing.assert_allclose(maps[("ShapeCls", "q", "ShapeCls/q0.png")], expected)
    path = results / "eval" / "ssame" / "seed1" / "attention.json"
    path.write_text(json.dumps({"ShapeCls": []}))  # a query one seed lacks has no seed mean: left out
    assert read_attention(results, "ssame", SEEDS) == {}


def test_ablation_delta_holm_adjusted_within_each_aggregate() -> None:
    """Deltas point from the full model to each variant (the sign of `significance` flipped where needed, CIs
    mirrored); p-values are Holm-adjusted over the variants of one aggregate."""
    significance = pd.DataFrame([
        {"a": "ssame", "b": "baseline", "aggregate": "overall", "delta": 5.0, "ci95_lo": 4.0, "ci95_hi": 6.0,
         "p_value": 0.01},
        {"a": "no-attn", "b": "ssame", "aggregate": "overall", "delta": -0.4, "ci95_lo": -1.6, "ci95_hi": 0.7,
         "p_value": 0.04},
        {"a": "no-attn", "b": "baseline", "aggregate": "overall", "delta": 4.6, "ci95_lo": 3.0, "ci95_hi": 6.0,
         "p_value": 0.001},
        {"a": "ssame", "b": "baseline", "aggregate": "classification", "delta": 1.0, "ci95_lo": -1.0,
         "ci95_hi": 3.0, "p_value": 0.3}])
    table = ablation_delta_table(significance, "ssame")
    assert table[["method", "aggregate"]].values.tolist() == [
        ["baseline", "overall"], ["no-attn", "overall"], ["baseline", "classification"]]
    assert table["delta"].tolist() == [-5.0, -0.4, -1.0]
    assert table[["ci95_lo", "ci95_hi"]].values.tolist() == [[-6.0, -4.0], [-1.6, 0.7], [-3.0, 1.0]]
    # Holm over {0.01, 0.04}: 2 x 0.01 = 0.02, then max(0.02, 1 x 0.04) = 0.04; a lone test keeps its p
    assert table["p_holm"].tolist() == pytest.approx([0.02, 0.04, 0.3])
    assert ablation_delta_table(significance, "full").empty  # no such variant: no rows, the same columns


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
    build({**params, "train": {**params["train"], "variants": VARIANTS, "seeds": [0]}})
    ablation = pd.read_csv(Path(params["reports_dir"]) / "tables" / "ablation.csv", dtype=str)
    summary = ablation[ablation["seed"] == SUMMARY_LABEL]
    assert summary["overall"].str.endswith(" ± 0.0").all()
    ci = pd.read_csv(Path(params["reports_dir"]) / "tables" / "ci.csv").dropna(subset=["hit_at_1"])
    significance = pd.read_csv(Path(params["reports_dir"]) / "tables" / "significance.csv")
    assert (ci["seed_sd"] == 0).all() and (ci["seed_min"] == ci["seed_max"]).all()
    assert (significance["seed_delta_sd"] == 0).all()
    assert (significance["seed_delta_min"] == significance["seed_delta_max"]).all()


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



def test_saliency_overlays_read_only_the_maps_they_draw(params: dict, monkeypatch) -> None:
    """The overlay figure opens the lazy store and reads one map per drawn row, however many maps the shards hold."""
    from ssame.report.figures import saliency_overlays
    from ssame.saliency import store

    results = Path(params["results_dir"])
    shards = results / "saliency" / "shards"
    extra = {f"ShapeCls/extra{i}.png": np.zeros((MAP_SIZE, MAP_SIZE)) for i in range(500)}
    write_shard(shards, "Extra", extra, {}, MAP_SIZE, {})
    manifest = json.loads((results / "saliency" / "manifest.json").read_text())
    (results / "saliency" / "manifest.json").write_text(json.dumps({**manifest, "shards": [*manifest["shards"],
                                                                                          "Extra"]}))
    reads = []
    original = store._Table.map
    monkeypatch.setattr(store._Table, "map", lambda table, row: reads.append(row) or original(table, row))
    saliency_overlays(results, list(DATASETS), Path(params["reports_dir"]) / "overlays.png")
    drawn = [name for name in DATASETS if name != "TextRet"]  # the text-only dataset has no query image
    assert len(reads) == len(drawn)


def test_group_without_datasets_is_an_empty_cell(params: dict) -> None:
    path = Path(params["results_dir"]) / "eval" / VARIANTS[0] / f"seed{SEEDS[0]}" / "aggregate.json"
    record = json.loads(path.read_text())
    record["retrieval"] = None
    path.write_text(json.dumps(record))
    build(params)
    main = pd.read_csv(Path(params["reports_dir"]) / "tables" / "main.csv").set_index("method")
    other_seed = 100 * _scores(VARIANTS[0], SEEDS[1])["retrieval"]
    assert main.loc[VARIANTS[0], "retrieval"] == pytest.approx(other_seed, abs=0.05)


def _seed_mean_hits(variant: str) -> dict[str, np.ndarray]:
    """Per dataset: the per-query hit averaged over SEEDS, from the ranks written by the fixture."""
    return {name: np.mean([_ranks(variant, seed, name) == 1 for seed in SEEDS], axis=0) for name in DATASETS}


def _by_hand(scores: dict[str, float]) -> dict[str, float]:
    """The aggregates of DATASETS' per-dataset scores, as unweighted means written out."""
    def mean(names: list[str]) -> float:
        return float(np.mean([scores[n] for n in names])) if names else float("nan")

    result = {"overall": mean(list(DATASETS))}
    result |= {task: mean([n for n, (t, _) in DATASETS.items() if t == task])
               for task in ("classification", "vqa", "retrieval", "grounding")}
    splits = {split.lower(): mean([n for n, (_, s) in DATASETS.items() if s == split]) for split in ("IND", "OOD")}
    return result | splits


def _manifest() -> pd.DataFrame:
    return pd.DataFrame([(n, t, s) for n, (t, s) in DATASETS.items()], columns=["dataset", "meta_task", "split"])


def test_ci_table_uses_seed_mean_hits(params: dict) -> None:
    build(params)
    table = pd.read_csv(Path(params["reports_dir"]) / "tables" / "ci.csv")
    assert list(table.columns) == ["method", "aggregate", "hit_at_1", "ci95_lo", "ci95_hi", "seed_sd", "seed_min",
                                   "seed_max"]
    assert len(table) == len(VARIANTS) * len(SCORE_COLUMNS)
    for variant in VARIANTS:
        hits = _seed_mean_hits(variant)
        point = _by_hand({name: values.mean() for name, values in hits.items()})
        ci = bootstrap_aggregates(hits, _manifest(), BOOTSTRAP["samples"], BOOTSTRAP["seed"])
        rows = table[table["method"] == variant].set_index("aggregate")
        for key in SCORE_COLUMNS:
            if ci[key] is None:  # grounding: no dataset, though the fixture's aggregate files give it a score
                assert rows.loc[key, ["hit_at_1", "ci95_lo", "ci95_hi"]].isna().all() and np.isnan(point[key])
                assert rows.loc[key, ["seed_sd", "seed_min", "seed_max"]].isna().all()
                continue
            per_seed = [100 * _scores(variant, seed)[key] for seed in SEEDS]
            assert rows.loc[key, "seed_sd"] == pytest.approx(np.std(per_seed, ddof=1))
            assert rows.loc[key, ["seed_min", "seed_max"]].tolist() == pytest.approx([min(per_seed), max(per_seed)])
            assert rows.loc[key, "hit_at_1"] == pytest.approx(100 * point[key])
            assert rows.loc[key, ["ci95_lo", "ci95_hi"]].tolist() == pytest.approx([100 * v for v in ci[key]])
            assert rows.loc[key, "ci95_lo"] <= rows.loc[key, "hit_at_1"] <= rows.loc[key, "ci95_hi"]


def test_significance_table_pairs_every_variant_once(params: dict) -> None:
    build(params)
    table = pd.read_csv(Path(params["reports_dir"]) / "tables" / "significance.csv")
    assert list(table.columns) == ["a", "b", "aggregate", "delta", "ci95_lo", "ci95_hi", "p_value", "seed_delta_sd",
                                   "seed_delta_min", "seed_delta_max"]
    a, b = VARIANTS[1], VARIANTS[0]
    assert set(zip(table["a"], table["b"], strict=True)) == {(a, b)}
    assert table["aggregate"].tolist() == [k for k in SCORE_COLUMNS if k != "grounding"]  # no grounding dataset
    hits_a, hits_b = _seed_mean_hits(a), _seed_mean_hits(b)
    expected = paired_bootstrap_groups(hits_a, hits_b, _manifest(), BOOTSTRAP["samples"], BOOTSTRAP["seed"])
    delta = _by_hand({name: hits_a[name].mean() - hits_b[name].mean() for name in DATASETS})
    for row in table.itertuples():
        assert row.delta == pytest.approx(100 * delta[row.aggregate])
        assert [row.ci95_lo, row.ci95_hi] == pytest.approx([100 * v for v in expected[row.aggregate]["ci95"]])
        assert row.p_value == pytest.approx(expected[row.aggregate]["p_value"])
        assert 1 / (BOOTSTRAP["samples"] + 1) <= row.p_value <= 1
        per_seed = [100 * (_scores(a, seed)[row.aggregate] - _scores(b, seed)[row.aggregate]) for seed in SEEDS]
        assert row.seed_delta_sd == pytest.approx(np.std(per_seed, ddof=1))
        assert [row.seed_delta_min, row.seed_delta_max] == pytest.approx([min(per_seed), max(per_seed)])


def test_identical_variants_are_not_significant(params: dict) -> None:
    results = Path(params["results_dir"]) / "eval"
    shutil.copytree(results / VARIANTS[0], results / "copy")
    shutil.copytree(results.parent / "train" / VARIANTS[0], results.parent / "train" / "copy")
    for path in (results / "copy").glob("seed*/aggregate.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "variant": "copy"}))
    build({**params, "train": {**params["train"], "variants": [VARIANTS[0], "copy"], "seeds": SEEDS},
           "variants": {**params["variants"], "copy": params["variants"][VARIANTS[0]]}})
    table = pd.read_csv(Path(params["reports_dir"]) / "tables" / "significance.csv")
    assert (table["delta"] == 0).all() and (table["p_value"] == 1).all()
    assert pd.read_csv(Path(params["reports_dir"]) / "tables" / "ablation_delta.csv").empty  # no ssame variant
    assert (table[["seed_delta_sd", "seed_delta_min", "seed_delta_max"]] == 0).all(axis=None)


def _score_frame(rows: list[tuple[str, int, dict[str, float]]]) -> pd.DataFrame:
    """`load_aggregates`' scores from (variant, seed, fractions) rows; a group not given scores 0.5."""
    return pd.DataFrame([{"variant": variant, "seed": seed, **dict.fromkeys(SCORE_COLUMNS, 0.5), **values}
                         for variant, seed, values in rows])


def _unit_hits(variants: list[str]) -> dict[str, dict[str, np.ndarray]]:
    return {variant: {name: np.array([1.0, 0.0, 0.5, 1.0]) for name in DATASETS} for variant in variants}


def test_ci_table_seed_spread_by_hand() -> None:
    nan = float("nan")
    scores = _score_frame([("baseline", 2, {"overall": 0.8, "grounding": nan}),
                           ("baseline", 0, {"overall": 0.5, "grounding": nan}),
                           ("baseline", 1, {"overall": 0.6, "grounding": nan}),
                           ("ssame", 0, {"overall": 0.7, "grounding": 0.3})])
    table = ci_table(_unit_hits(VARIANTS), scores, _manifest(), 50, 0).set_index(["method", "aggregate"])
    spread = ["seed_sd", "seed_min", "seed_max"]
    # 50, 60, 80: mean 190/3, squared deviations sum to 1400/3, over n - 1 = 2
    assert table.loc[("baseline", "overall"), spread].tolist() == pytest.approx([np.sqrt(700 / 3), 50, 80])
    assert table.loc[("baseline", "vqa"), spread].tolist() == pytest.approx([0, 50, 50])
    assert table.loc[("ssame", "overall"), spread].tolist() == pytest.approx([0, 70, 70])  # one seed: sd 0.0
    assert table.loc[("ssame", "overall"), "seed_sd"] == 0.0
    for variant in VARIANTS:  # no grounding dataset in the manifest: NaN, whatever the scores say
        assert table.loc[(variant, "grounding"), spread].isna().all()


def test_significance_table_seed_deltas_pair_seeds_by_hand() -> None:
    nan = float("nan")
    rows = [("baseline", 1, {"overall": 0.2, "retrieval": nan}), ("baseline", 0, {"overall": 0.4, "retrieval": nan}),
            ("ssame", 0, {"overall": 0.5, "retrieval": nan}), ("ssame", 1, {"overall": 0.7, "retrieval": nan})]
    columns = ["seed_delta_sd", "seed_delta_min", "seed_delta_max"]
    table = significance_table(_unit_hits(VARIANTS), _score_frame(rows), _manifest(), 50, 0).set_index("aggregate")
    assert (table["a"] == "ssame").all() and (table["b"] == "baseline").all()
    # seed 0: 50 − 40 = 10, seed 1: 70 − 20 = 50 (by position it would be 30 and 30)
    assert table.loc["overall", columns].tolist() == pytest.approx([np.sqrt(800), 10, 50])
    assert table.loc["vqa", columns].tolist() == pytest.approx([0, 0, 0])
    assert table.loc["retrieval", columns].isna().all()  # the files report no retrieval score
    one_seed = [row for row in rows if row[1] == 0]
    table = significance_table(_unit_hits(VARIANTS), _score_frame(one_seed), _manifest(), 50, 0)
    assert table.set_index("aggregate").loc["overall", columns].tolist() == pytest.approx([0, 10, 10])
    assert table.set_index("aggregate").loc["overall", "seed_delta_sd"] == 0.0


def test_seed_spread_needs_every_variant_and_matching_seeds() -> None:
    scores = _score_frame([("baseline", 0, {}), ("ssame", 1, {})])
    with pytest.raises(ValueError, match=r"seeds differ.*'ssame' has \[1\], 'baseline' \[0\]"):
        significance_table(_unit_hits(VARIANTS), scores, _manifest(), 50, 0)
    with pytest.raises(KeyError, match="no per-seed scores for variant 'other'"):
        ci_table(_unit_hits(["other"]), scores, _manifest(), 50, 0)


def test_published_table_rows_and_benchmark(params: dict) -> None:
    build(params)
    table = pd.read_csv(Path(params["reports_dir"]) / "tables" / "published.csv", keep_default_na=False,
                        na_values=[""])
    assert list(table.columns) == ["benchmark", "source", "method", "backbone", *SCORE_COLUMNS]
    from_files = table[table["source"] == PER_DATASET_SOURCE].set_index("method")
    published = published_aggregates().set_index("model")
    assert sorted(from_files.index) == sorted(published.index) and (from_files["benchmark"] == "MMEB").all()
    assert from_files[SCORE_COLUMNS].to_numpy() == pytest.approx(100 * published.loc[from_files.index].to_numpy())
    summary = pd.read_csv(PUBLISHED_SUMMARY)
    papers = table.iloc[len(from_files):len(from_files) + len(summary)].reset_index(drop=True)
    pd.testing.assert_frame_equal(papers[summary.columns], summary, check_dtype=False)
    ours = table.iloc[len(from_files) + len(summary):].set_index("method")
    assert list(ours.index) == VARIANTS and (ours["benchmark"] == "MMEB-mini").all()
    assert (ours["backbone"] == "tiny").all()
    for variant in VARIANTS:
        per_dataset = pd.DataFrame([_scores(variant, seed + 7) for seed in SEEDS]).iloc[:, :len(DATASETS)].mean()
        expected = _by_hand(dict(zip(DATASETS, per_dataset, strict=True)))
        for key in SCORE_COLUMNS:
            assert ours.loc[variant, key] == pytest.approx(100 * expected[key], nan_ok=True)


def test_benchmark_label() -> None:
    mmeb = mmeb_datasets().index.tolist()
    assert benchmark_label(mmeb) == "MMEB"
    assert benchmark_label(mmeb[:5]) == f"MMEB subset (5 of {len(mmeb)})"
    assert benchmark_label(list(DATASETS)) == "MMEB-mini"


def test_predictions_with_different_query_counts_name_the_files(params: dict) -> None:
    path = Path(params["results_dir"]) / "eval" / VARIANTS[1] / "seed1" / "predictions" / "ShapeVQA.jsonl"
    write_predictions(path, [0, 1], [1, 2], [[0], [1]])
    with pytest.raises(ValueError, match=r"'ShapeVQA'.*seeds disagree.*seed1/predictions/ShapeVQA\.jsonl': 2"):
        build(params)



def test_interpretability_table_is_mean_and_std_over_seeds(params: dict) -> None:
    build(params)
    table = pd.read_csv(Path(params["reports_dir"]) / "tables" / "interpretability.csv").set_index("method")
    for variant in VARIANTS:
        values = pd.DataFrame([_figures(variant, seed) for seed in SEEDS]).astype(float) * 100
        for key in INTERPRETABILITY[:3]:
            assert table.loc[variant, key] == pytest.approx(values[key].mean())
            assert table.loc[variant, f"{key}_std"] == pytest.approx(values[key].std(ddof=1))
        assert np.isnan(table.loc[variant, "pointing_chance"])  # null in every seed: no masks


def test_aggregate_without_interpretability_names_the_key(params: dict) -> None:
    path = Path(params["results_dir"]) / "eval" / "ssame" / "seed1" / "aggregate.json"
    record = json.loads(path.read_text())
    del record["interpretability"]["mask_share"]
    path.write_text(json.dumps(record))
    with pytest.raises(KeyError, match=r"interpretability\.mask_share"):
        build(params)


def test_tables_label_variants_whose_negatives_an_offline_judge_scored(default_params) -> None:
    from ssame.config import as_params, variant_labels
    from ssame.report import labelled

    labels = variant_labels(as_params(default_params))
    assert labels["unime-v2"] == "unime-v2 (attribute judge)" and labels["unime-v2-infonce"].endswith("judge)")
    assert labels["ssame"] == "ssame" and labels["mire"] == "mire"
    lmm = copy.deepcopy(default_params)
    lmm["mine"]["judge"] = {"backend": "lmm", "model": "./some/judge"}
    assert variant_labels(as_params(lmm))["unime-v2"] == "unime-v2"
    table = pd.DataFrame({"method": ["unime-v2", "ssame"], "a": ["ssame", "unime-v2"], "unime-v2": [1.0, 2.0]})
    out = labelled(table, labels)
    assert out["method"].tolist() == ["unime-v2 (attribute judge)", "ssame"]
    assert out["a"].tolist() == ["ssame", "unime-v2 (attribute judge)"]
    assert "unime-v2 (attribute judge)" in out.columns
