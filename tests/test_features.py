"""The features stage: every benchmark image encoded once by the frozen tower, read back in place of the pixels."""

from __future__ import annotations

import copy
import json
import pickle
import re
import shutil

import pytest
import torch

from ssame.config import ParamsError, Paths, as_params, pretrained_backbone
from ssame.data.io import image_root
from ssame.features import benchmark_images
from ssame.features.store import RECORD, FeatureStore, FeatureStoreError, image_settings, tower_digest
from ssame.model import Embedder, InputBuilder
from ssame.model.backbone import load_backbone, square_side
from ssame.train.batches import training_rows


@pytest.fixture(scope="module")
def stack(small_built):
    """(params, pretrained backbone, tokenizer, processor, store) of the shared small run."""
    paths = Paths.from_params(small_built)
    backbone, tokenizer, processor = load_backbone(small_built, paths.data, pretrained_backbone(small_built))
    return small_built, backbone, tokenizer, processor, FeatureStore(paths.features)


def test_store_holds_every_training_and_evaluation_image(small_built, stack):
    store = stack[-1]
    rows = training_rows(Paths.from_params(small_built).data)
    train_images = {p for c in ("qry_image_path", "pos_image_path", "neg_image_path") for p in rows[c] if p}
    assert train_images and train_images <= set(store.images)
    assert store.images == benchmark_images(Paths.from_params(small_built).data)
    assert len(store.images) == len(set(store.images))


def test_features_are_the_towers_output_on_the_pixels(stack):
    params, backbone, tokenizer, processor, store = stack
    build = InputBuilder(tokenizer, processor, image_root(Paths.from_params(params).data), None,
                         image_side=square_side(params["model"]))
    images = store.images[:5] + store.images[-3:]
    pixels = build.preprocess(images)
    with torch.no_grad():
        expected = backbone.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"]).pooler_output
    cached = store.inputs(images)
    assert torch.equal(cached["image_grid_thw"], pixels["image_grid_thw"])
    assert torch.allclose(cached["image_features"], torch.cat(expected), atol=1e-5)


@pytest.mark.parametrize("variant", ["baseline", "ssame"])
def test_embedder_gives_the_same_embeddings_from_features_as_from_pixels(stack, variant):
    params, backbone, tokenizer, processor, store = stack
    embedder = Embedder(copy.deepcopy(backbone), params["variants"][variant], mrope=params["model"]["mrope"]).eval()
    root = image_root(Paths.from_params(params).data)
    texts = ["<|image_1|> Represent the given image.", "a red circle", "<|image_1|> what colour?"]
    images = [store.images[0], "", store.images[1]]
    from ssame.saliency.store import SaliencyStore

    saliency = SaliencyStore(Paths.from_params(params).saliency)
    outs = {}
    for name, features in (("pixels", None), ("features", store)):
        build = InputBuilder(tokenizer, processor, root, 64, image_side=square_side(params["model"]), features=features)
        batch = build(texts, images, saliency)
        assert ("image_features" in batch.inputs) == (features is not None)
        with torch.no_grad():
            outs[name] = embedder(batch, with_attention=True, with_hidden=True)
    assert torch.allclose(outs["pixels"].embeddings, outs["features"].embeddings, atol=1e-5)
    for a, b in zip(outs["pixels"].visual_attention, outs["features"].visual_attention, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_pickled_store_reopens_its_file(stack):
    """DataLoader workers receive the store pickled: without its file descriptor, opened again on first read."""
    store = stack[-1]
    expected = store.inputs(store.images[:3])
    copy_ = pickle.loads(pickle.dumps(store))
    assert copy_._fd is None
    got = copy_.inputs(store.images[:3])
    assert torch.equal(got["image_features"], expected["image_features"])


def test_a_batch_with_an_image_not_held_goes_through_the_tower(stack):
    store = stack[-1]
    hits, misses = store.hits, store.misses
    assert store.inputs([store.images[0], "not/held.png"]) is None
    assert store.inputs([store.images[0]]) is not None
    assert (store.hits - hits, store.misses - misses) == (1, 1)


def test_another_tower_or_other_image_settings_are_refused(stack):
    params, backbone, *_, store = stack
    settings = image_settings(params["model"])
    store.check(backbone.model.visual, settings)  # the tower it came from
    changed = copy.deepcopy(backbone.model.visual)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert tower_digest(changed) != store.tower
    with pytest.raises(FeatureStoreError, match="vision tower is not the one"):
        store.check(changed, settings)
    with pytest.raises(FeatureStoreError, match="image settings"):
        store.check(backbone.model.visual, {**settings, "pixels": 4096})


def test_a_broken_record_names_its_file(stack, tmp_path):
    folder = stack[-1].folder
    copy_dir = tmp_path / "features"
    copy_dir.mkdir()
    for name in ("features.safetensors", RECORD):
        (copy_dir / name).write_bytes((folder / name).read_bytes())
    record = json.loads((copy_dir / RECORD).read_text())
    (copy_dir / RECORD).write_text(json.dumps({**record, "images": record["images"][:-1]}))
    with pytest.raises(FeatureStoreError, match=re.escape(str(copy_dir / "features.safetensors"))):
        FeatureStore(copy_dir)
    (copy_dir / RECORD).write_text("{")
    with pytest.raises(FeatureStoreError, match=re.escape(RECORD)):
        FeatureStore(copy_dir)
    with pytest.raises(FileNotFoundError, match="ssame features"):
        FeatureStore(tmp_path / "absent")


def test_cached_features_need_one_frozen_tower(params):
    params["model"]["image_features"] = "cached"
    params["train"]["freeze_vision"] = False
    with pytest.raises(ParamsError, match="key 'freeze_vision' of train"):
        as_params(params)
    params["train"]["freeze_vision"] = True
    params["pretrain"]["steps"] = 0  # each seed's random init: a tower per seed
    with pytest.raises(ParamsError, match=r"pretrain\.steps"):
        as_params(params)
    params["model"]["image_features"] = "pixels"
    as_params(params)


def test_an_image_that_no_longer_decodes_names_its_dataset_row_and_column(small_built, tmp_path):
    from ssame import features
    from ssame.data import io

    params = copy.deepcopy(small_built)
    source, results = Paths.from_params(small_built).results, tmp_path / "results"
    for part in ("data", "pretrain"):
        shutil.copytree(source / part, results / part)
    params["results_dir"] = str(results)
    frame = io.read_eval(results / "data", "MiniAttrVQA")
    path = frame["qry_img_path"][2]
    (io.image_root(results / "data") / path).write_bytes(b"not an image")
    row = frame["qry_img_path"].tolist().index(path)
    with pytest.raises(io.DataFormatError, match=rf"dataset MiniAttrVQA \(eval\): row {row} column 'qry_img_path' "
                                                 rf"image '{path}' cannot be decoded: unreadable or corrupt image"):
        features.build(params)
