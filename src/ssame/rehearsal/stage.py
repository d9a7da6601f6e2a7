"""`ssame mirror`: the rehearsal's stand-in for the hub, written before the data stage.

`<mirror.dir>/hub/` holds TIGER-Lab/MMEB-train and TIGER-Lab/MMEB-eval laid out like the hub repositories at the
pinned revisions (`hub_mirror.py`); `<mirror.dir>/models/` holds tiny random-config models of every class the paper
profile loads, saved with `save_pretrained` (`models.py`). The paper code path reads both unchanged: the data stage
through `data.hub.local_dir`, the model loaders through `from_pretrained(<folder>)`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssame.atomic import write_json
from ssame.config import ParamsError, as_params
from ssame.rehearsal.hub_mirror import write_hub_mirror
from ssame.rehearsal.models import write_tiny_models

DONE_FILE = "mirror.json"


def done_file(params: Mapping[str, Any]) -> Path:
    """The file `ssame mirror` writes last (the Snakemake output the data stage waits for)."""
    return Path(params["mirror"]["dir"]) / DONE_FILE


def build(params: Mapping[str, Any]) -> None:
    """Rewrite `<mirror.dir>` from scratch: the hub repositories, the tiny models, then `mirror.json`."""
    params = as_params(params)
    cfg = params["mirror"]
    if cfg is None:
        raise ParamsError("ssame mirror: the params have no 'mirror' section (only the rehearsal profile has one)")
    root = Path(cfg["dir"])
    if root.exists():
        shutil.rmtree(root)
    (root / "hub").mkdir(parents=True)
    write_hub_mirror(root / "hub", seed=cfg["seed"], train_rows=cfg["train_rows"], eval_queries=cfg["eval_queries"],
                     image_size=cfg["image_size"])
    models = write_tiny_models(root / "models", seed=cfg["seed"])
    record = {"hub": str(root / "hub"), "models": {name: str(path) for name, path in sorted(models.items())}}
    write_json(done_file(params), record)
