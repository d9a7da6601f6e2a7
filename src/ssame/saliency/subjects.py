"""Subject phrases of a text: the offline `lexicon` backend, or the `lmm` backend (`lmm_subjects.py`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
_WORD = re.compile(r"[a-z]+")


class LexiconSubjects:
    """Maximal runs of attribute words from the data stage's lexicon.json that contain a head noun.

    Head nouns are the words of the lexicon's `shapes` list (every other list holds modifiers).
    "Is the red circle left of the blue square?" -> ["red circle", "blue square"].
    """

    def __init__(self, lexicon_path: Path):
        if not lexicon_path.is_file():
            raise FileNotFoundError(f"subjects backend 'lexicon' needs {lexicon_path} (written by the data stage)")
        lexicon = json.loads(lexicon_path.read_text())
        if "shapes" not in lexicon:
            raise KeyError(f"{lexicon_path}: missing key 'shapes'")
        self.heads = {w.lower() for w in lexicon["shapes"]}
        self.words = {w.lower() for words in lexicon.values() for w in words}

    def __call__(self, text: str) -> list[str]:
        phrases: list[str] = []
        run: list[str] = []
        for word in [*_WORD.findall(_PLACEHOLDER.sub(" ", text).lower()), ""]:
            if word in self.words:
                run.append(word)
                continue
            if any(w in self.heads for w in run):
                phrases.append(" ".join(run))
            run = []
        return phrases


class _PerText:
    """Batch adapter: texts -> phrase lists, for a backend that reads one text at a time."""

    def __init__(self, backend):
        self.backend = backend

    def __call__(self, texts: list[str]) -> list[list[str]]:
        return [self.backend(text) for text in texts]


def build_subjects(cfg: Mapping[str, Any], data_dir: Path) -> Callable[[list[str]], list[list[str]]]:
    """The subject backend of params `saliency.subjects`: a callable texts -> phrase lists."""
    if cfg["backend"] == "lexicon":
        return _PerText(LexiconSubjects(data_dir / "lexicon.json"))
    from ssame.saliency.lmm_subjects import LMMSubjects

    model = LMMSubjects(cfg["model"], revision=cfg["revision"], max_new_tokens=cfg["max_new_tokens"],
                        batch_size=cfg["batch_size"], device=cfg["device"], dtype=cfg["dtype"])
    # Phrases are read from the text alone: one call per unique text, reused for every image it pairs with.
    return lambda texts: model([(text, None) for text in texts])
