"""VLM2Vec v1 prompt formatting: MMEB's query/target layout, its instructions and per-backbone image tokens."""

from __future__ import annotations

from functools import cache
from typing import Literal

import pandas as pd

from .hub import mmeb_datasets
from .io import IMAGE_TOKEN

# VLM2Vec's substitution of MMEB's placeholder (Phi-3-V's own image token) per backbone; Qwen2-VL gets a bare
# `<|image_pad|>` (no vision start/end markers, no chat template) that its processor expands per visual token, or
# leaves as one literal token in a text without an image (MMEB's WebQA and EDIS queries).
IMAGE_TOKENS: dict[str, str] = {"phi3_v": IMAGE_TOKEN, "qwen2_vl": "<|image_pad|>", "llava_next": "<image>"}


def format_v1(instruction: str, text: str = "", image: bool = False) -> str:
    """MMEB-mini's texts in MMEB's layout: `<|image_1|>\\n` when there is an image, then `instruction: text` (either
    part may be empty). MMEB-eval's own texts, used verbatim, also end in "\\n" (queries and instruction-bearing
    targets) and join a few instructions with ". " or " " (docs/evaluation.md); MMEB-mini keeps its layout."""
    body = f"{instruction}: {text}" if instruction and text else instruction or text
    return f"{IMAGE_TOKEN}\n{body}" if image else body


def substitute_image_token(text: str, backbone: str) -> str:
    """`text` with MMEB's placeholder replaced in place by `backbone`'s image token."""
    if backbone not in IMAGE_TOKENS:
        raise ValueError(f"unknown backbone {backbone!r} for the image token; known: {sorted(IMAGE_TOKENS)}")
    if text.count(IMAGE_TOKEN) > 1:
        raise ValueError(f"text holds {text.count(IMAGE_TOKEN)} {IMAGE_TOKEN} placeholders, MMEB inputs have at "
                         f"most one: {text[:80]!r}")
    return text.replace(IMAGE_TOKEN, IMAGE_TOKENS[backbone])


@cache
def _table() -> pd.DataFrame:
    return mmeb_datasets()


def instruction(dataset: str, side: Literal["qry", "tgt"]) -> str:
    """The MMEB-eval instruction of `dataset`'s queries (`qry`) or targets (`tgt`; "" for bare labels/texts)."""
    if side not in ("qry", "tgt"):
        raise ValueError(f"side must be 'qry' or 'tgt', got {side!r}")
    table = _table()
    if dataset not in table.index:
        raise KeyError(f"unknown MMEB dataset {dataset!r}")
    return str(table.at[dataset, f"{side}_instruction"])
