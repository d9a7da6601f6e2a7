"""Data stage: MMEB-mini (offline) or MMEB from the hub, written to `<results_dir>/data/`."""

from __future__ import annotations

import shutil

from ssame.config import Paths

from .hub import build_hub
from .mini import build_mini
from .tokenizer import build_tokenizer

SOURCES = ("mini", "hub")


def build(params: dict) -> None:
    """Rebuild `<results_dir>/data/` from `params["data"]`, plus the tokenizer when data.tokenizer is set."""
    cfg = params["data"]
    source = cfg.get("source")
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
    if source not in cfg:
        raise KeyError(f"data.{source} is missing")
    out = Paths.from_params(params).data
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if source == "mini":
        build_mini(cfg["mini"], out)
    else:
        build_hub(cfg["hub"], out)
    tok = cfg.get("tokenizer")
    if tok is not None:
        if "vocab_size" not in tok:
            raise KeyError("data.tokenizer.vocab_size is missing")
        build_tokenizer(out, tok["vocab_size"])
