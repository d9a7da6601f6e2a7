"""MMEB aggregation shared by our runs, their bootstrap replicates and the published per-dataset scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssame.data.hub import mmeb_datasets
from ssame.evaluate.aggregate import (
    GROUPS,
    PUBLISHED_PER_DATASET,
    PUBLISHED_SUMMARY,
    aggregate,
    dataset_groups,
    group_means,
    published_aggregates,
    published_summary,
)


def _published() -> pd.DataFrame:
    return pd.read_csv(PUBLISHED_PER_DATASET)


def test_every_published_model_has_the_36_mmeb_datasets() -> None:
    table, names = _published(), set(mmeb_datasets().index)
    assert len(names) == 36
    for model, group in table.groupby("model"):
        assert len(group) == 36 and set(group["dataset"]) == names, model
    assert published_aggregates()["model"].tolist() == list(dict.fromkeys(table["model"]))


def test_published_aggregates_match_a_hand_computation() -> None:
    table = _published()
    model = table["model"].iloc[0]
    rows = table[table["model"] == model].merge(mmeb_datasets().reset_index(), on="dataset")
    score, task, split = rows["hit_at_1"].to_numpy(), rows["meta_task"].to_numpy(), rows["split"].to_numpy()
    expected = {"overall": np.sum(score) / 36, "ind": score[split == "IND"].sum() / np.sum(split == "IND"),
                "ood": score[split == "OOD"].sum() / np.sum(split == "OOD")}
    expected |= {t: score[task == t].sum() / np.sum(task == t) for t in ("classification", "vqa", "retrieval",
                                                                           "grounding")}
    got = published_aggregates().set_index("model").loc[model]
    assert list(got.index) == list(GROUPS)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_group_means_over_replicates_equal_aggregate_per_replicate() -> None:
    mmeb = mmeb_datasets().reset_index()
    names = mmeb["dataset"].tolist()[::3]  # a subset without every meta-task's full list
    values = np.random.default_rng(0).random((5, len(names)))
    means = group_means(values, dataset_groups(names, mmeb))
    for row in range(len(values)):
        expected = aggregate(dict(zip(names, values[row], strict=True)), mmeb)
        for key in GROUPS:
            assert (means[key] is None and expected[key] is None) or means[key][row] == pytest.approx(expected[key])


def test_published_errors_name_the_file_and_model(tmp_path: Path) -> None:
    table = _published()
    model = table["model"].iloc[0]
    path = tmp_path / "per_dataset.csv"
    table.drop(index=3).to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"per_dataset\.csv: model '{model}' lacks dataset\(s\) \['VOC2007'\]"):
        published_aggregates(path)
    table.assign(hit_at_1=table["hit_at_1"].where(table.index != 5, 74.3)).to_csv(path, index=False)
    dataset = table.loc[5, "dataset"]
    with pytest.raises(ValueError, match=rf"model '{model}' dataset '{dataset}' hit_at_1 must be .*74\.3"):
        published_aggregates(path)
    table.drop(columns="hit_at_1").to_csv(path, index=False)
    with pytest.raises(KeyError, match=r"per_dataset\.csv: missing column\(s\) \['hit_at_1'\]"):
        published_aggregates(path)


def test_published_summary_is_percent_and_checked(tmp_path: Path) -> None:
    summary = published_summary()
    assert list(summary.columns) == ["method", "backbone", *GROUPS, "source"]
    assert ((summary[list(GROUPS)] > 1) & (summary[list(GROUPS)] <= 100)).all().all()
    path = tmp_path / "summary.csv"
    pd.read_csv(PUBLISHED_SUMMARY).assign(vqa=lambda t: t["vqa"].where(t.index != 1, 150.0)).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"summary\.csv: line 3 \(VLM2Vec, Phi-3\.5-V\) key 'vqa'.*150"):
        published_summary(path)
