"""MMEB-mini scene sampling: one salient subject plus attribute-sharing distractors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "star", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (240, 135, 30),
    "cyan": (40, 200, 210),
    "pink": (240, 120, 180),
}
POSITIONS = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
SIZES = ("large", "small")
# One colour per shape, never drawn in an IND image: the unseen-combination OOD shift.
HELD_OUT = frozenset(
    {
        ("circle", "green"),
        ("square", "purple"),
        ("triangle", "pink"),
        ("cross", "blue"),
        ("star", "orange"),
        ("diamond", "red"),
    }
)
ALL_COMBOS = tuple((s, c) for s in SHAPES for c in COLOURS)
SEEN_COMBOS = tuple(sc for sc in ALL_COMBOS if sc not in HELD_OUT)
IND_BACKGROUNDS = ("gradient", "noise", "stripes")
OOD_BACKGROUNDS = ("checker", "rings")
_PLACEMENT_TRIES = 2000


@dataclass(frozen=True)
class Obj:
    """A drawn object: attributes plus centre and bounding radius in pixels."""

    shape: str
    colour: str
    cx: float
    cy: float
    r: float
    relation: str  # "subject" | "same_colour" | "same_shape" | "other"
    size_px: int  # side of the image it lives in

    @property
    def combo(self) -> tuple[str, str]:
        return self.shape, self.colour

    @property
    def position(self) -> str:
        """Nearest named region of the image (fractions of the side)."""
        return min(
            POSITIONS, key=lambda p: (POSITIONS[p][0] - self.fx) ** 2 + (POSITIONS[p][1] - self.fy) ** 2
        )

    @property
    def fx(self) -> float:
        return self.cx / self.size_px

    @property
    def fy(self) -> float:
        return self.cy / self.size_px


@dataclass(frozen=True)
class Scene:
    subject: Obj
    distractors: tuple[Obj, ...]
    background: str
    bg_seed: int
    size: int


@dataclass(frozen=True)
class Shift:
    """How a dataset's scenes are drawn: subject combos, clutter, background kinds."""

    subjects: tuple[tuple[str, str], ...] = SEEN_COMBOS
    distractor_combos: tuple[tuple[str, str], ...] = SEEN_COMBOS
    n_distractors: tuple[int, int] = (2, 4)
    backgrounds: tuple[str, ...] = IND_BACKGROUNDS


IND = Shift()
NOVEL = Shift(subjects=tuple(sorted(HELD_OUT)), distractor_combos=ALL_COMBOS)
CLUTTER = Shift(n_distractors=(5, 7))
NEW_BACKGROUND = Shift(backgrounds=OOD_BACKGROUNDS)


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _distractor_combo(
    rng: np.random.Generator, subject: tuple[str, str], relation: str, pool
) -> tuple[str, str]:
    shape, colour = subject
    if relation == "same_colour":
        options = [sc for sc in pool if sc[1] == colour and sc[0] != shape]
    elif relation == "same_shape":
        options = [sc for sc in pool if sc[0] == shape and sc[1] != colour]
    else:
        options = [sc for sc in pool if sc[0] != shape and sc[1] != colour]
    if not options:
        raise ValueError(f"no {relation} distractor for subject {subject} in the allowed combinations")
    return _pick(rng, options)


def sample_scene(rng: np.random.Generator, size: int, shift: Shift) -> Scene:
    """Draw a subject in a named region and 2+ distractors: >=1 shares its colour, >=1 its shape."""
    shape, colour = _pick(rng, shift.subjects)
    position = _pick(rng, tuple(POSITIONS))
    fx, fy = POSITIONS[position]
    clutter = shift.n_distractors[1] > 4
    r = size * rng.uniform(0.13, 0.16) if clutter else size * rng.uniform(0.15, 0.19)
    jitter = 0.04 * size
    subject = Obj(
        shape,
        colour,
        fx * size + rng.uniform(-jitter, jitter),
        fy * size + rng.uniform(-jitter, jitter),
        r,
        "subject",
        size,
    )
    n = int(rng.integers(shift.n_distractors[0], shift.n_distractors[1] + 1))
    relations = ["same_colour", "same_shape"] + [
        _pick(rng, ("same_colour", "same_shape", "other")) for _ in range(n - 2)
    ]
    placed: list[Obj] = []
    for relation in relations:
        d_shape, d_colour = _distractor_combo(rng, subject.combo, relation, shift.distractor_combos)
        dr = size * rng.uniform(0.06, 0.08)
        for _ in range(_PLACEMENT_TRIES):
            cx, cy = rng.uniform(dr + 1, size - dr - 1, size=2)
            if np.hypot(cx - subject.cx, cy - subject.cy) < subject.r + dr + 3:
                continue
            if all(np.hypot(cx - o.cx, cy - o.cy) >= o.r + dr + 2 for o in placed):
                placed.append(Obj(d_shape, d_colour, float(cx), float(cy), dr, relation, size))
                break
        else:
            raise RuntimeError(
                f"could not place {n} distractors in a {size}px image; raise data.mini.image_size"
            )
    background = _pick(rng, shift.backgrounds)
    return Scene(subject, tuple(placed), background, int(rng.integers(2**31)), size)
