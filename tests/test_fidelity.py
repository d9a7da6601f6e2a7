"""Switches that choose between VLM2Vec's evaluator and the miniature's behaviour (docs/evaluation.md): the schema
defaults and the paper profile are VLM2Vec's; the default profile keeps the miniature's numbers."""

from __future__ import annotations

import pytest

from ssame.config import ParamsError, as_params, load_params
from ssame.model.backbone import image_processor_for, pixel_budget, square_side

VLM2VEC = {("model", "image_resize"): "square", ("model", "image_side"): 1344, ("model", "mrope"): "vlm2vec_1d",
           ("evaluate", "max_text_tokens"): None, ("evaluate", "drop_unreadable"): False}


def _minus(params, section: str, keys) -> dict:
    raw = params.to_dict()
    for key in keys:
        raw[section].pop(key, None)
    return raw


@pytest.mark.parametrize("where", sorted(VLM2VEC))
def test_schema_defaults_and_paper_profile_are_vlm2vecs(repo, where):
    section, key = where
    paper = load_params(repo / "params" / "paper.yaml")
    assert paper[section][key] == VLM2VEC[where]
    defaults = as_params(_minus(paper, section, [key]))  # the schema's default when the key is left out
    assert defaults[section][key] == VLM2VEC[where]


def test_paper_images_are_1344_square_2304_tokens(repo):
    model = load_params(repo / "params" / "paper.yaml")["model"]
    assert square_side(model) == 1344 and pixel_budget(model) == 1344 * 1344
    assert model["image_pixels"] is None  # no second, unused budget
    assert (1344 // 28) ** 2 == 2304      # merged visual tokens per image (patch 14, merge 2)


def test_default_profile_keeps_the_miniature(default_params):
    model = default_params["model"]
    assert model["image_resize"] == "pixels" and model["mrope"] == "vlm2vec_1d"
    assert square_side(model) is None and pixel_budget(model) == 96 * 96
    assert image_processor_for(default_params).size["longest_edge"] == 96 * 96
    assert default_params["evaluate"]["max_text_tokens"] is None  # its texts fit (tests/test_evaluate.py)


def test_pixels_mode_needs_a_budget(default_params):
    with pytest.raises(ParamsError, match="image_pixels"):
        as_params(_minus(default_params, "model", ["image_pixels"]))
    raw = default_params.to_dict()
    raw["model"]["mrope"] = "3d"
    with pytest.raises(ParamsError, match=r"model\.mrope"):
        as_params(raw)
