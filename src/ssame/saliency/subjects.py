"""Subject phrases of a text: the offline `lexicon` backend (an LMM backend lands with step 2)."""

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
