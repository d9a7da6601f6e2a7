"""MMEB-mini: determinism, format conformance, OOD hold-out and the distractor traps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssame.config import ParamsError, as_params, load_params
from ssame.data import build, io
from ssame.data.mini import DATASETS, dataset_scenes, num_candidates
from ssame.data.mini.scene import HELD_OUT

MINI = {
    "seed": 7,
    "image_size": 96,
    "train_rows_per_dataset": 16,
    "eval_queries_per_dataset": 8,
    "retrieval_candidates": 16,
    "grounding_candidates": 6,
    "vqa_candidates": 8,
}


def _params(root, **mini) -> dict:
    params = load_params(Path(__file__).resolve().parents[1] / "params" / "default.yaml").to_dict()
    params["results_dir"] = str(root)
    params["data"] = {"source": "mini", "mini": {**MINI, **mini}, "tokenizer": {"vocab_size": 300}}
    return params


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    build(_params(root))
    return root / "data"


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_seed_sensitive(tmp_path, data_dir):
    build(_params(tmp_path / "same"))
    assert _files(tmp_path / "same" / "data") == _files(data_dir)
    build(_params(tmp_path / "other", seed=8))
    other, ref = _files(tmp_path / "other" / "data"), _files(data_dir)
    parquets = [k for k in ref if k.suffix == ".parquet"]
    assert all(other[k] != ref[k] for k in parquets)
    pngs = [k for k in ref if k.parts[0] == "images"]
    assert sum(other.get(k) != ref[k] for k in pngs) > 0.9 * len(pngs)


def test_manifest_and_meta_tasks(data_dir):
    manifest = io.read_manifest(data_dir)
    assert list(manifest["dataset"]) == [s.name for s in DATASETS]
    for split in io.SPLITS:
        assert set(manifest.loc[manifest["split"] == split, "meta_task"]) == set(io.META_TASKS)
    assert (manifest.loc[manifest["split"] == "OOD", "train_rows"] == 0).all()
    assert (manifest.loc[manifest["split"] == "IND", "train_rows"] == 16).all()
    assert json.loads((data_dir / "lexicon.json").read_text())["shapes"][0] == "circle"


def test_eval_format(data_dir):
    root = io.image_root(data_dir)
    for rec in io.read_manifest(data_dir).itertuples():
        df = io.read_eval(data_dir, rec.dataset)
        assert len(df) == rec.num_queries
        for row in df.itertuples():
            assert len(row.tgt_text) == len(row.tgt_img_path) == rec.num_candidates
            pairs = list(zip(row.tgt_text, row.tgt_img_path, strict=True))
            assert pairs[0] not in pairs[1:], (rec.dataset, row.Index)
            assert len(set(pairs)) == len(pairs)
            for path in [row.qry_img_path, *row.tgt_img_path]:
                assert not path or (root / path).is_file()
            has_image = bool(row.qry_img_path) or any(row.tgt_img_path)
            assert has_image and (io.IMAGE_TOKEN in row.qry_text) == bool(row.qry_img_path)


def test_train_format(data_dir):
    root = io.image_root(data_dir)
    for spec in DATASETS:
        if spec.split == "OOD":
            assert not io.train_path(data_dir, spec.name).exists()
            continue
        df = io.read_train(data_dir, spec.name)
        assert len(df) == 16
        for row in df.itertuples():
            assert (row.pos_text, row.pos_image_path) != (row.neg_text, row.neg_image_path)
            for path in (row.qry_image_path, row.pos_image_path, row.neg_image_path):
                assert not path or (root / path).is_file()


def test_masks(data_dir):
    df = io.read_eval(data_dir, "MiniShapeCls")
    for path in df["qry_img_path"]:
        mask = np.asarray(Image.open(io.mask_path(data_dir, path)))
        image = Image.open(io.image_root(data_dir) / path)
        assert mask.shape == (image.height, image.width) and set(np.unique(mask)) == {0, 255}
        ys, xs = np.nonzero(mask)
        assert 0 < len(ys) < mask.size / 4
        assert xs.min() > 0 and ys.min() > 0 and xs.max() < image.width - 1 and ys.max() < image.height - 1


def test_ood_combinations_held_out():
    cfg = {**MINI, "train_rows_per_dataset": 200, "eval_queries_per_dataset": 50}
    for spec in DATASETS:
        splits = ("train", "eval") if spec.split == "IND" else ("eval",)
        for split in splits:
            scenes = dataset_scenes(cfg, spec, split)
            combos = {o.combo for s in scenes for o in (s.subject, *s.distractors)}
            if spec.split == "IND":
                assert not combos & HELD_OUT, spec.name
            elif spec.name == "MiniNovelShapeCls":
                assert {s.subject.combo for s in scenes} <= HELD_OUT


def test_held_out_never_mentioned_in_training_text(data_dir):
    texts = " ".join(
        " ".join(io.read_train(data_dir, s.name).to_numpy().ravel()) for s in DATASETS if s.split == "IND"
    )
    for shape, colour in HELD_OUT:
        assert f"{colour} {shape}" not in texts


def test_distractors_share_subject_attributes():
    for spec in DATASETS:
        for scene in dataset_scenes(MINI, spec, "eval"):
            subj = scene.subject
            assert 2 <= len(scene.distractors) <= 7
            assert any(d.colour == subj.colour and d.shape != subj.shape for d in scene.distractors)
            assert any(d.shape == subj.shape and d.colour != subj.colour for d in scene.distractors)
            assert all(d.combo != subj.combo and d.r < subj.r for d in scene.distractors)


def test_num_candidates_and_config_errors():
    assert {num_candidates(s, MINI) for s in DATASETS if s.meta_task == "retrieval"} == {16}
    params = _params("unused")
    del params["data"]["mini"]["vqa_candidates"]
    with pytest.raises(ParamsError, match=r"data\.mini.*vqa_candidates"):
        as_params(params)
    with pytest.raises(ParamsError, match=r"data\.mini\.image_size"):
        as_params(_params("unused", image_size=0))
    with pytest.raises(ParamsError, match=r"data\.mini\.vqa_candidates"):  # more than the 19 attribute words
        as_params(_params("unused", vqa_candidates=20))


def test_bad_source(tmp_path):
    params = _params(tmp_path)
    params["data"]["source"] = "web"
    with pytest.raises(ParamsError, match=r"data\.source"):
        build(params)


@pytest.fixture(scope="module")
def blind_data(tmp_path_factory):
    """More eval queries, so a hit rate can be compared with chance."""
    root = tmp_path_factory.mktemp("blind")
    build(_params(root, train_rows_per_dataset=2, eval_queries_per_dataset=150))
    return root / "data"


def test_an_image_blind_model_sits_at_chance(blind_data):
    """A scorer that ignores the image and ranks text candidates by a fixed preference for words must get about
    1/candidates. (MiniI2T's old near-miss negatives, each the ground truth with one attribute changed, put the ground
    truth at the centre of its candidates: such a scorer got 0.9 % there against 6.25 % chance.)"""
    manifest = io.read_manifest(blind_data)
    checked = 0
    for row in manifest.itertuples():
        frame = io.read_eval(blind_data, row.dataset)
        if any(path for paths in frame["tgt_img_path"] for path in paths):
            continue  # image candidates: the scorer has nothing to rank by
        words = sorted({w for texts in frame["tgt_text"] for t in texts for w in t.split()})
        hits = []
        for prior in range(40):
            pref = dict(zip(words, np.random.default_rng(prior).normal(size=len(words)), strict=True))
            scores = [[sum(pref[w] for w in t.split()) for t in texts] for texts in frame["tgt_text"]]
            hits.append(np.mean([np.argmax(s) == 0 for s in scores]))
        blind, chance = float(np.mean(hits)), 1 / row.num_candidates
        assert 0.5 * chance < blind < 2 * chance, f"{row.dataset}: blind hit@1 {blind:.3f}, chance {chance:.3f}"
        checked += 1
    assert checked >= 6  # every text-candidate dataset: classification, VQA, i2t
