"""Rasterise MMEB-mini scenes (numpy + PIL): images, subject masks and crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ssame.atomic import atomic_path

from .scene import COLOURS, Obj, Scene

Box = tuple[int, int, int, int]


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A desaturated colour, so saturated objects stay the most salient thing."""
    return np.clip(rng.uniform(80, 170) + rng.uniform(-25, 25, size=3), 0, 255)


def background(kind: str, seed: int, size: int) -> np.ndarray:
    """A textured or gradient background, uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    a, b = _muted(rng), _muted(rng)
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        t = (t - t.min()) / (np.ptp(t) or 1.0)
    elif kind == "noise":
        coarse = Image.fromarray((rng.uniform(0, 255, size=(6, 6))).astype(np.uint8))
        t = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64) / 255
    elif kind == "stripes":
        angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 8)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    elif kind == "checker":
        cells = int(rng.integers(4, 9))
        t = ((np.floor(xx * cells) + np.floor(yy * cells)) % 2).astype(np.float64)
    elif kind == "rings":
        cx, cy, freq = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(4, 9)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * np.hypot(xx - cx, yy - cy))
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    img = a + (b - a) * t[..., None] + rng.normal(0, 4, size=(size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(obj: Obj) -> list[tuple[float, float]]:
    cx, cy, r = obj.cx, obj.cy, obj.r
    if obj.shape == "square":
        h = 0.78 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if obj.shape == "diamond":
        return [(cx, cy - r), (cx + 0.72 * r, cy), (cx, cy + r), (cx - 0.72 * r, cy)]
    if obj.shape == "triangle":
        angles = np.deg2rad([-90, 30, 150])
        return [(cx + r * np.cos(a), cy + 0.1 * r + r * np.sin(a)) for a in angles]
    if obj.shape == "star":
        angles = np.deg2rad(np.arange(10) * 36 - 90)
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles, strict=True)]
    if obj.shape == "cross":
        w = 0.3 * r
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    raise ValueError(f"unknown shape {obj.shape!r}")


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    if obj.shape == "circle":
        draw.ellipse((obj.cx - obj.r, obj.cy - obj.r, obj.cx + obj.r, obj.cy + obj.r), fill=fill)
    else:
        draw.polygon(_polygon(obj), fill=fill)


def render(scene: Scene) -> tuple[Image.Image, Image.Image]:
    """The RGB scene and its subject mask (mode L, 0/255); the subject is drawn last, on top."""
    rng = np.random.default_rng(scene.bg_seed + 1)
    image = Image.fromarray(background(scene.background, scene.bg_seed, scene.size))
    draw = ImageDraw.Draw(image)
    for obj in (*scene.distractors, scene.subject):
        rgb = np.clip(np.array(COLOURS[obj.colour]) + rng.integers(-12, 13, size=3), 0, 255)
        _draw(draw, obj, tuple(int(v) for v in rgb))
    mask = Image.new("L", (scene.size, scene.size), 0)
    _draw(ImageDraw.Draw(mask), scene.subject, 255)
    return image, mask


def box_around(obj: Obj, size: int, margin: float = 0.25) -> Box:
    """Square crop box around an object, clamped to the image."""
    half = obj.r * (1 + margin)
    return _clamp(obj.cx - half, obj.cy - half, obj.cx + half, obj.cy + half, size)


def _clamp(x0: float, y0: float, x1: float, y1: float, size: int) -> Box:
    return max(0, int(x0)), max(0, int(y0)), min(size, int(np.ceil(x1))), min(size, int(np.ceil(y1)))


def background_box(rng: np.random.Generator, scene: Scene, side: int) -> Box:
    """A square of about `side` px that does not touch the subject's box."""
    sx0, sy0, sx1, sy1 = box_around(scene.subject, scene.size, margin=0.05)
    while side >= 6:
        for _ in range(200):
            x0, y0 = (int(v) for v in rng.integers(0, scene.size - side + 1, size=2))
            if x0 + side <= sx0 or x0 >= sx1 or y0 + side <= sy0 or y0 >= sy1:
                return x0, y0, x0 + side, y0 + side
        side = int(side * 0.8)
    raise RuntimeError(f"no background region free of the subject in a {scene.size}px image")


def save_png(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=False, compress_level=6)


def save_crop(image: Image.Image, box: Box, size: int, path: Path) -> None:
    """Crop `box` and resize it to size x size (like MMEB's grounding candidate crops)."""
    save_png(image.crop(box).resize((size, size), Image.Resampling.BILINEAR), path)
