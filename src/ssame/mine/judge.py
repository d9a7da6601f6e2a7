"""Judges of UniME-V2's mining: a soft match score in [0, 1] for each (query, candidate) pair.

- `LMMJudge` (paper and rehearsal profiles): an instruct Qwen2-VL-family LMM is shown the query and the candidate
  (text and image each) and asked whether the candidate matches the query; the score is P(Yes) / (P(Yes) + P(No))
  from its next-token logits, as in UniME-V2.
- `AttributeJudge` (MMEB-mini, offline): MMEB-mini's scenes are made of known attribute words (the data stage's
  `lexicon.json`: colours, shapes, positions, sizes), so a pair's score is the Jaccard overlap of the attribute
  words that describe the query's positive and the candidate. Not an LMM; every table labels it.

A pair is (query row, candidate row), both MMEB-train rows: the query side is the row's `qry`/`qry_image_path` (and
its positive, for the attribute judge), the candidate is the row's positive `pos_text`/`pos_image_path`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image

Pair = tuple[pd.Series, pd.Series]  # (query row, candidate row): MMEB-train rows
_WORD = re.compile(r"[a-z]+")
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
IMAGE_CACHE = 256  # decoded images kept by the LMM judge


class Judge(Protocol):
    label: str  # how the tables name it

    def __call__(self, pairs: Sequence[Pair]) -> np.ndarray: ...


class AttributeJudge:
    """Jaccard overlap of attribute words. A side's words are those of its positive text, or, when that names no
    attribute (an image positive with a generic prompt), those of the query text whose positive it is (the caption
    or label that picked the image)."""

    label = "attribute judge (offline)"

    def __init__(self, lexicon: Mapping[str, Sequence[str]]):
        self.words = {w for group in lexicon.values() for w in group}
        if not self.words:
            raise ValueError("attribute judge: the lexicon has no words")

    @classmethod
    def from_data(cls, data_dir: Path) -> AttributeJudge:
        path = data_dir / "lexicon.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the attribute judge needs MMEB-mini's lexicon (data.source mini); "
                                    "use mine.judge.backend lmm for MMEB")
        return cls(json.loads(path.read_text()))

    def describe(self, row: pd.Series) -> frozenset[str]:
        own = self._attributes(row["pos_text"])
        return own if own else self._attributes(row["qry"])

    def _attributes(self, text: str) -> frozenset[str]:
        return frozenset(w for w in _WORD.findall(text.lower()) if w in self.words)

    def __call__(self, pairs: Sequence[Pair]) -> np.ndarray:
        scores = []
        for query, candidate in pairs:
            a, b = self.describe(query), self.describe(candidate)
            scores.append(len(a & b) / len(a | b) if a | b else 0.0)
        return np.asarray(scores, dtype=np.float64)


JUDGE_PROMPT = (  # ours, after UniME-V2's yes/no judging instruction
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHere are a query and a candidate.\nQuery: {query}\nCandidate: {candidate}\n"
    "Does the candidate satisfy the query? Answer Yes or No.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


class LMMJudge:
    """P(Yes) / (P(Yes) + P(No)) of an instruct Qwen2-VL-family model (transformers Auto classes: Qwen2-VL or
    Qwen2.5-VL), from the logits of the first answer token after `JUDGE_PROMPT`."""

    def __init__(self, model: str | Path, *, revision: str | None, image_root: Path, batch_size: int, device: str,
                 dtype: str):
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        from ssame.model.backbone import DTYPES
        from ssame.saliency.experts import resolve_device

        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, padding_side="left")
        self.processor = AutoImageProcessor.from_pretrained(model, revision=revision)
        self.model = AutoModelForImageTextToText.from_pretrained(
            model, revision=revision, dtype=DTYPES[dtype]).to(self.device).eval()
        self.image_root, self.batch_size = image_root, batch_size
        self.label = f"LMM judge ({Path(str(model)).name})"
        self.yes, self.no = (self.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
        if self.yes == self.no:
            raise ValueError(f"judge {model}: 'Yes' and 'No' start with the same token")
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        # a query meets top_k + 1 candidates in a row: decode its image once, not once per pair
        self._image = lru_cache(maxsize=IMAGE_CACHE)(self._decode)

    def _decode(self, image: str) -> Image.Image:
        return Image.open(self.image_root / image).convert("RGB")

    def _side(self, text: str, image: str, images: list[Image.Image]) -> str:
        text = _PLACEHOLDER.sub(" ", text).strip()
        if not image:
            return text
        images.append(self._image(image))
        return "<|vision_start|>{pads}<|vision_end|>" + (f" {text}" if text else "")

    def encode(self, pairs: Sequence[Pair]) -> dict[str, torch.Tensor]:
        """Left-padded model inputs of one batch of pairs (each image expanded to its merged visual tokens)."""
        images: list[Image.Image] = []
        prompts = [JUDGE_PROMPT.format(query=self._side(q["qry"], q["qry_image_path"], images),
                                       candidate=self._side(c["pos_text"], c["pos_image_path"], images))
                   for q, c in pairs]
        vision: dict[str, Any] = {}
        if images:
            vision = dict(self.processor(images=images, return_tensors="pt"))
            counts = iter((vision["image_grid_thw"].prod(-1) // self.processor.merge_size**2).tolist())
            prompts = [_expand(p, counts) for p in prompts]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                  "mm_token_type_ids": (enc["input_ids"] == self.image_token_id).int(), **vision}
        return {k: v.to(self.device) for k, v in inputs.items()}

    @torch.no_grad()
    def __call__(self, pairs: Sequence[Pair]) -> np.ndarray:
        scores = []
        for start in range(0, len(pairs), self.batch_size):
            logits = self.model(**self.encode(pairs[start:start + self.batch_size])).logits[:, -1].float()
            scores.append(yes_probability(logits, self.yes, self.no).cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)


def _expand(prompt: str, counts) -> str:
    """Each `{pads}` in order becomes as many `<|image_pad|>` as its image has merged visual tokens."""
    while "{pads}" in prompt:
        prompt = prompt.replace("{pads}", "<|image_pad|>" * next(counts), 1)
    return prompt


def yes_probability(logits: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    """P(Yes) / (P(Yes) + P(No)) from next-token logits (B, V): the softmax over the two tokens only."""
    return torch.softmax(logits[:, [yes, no]], dim=-1)[:, 0]


def make_judge(cfg: Mapping[str, Any], data_dir: Path, image_root: Path) -> Judge:
    """The judge of params `mine.judge`."""
    if cfg["backend"] == "attributes":
        return AttributeJudge.from_data(data_dir)
    return LMMJudge(cfg["model"], revision=cfg["revision"], image_root=image_root, batch_size=cfg["batch_size"],
                    device=cfg["device"], dtype=cfg["dtype"])
