"""Data stage: MMEB-mini (offline) or MMEB from the hub, written to `<results_dir>/data/`."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from ssame.config import Paths, as_params

from .hub import build_hub
from .mini import build_mini
from .tokenizer import build_tokenizer


def build(params: Mapping[str, Any]) -> None:
    """Rebuild `<results_dir>/data/` from `params["data"]`, plus the tokenizer when data.tokenizer is set."""
    params = as_params(params)
    cfg = params["data"]
    out = Paths.from_params(params).data
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if cfg["source"] == "mini":
        build_mini(cfg["mini"], out)
    else:
        build_hub(cfg["hub"], out, cfg["bad_input"])
    if cfg["tokenizer"] is not None:
        build_tokenizer(out, cfg["tokenizer"]["vocab_size"])
