"""The saliency stage on a very small MMEB-mini: shards, per-pair maps, quality, reruns, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from ssame import data, saliency
from ssame.config import Paths
from ssame.data.io import image_root, read_eval, write_unreadable
from ssame.saliency import SaliencyStore


@pytest.fixture(scope="module")
def small(tmp_path_factory, default_params) -> dict:
    params = copy.deepcopy(default_params)
    params["results_dir"] = str(tmp_path_factory.mktemp("saliency") / "results")
    params["data"]["mini"].update(train_rows_per_dataset=6, eval_queries_per_dataset=4)
    params["data"]["tokenizer"] = {"vocab_size": 300}
    params["saliency"]["quality"]["samples_per_dataset"] = 3
    data.build(params)
    saliency.build(params)
    return params


def _manifest(params: dict) -> dict:
    return json.loads((Paths.from_params(params).saliency / "manifest.json").read_text())


def test_every_image_has_a_map_and_named_subjects_get_pair_maps(small):
    paths = Paths.from_params(small)
    store = SaliencyStore(paths.saliency)
    frame = read_eval(paths.data, "MiniPosVQA")
    text, image = frame["qry_text"][0], frame["qry_img_path"][0]
    assert image in store
    pair, bottom_up = store.map(image, text=text), store.map(image)
    size = small["saliency"]["map_size"]
    assert pair.shape == (size, size) and not np.array_equal(pair, bottom_up)
    assert store.map(image, (6, 6), text).shape == (6, 6)
    subjects = [json.loads(line) for line in (paths.saliency / "shards" / "MiniPosVQA.subjects.jsonl").open()]
    assert any(s["subjects"] for s in subjects)
    counts = _manifest(small)["datasets"]["MiniPosVQA"]
    assert counts["pairs_with_subject"] > 0 and _manifest(small)["skipped_images"] == 0
    assert _manifest(small)["small_images"] == 0 and counts["small_images"] == 0


def test_quality_table_fusion_beats_center_bias(small):
    quality = pd.read_csv(Paths.from_params(small).saliency / "quality.csv")
    means = quality.groupby("method")["auc"].mean()
    assert {"fusion", "center_bias", "uniform", "fine_grained", "colour_terms"} <= set(means.index)
    assert means["uniform"] == pytest.approx(0.5)
    assert means["fusion"] > means["center_bias"]


def test_rerun_recomputes_only_changed_datasets(small):
    shards = Paths.from_params(small).saliency / "shards"
    before = {p.parent.name: p.stat().st_mtime_ns for p in shards.glob("*/shard.json")}
    eval_file = Paths.from_params(small).data / "eval" / "MiniPosVQA.parquet"
    frame = pd.read_parquet(eval_file)
    frame.loc[0, "qry_text"] = frame.loc[0, "qry_text"] + " "
    frame.to_parquet(eval_file)
    saliency.build(small)
    after = {p.parent.name: p.stat().st_mtime_ns for p in shards.glob("*/shard.json")}
    assert len(before) > 1 and [name for name in before if before[name] != after[name]] == ["MiniPosVQA"]


def test_images_the_data_stage_found_unreadable_are_skipped_and_counted(small):
    """The stage has no bad-input policy of its own: it skips exactly the images of results/data/unreadable.json
    (recomputing the shards they belong to) and stops, naming the file, on any other unreadable image."""
    paths = Paths.from_params(small)
    root = image_root(paths.data)
    frame = read_eval(paths.data, "MiniGround")
    listed, unlisted = (root / frame["qry_img_path"][i] for i in (1, 2))
    originals = {path: path.read_bytes() for path in (listed, unlisted)}
    rel = str(listed.relative_to(root))
    try:
        listed.write_bytes(b"not an image")
        write_unreadable(paths.data, {rel: "UnidentifiedImageError: cannot identify image file"}, {})
        saliency.build(small)  # same params: only the unreadable list changed
        manifest = _manifest(small)
        assert manifest["skipped_images"] == 1
        assert manifest["datasets"]["MiniGround"]["skipped"] == {rel: "UnidentifiedImageError: cannot identify "
                                                                      "image file"}
        store = SaliencyStore(paths.saliency)
        assert rel not in store and frame["qry_img_path"][0] in store
        unlisted.write_bytes(b"not an image either")
        params = copy.deepcopy(small)
        params["saliency"]["fusion_floor"] = 0.2  # new fingerprint: every shard is recomputed
        with pytest.raises(ValueError, match=f"unreadable or corrupt image: .*{unlisted.name}"):
            saliency.build(params)
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
        write_unreadable(paths.data, {}, {})


def test_images_smaller_than_the_map_are_upsampled_and_counted(small):
    params = copy.deepcopy(small)
    params["saliency"]["map_size"] = 200  # every MMEB-mini image is smaller (96 x 96)
    saliency.build(params)
    manifest = _manifest(params)
    assert manifest["small_images"] == sum(d["images"] for d in manifest["datasets"].values()) > 0
    store = SaliencyStore(Paths.from_params(params).saliency)
    image = read_eval(Paths.from_params(params).data, "MiniPosVQA")["qry_img_path"][0]
    sal = store.map(image)
    assert sal.shape == (200, 200) and 0 <= sal.min() < sal.max() <= 1
