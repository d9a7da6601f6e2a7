"""Shared fixtures: the repo's params and a tiny offline Qwen2-VL stack."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssame.config import load_params
from ssame.data.tokenizer import train_tokenizer
from ssame.model.backbone import image_processor_for, tiny_config

REPO = Path(__file__).resolve().parents[1]
# Tests keep their runs in their own SQLite stores, never in a tracking server the shell points at.
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _no_tracking_uri_leak():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; keep one test's store from reaching later subprocesses."""
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def default_params() -> dict:
    return load_params(REPO / "params" / "default.yaml")


@pytest.fixture
def params(default_params) -> dict:
    return copy.deepcopy(default_params)


@pytest.fixture(scope="session")
def tokenizer():
    texts = ["a red circle on the left", "what colour is the square?", "Represent the given image."] * 3
    return train_tokenizer(texts, 320)


@pytest.fixture(scope="session")
def tiny_stack(default_params, tokenizer):
    """(config, image processor) of the default tiny backbone."""
    model = default_params["model"]
    return tiny_config(model["tiny"], tokenizer, "eager"), image_processor_for(default_params)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Three 96 x 96 PNGs: a 16-pixel red square on flat grey, at different places."""
    for i in range(3):
        pixels = np.full((96, 96, 3), 100, dtype=np.uint8)
        pixels[16 + 24 * i:32 + 24 * i, 24:40] = (220, 20, 20)
        Image.fromarray(pixels).save(tmp_path / f"img{i}.png")
    return tmp_path


@pytest.fixture(scope="session")
def small_built(tmp_path_factory, default_params) -> dict:
    """Params of a very small MMEB-mini whose data, pretrain, features and saliency stages have run (shared;
    deep-copy to modify)."""
    from ssame import data, features, pretrain, saliency

    params = copy.deepcopy(default_params)
    root = tmp_path_factory.mktemp("small")
    params["results_dir"] = str(root / "results")
    params["tracking"]["mlflow_db"] = str(root / "mlflow" / "mlflow.db")
    params["data"]["mini"].update(train_rows_per_dataset=8, eval_queries_per_dataset=4)
    params["data"]["tokenizer"]["vocab_size"] = 320
    params["train"].update(steps=3, batch_size=8, warmup_steps=1, checkpoint_every=None)
    params["pretrain"].update(steps=2, scenes=4, batch_size=4, warmup_steps=1, probe_scenes=2)
    data.build(params)
    pretrain.build(params)
    features.build(params)
    saliency.build(params)
    return params
