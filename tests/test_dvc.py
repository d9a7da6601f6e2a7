"""dvc.yaml against the params it reads: each training run depends on exactly the train keys that shape it."""

from __future__ import annotations

import yaml

from ssame.train.checkpoint import RUN_ONLY_KEYS


def test_train_stage_params_are_the_keys_that_shape_a_run(repo):
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    listed = stages["train"]["params"][0]["params/default.yaml"]
    shipped = yaml.safe_load((repo / "params" / "default.yaml").read_text())["train"]
    expected = {f"train.{key}" for key in shipped if key not in RUN_ONLY_KEYS}  # never the seed or variant lists
    assert {key for key in listed if key.startswith("train.")} == expected
    assert {key for key in listed if not key.startswith("train.")} == {"model", "pretrain", "variants.${item.variant}"}
    assert stages["saliency"]["outs"] == [{"results/saliency": {"persist": True}}]  # dvc repro keeps its shard cache
