"""MMEB's images: extract what the parquets reference from an image zip, and decode each one as training does.

MMEB-train's `images_zip/<Config>.zip` hold members `<Config>/…` while the parquets say `images/<Config>/…`
(VLM2Vec unzips them into `<root>/images/`); other zips may hold the parquet paths as they are. `extract` finds the
relation from the member names instead of assuming one, ignores macOS junk (`__MACOSX/`, `._*`) and writes each
referenced image at its parquet path under the destination, so the parquet paths stay valid unchanged.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from ssame.atomic import atomic_path

from .io import DataFormatError, Ref

DECODE_CHUNK = 256  # images per task of the decoding pool


def _unsafe(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return path.startswith("/") or "\\" in path or ".." in parts or (bool(parts) and parts[0].endswith(":"))


def _junk(name: str) -> bool:
    """Directories and macOS metadata (`__MACOSX/…`, AppleDouble `._*` files)."""
    return name.endswith("/") or name.startswith("__MACOSX/") or PurePosixPath(name).name.startswith("._")


@dataclass(frozen=True)
class Layout:
    """member = `add` + parquet path without its leading `strip`."""

    strip: str = ""
    add: str = ""

    def member(self, path: str) -> str:
        return self.add + path.removeprefix(self.strip)

    def __str__(self) -> str:
        if self.strip:
            return f"members are the parquet paths without {self.strip!r}"
        return f"members are the parquet paths under {self.add!r}" if self.add else "members are the parquet paths"


def _layout(members: set[str], refs: Sequence[Ref]) -> Layout | None:
    """How parquet paths map to member names, from the first reference that matches a member: as they are, with
    leading folders removed (`images/A/x.jpg` -> `A/x.jpg`) or with a prefix added. None when nothing matches."""
    by_name: dict[str, list[str]] = {}
    for member in members:
        by_name.setdefault(PurePosixPath(member).name, []).append(member)
    for ref in refs:
        if ref.path in members:
            return Layout()
        parts = ref.path.split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[k:]) in members:
                return Layout(strip="/".join(parts[:k]) + "/")
        for member in by_name.get(parts[-1], []):
            if member.endswith("/" + ref.path):
                return Layout(add=member[: -len(ref.path)])
    return None


def extract(zip_path: Path, refs: Sequence[Ref], dest: Path) -> None:
    """Write the member behind every reference to `dest / ref.path`; a reference that matches no member is an error
    naming dataset, row, column and path."""
    for ref in refs:
        if _unsafe(ref.path):
            raise DataFormatError(f"{ref}: unsafe image path (absolute or with '..')")
    if not zipfile.is_zipfile(zip_path):  # e.g. a git-lfs pointer in a clone made without git-lfs
        raise DataFormatError(f"{zip_path} is not a zip file")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        unsafe = [n for n in names if _unsafe(n)]
        if unsafe:
            raise DataFormatError(f"{zip_path}: unsafe member path {unsafe[0]!r}")
        members = {n for n in names if not _junk(n)}
        if not refs:
            return
        layout = _layout(members, refs)
        if layout is None:
            sample = sorted(members)[:3]
            raise DataFormatError(f"{refs[0]} matches no member of {zip_path} in any layout "
                                  f"({len(members)} members, e.g. {sample})")
        wanted: dict[str, str] = {}
        for ref in refs:
            member = layout.member(ref.path)
            if member not in members:
                raise DataFormatError(f"{ref} is not in {zip_path} ({layout}; no member {member!r})")
            wanted[ref.path] = member
        for path, member in sorted(wanted.items()):
            with zf.open(member) as src, atomic_path(dest / path) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)


def _decode(task: tuple[str, list[str]]) -> list[tuple[str, str]]:
    """(path, reason) of each image of the chunk that PIL cannot open and convert to RGB (as training loads it)."""
    root, paths = task
    bad = []
    for rel in paths:
        try:
            with Image.open(Path(root) / rel) as image:
                image.convert("RGB")
        except Exception as err:  # whatever PIL raises, training could not use the image
            bad.append((rel, f"{type(err).__name__}: {err}"))
    return bad


def unreadable(root: Path, paths: Iterable[str], workers: int | None = None) -> dict[str, str]:
    """Decode every image (paths relative to `root`) on a process pool of `workers` (all usable cores when None);
    return {path: reason} of those that fail."""
    unique = sorted(set(paths))
    tasks = [(str(root), unique[i : i + DECODE_CHUNK]) for i in range(0, len(unique), DECODE_CHUNK)]
    workers = min(workers or len(os.sched_getaffinity(0)), len(tasks))
    if workers <= 1:
        results = map(_decode, tasks)
        return dict(pair for chunk in results for pair in chunk)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return dict(pair for chunk in pool.map(_decode, tasks) for pair in chunk)
