"""Subject phrases of a text: the offline `lexicon` backend, or the `lmm` backend (`lmm_subjects.py`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

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


def build_subjects(cfg: dict, data_dir: Path):
    """The subject backend of params `saliency.subjects`: a callable texts -> phrase lists."""
    if cfg["backend"] == "lexicon":
        return _PerText(LexiconSubjects(data_dir / "lexicon.json"))
    if cfg["backend"] == "lmm":
        from ssame.saliency.lmm_subjects import LMMSubjects

        if "model" not in cfg:
            raise KeyError("saliency.subjects.backend 'lmm' needs saliency.subjects.model")
        model = LMMSubjects(cfg["model"], max_new_tokens=cfg.get("max_new_tokens", 24),
                            batch_size=cfg.get("batch_size", 8), device=cfg.get("device", "cpu"),
                            dtype=cfg.get("dtype", "float32"))
        # Phrases are read from the text alone: one call per unique text, reused for every image it pairs with.
        return lambda texts: model([(text, None) for text in texts])
    raise ValueError(f"unknown saliency.subjects.backend '{cfg['backend']}' (lexicon | lmm)")
