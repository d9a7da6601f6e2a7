"""Saliency storage: one shard of uncompressed arrays per dataset, read lazily, and its one loader.

`<results>/saliency/shards/<dataset>/` holds uncompressed `.npy` arrays in two tables:
- `images.*`: the bottom-up map of every image of the dataset, keyed by image path;
- `pairs.*`: the fused map of every (text, image) pair whose text names a subject, keyed by `text \\0 image`,
  with the pair's first subject phrase aligned (`pairs.subject_offsets.npy`, `pairs.subjects.npy`).
Each table has `hash.npy` (N,) uint64 sorted (64-bit BLAKE2b of the UTF-8 key), `key_offsets.npy` (N+1,) int64 and
`keys.npy` uint8 (the keys, in hash order, to confirm a hit) and `maps.npy` (N, S, S) float16, values in [0, 1],
S = params `saliency.map_size`, image paths relative to the data stage's image root. `shard.json` (written last:
a shard folder is complete or absent) records S and the counts. `<dataset>.subjects.jsonl` beside the folder lists
every pair's subject phrases for people; `manifest.json` indexes the shards.

`SaliencyStore` memory-maps the hashes and key offsets and reads the one key and map a lookup needs with os.pread,
so a process holds no map it has not asked for, whatever the dataset size (memory-mapped reads would map each map's
neighbours too and, over a run, whole shards into every process's RSS). On the first lookup in a table kind (images
or pairs) it merges every shard's sorted hashes into one sorted uint64 array with each key's position (shard, row)
beside it, 16 bytes a key in memory (16 MB for 1M keys) and no map, so a lookup is one np.searchsorted whatever the
number of shards; a hit is confirmed by comparing the key's bytes (64-bit hashes may collide). It resizes a map to
the backbone's merged visual-token grid on demand, the form training consumes.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ssame.atomic import atomic_dir, atomic_path

SHARD_FILE = "shard.json"
# dtype and dimensions of each array of a table
FIELDS = {"hash": (np.uint64, 1), "key_offsets": (np.int64, 1), "keys": (np.uint8, 1), "maps": (np.float16, 3),
          "subject_offsets": (np.int64, 1), "subjects": (np.uint8, 1)}


class ShardError(ValueError):
    """A saliency manifest or shard that does not hold what the saliency stage writes; the message names the file."""


def _hash(key: bytes) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))


def _pair_key(text: str, image: str) -> bytes:
    return f"{text}\x00{image}".encode()


def _packed(strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (N+1,) int64, concatenated bytes uint8) of variable-length byte strings."""
    offsets = np.zeros(len(strings) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in strings])
    return offsets, np.frombuffer(b"".join(strings), dtype=np.uint8)


def _write_table(folder: Path, name: str, keys: list[bytes], maps: list[np.ndarray], size: int,
                 subjects: list[str] | None = None) -> None:
    hashes = np.array([_hash(k) for k in keys], dtype=np.uint64)
    order = np.argsort(hashes, kind="stable")
    np.save(folder / f"{name}.hash.npy", hashes[order])
    offsets, packed = _packed([keys[i] for i in order])
    np.save(folder / f"{name}.key_offsets.npy", offsets)
    np.save(folder / f"{name}.keys.npy", packed)
    stacked = np.stack([maps[i] for i in order]) if keys else np.zeros((0, size, size))
    np.save(folder / f"{name}.maps.npy", stacked.astype(np.float16))
    if subjects is not None:
        offsets, packed = _packed([subjects[i].encode() for i in order])
        np.save(folder / f"{name}.subject_offsets.npy", offsets)
        np.save(folder / f"{name}.subjects.npy", packed)


def shard_dir(shards: Path, dataset: str) -> Path:
    return shards / dataset


def shard_exists(shards: Path, dataset: str) -> bool:
    """Whether a complete shard of `dataset` is in `shards` (its `shard.json` is written last)."""
    return (shard_dir(shards, dataset) / SHARD_FILE).is_file()


def write_shard(shards: Path, dataset: str, maps: dict[str, np.ndarray],
                pair_maps: dict[tuple[str, str], np.ndarray], size: int,
                pair_subjects: dict[tuple[str, str], str]) -> Path:
    """One dataset's shard folder, replacing any previous one; either dict of maps may be empty (a text-only
    dataset, every image skipped). `pair_subjects` gives the first subject phrase of every key of `pair_maps`."""
    missing = [k for k in pair_maps if k not in pair_subjects]
    if missing:
        raise ValueError(f"saliency shard {dataset}: pair {missing[0]} has a map but no subject phrase")
    images, pairs = list(maps), list(pair_maps)
    with atomic_dir(shard_dir(shards, dataset)) as tmp:
        _write_table(tmp, "images", [p.encode() for p in images], [maps[k] for k in images], size)
        _write_table(tmp, "pairs", [_pair_key(*k) for k in pairs], [pair_maps[k] for k in pairs], size,
                     [pair_subjects[k] for k in pairs])
        (tmp / SHARD_FILE).write_text(json.dumps({"map_size": size, "images": len(images), "pairs": len(pairs)})
                                      + "\n")
    return shard_dir(shards, dataset)


def write_subjects(path: Path, pairs: list[tuple[str, str, list[str]]]) -> None:
    """One dataset's `<dataset>.subjects.jsonl`: (text, image path, subject phrases) per pair."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        for text, image, phrases in pairs:
            handle.write(json.dumps({"text": text, "image_path": image, "subjects": phrases}) + "\n")


class _Table:
    """One table of a shard, opened on first use (again in each DataLoader worker): the sorted hashes and the
    offsets are memory-mapped for the search; keys, maps and subjects are read row by row with os.pread, so the
    process maps no file page it has not searched (a memory-mapped read would map its neighbours too)."""

    SEARCHED = ("hash", "key_offsets")
    READ = ("keys", "maps")

    def __init__(self, folder: Path, name: str, subjects: bool = False):
        self.folder, self.name, self.subjects = folder, name, subjects
        self._open: dict[str, Any] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None}

    def __del__(self) -> None:
        for fd, *_ in (self._open or {}).get("read", {}).values():
            os.close(fd)

    def _path(self, field: str) -> Path:
        return self.folder / f"{self.name}.{field}.npy"

    @property
    def files(self) -> dict[str, Any]:
        if self._open is None:
            searched = self.SEARCHED + (("subject_offsets",) if self.subjects else ())
            read = self.READ + (("subjects",) if self.subjects else ())
            opened: dict[str, Any] = {"searched": {}, "read": {}}
            try:
                for field in searched:
                    opened["searched"][field] = self._searched(field)
                for field in read:
                    opened["read"][field] = _open_rows(self._path(field), *FIELDS[field])
                self._check(opened)
            except ShardError as err:
                for fd, *_ in opened["read"].values():
                    os.close(fd)
                raise ShardError(f"unreadable saliency shard {self.folder}: {err}") from err
            self._open = opened
        return self._open

    def _searched(self, field: str) -> np.ndarray:
        path = self._path(field)
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            raise ShardError(f"{path}: {err}") from err
        if array.dtype != FIELDS[field][0] or array.ndim != 1:
            raise ShardError(f"{path}: expected a 1-D {np.dtype(FIELDS[field][0])} array, got {array.dtype} of shape "
                             f"{array.shape}")
        return array

    def _check(self, opened: dict[str, Any]) -> None:
        """The row counts and byte lengths the lookups rely on agree across the table's files."""
        rows = len(opened["searched"]["hash"])
        shape = opened["read"]["maps"][2]
        if shape[0] != rows or shape[1] != shape[2]:
            raise ShardError(f"{self._path('maps')} has shape {shape}, expected ({rows}, S, S) as "
                             f"{self._path('hash').name} holds {rows} rows")
        for offsets, data in (("key_offsets", "keys"), ("subject_offsets", "subjects")):
            if offsets not in opened["searched"]:
                continue
            ends = opened["searched"][offsets]
            length = opened["read"][data][2][0]
            if len(ends) != rows + 1 or ends[0] != 0 or ends[-1] != length:
                raise ShardError(f"{self._path(offsets)} ({len(ends)} offsets) does not match "
                                 f"{self._path('hash').name} ({rows} rows) and {self._path(data).name} "
                                 f"({length} bytes)")

    def _bytes(self, field: str, start: int, stop: int) -> bytes:
        fd, offset, _ = self.files["read"][field]
        data = os.pread(fd, max(stop - start, 0), offset + start) if start >= 0 else b""
        if len(data) != stop - start:
            raise ShardError(f"{self._path(field)}: cannot read bytes {start}:{stop} (truncated, or corrupt offsets)")
        return data

    def key(self, row: int) -> bytes:
        """The key of `row`."""
        offsets = self.files["searched"]["key_offsets"]
        return self._bytes("keys", int(offsets[row]), int(offsets[row + 1]))

    def map(self, row: int) -> np.ndarray:
        _, _, shape = self.files["read"]["maps"]
        size = shape[1] * shape[2] * 2
        flat = np.frombuffer(self._bytes("maps", row * size, (row + 1) * size), dtype=np.float16)
        return flat.reshape(shape[1:]).astype(np.float32)

    def subject(self, row: int) -> str:
        offsets = self.files["searched"]["subject_offsets"]
        data = self._bytes("subjects", int(offsets[row]), int(offsets[row + 1]))
        try:
            return data.decode()
        except UnicodeDecodeError as err:
            raise ShardError(f"{self._path('subjects')}: row {row} is not UTF-8: {err}") from err


def _open_rows(path: Path, dtype: type, ndim: int) -> tuple[int, int, tuple[int, ...]]:
    """(file descriptor, byte offset of the data, shape) of a C-ordered `ndim`-D .npy file of `dtype`, complete,
    for os.pread."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, found = read_header(handle)
            offset, size = handle.tell(), os.fstat(handle.fileno()).st_size
    except (OSError, ValueError, EOFError) as err:
        raise ShardError(f"{path}: {err}") from err
    if fortran or found != np.dtype(dtype) or len(shape) != ndim:
        raise ShardError(f"{path}: expected a C-ordered {ndim}-D {np.dtype(dtype)} array, got {found} of shape "
                         f"{shape} (fortran={fortran})")
    if size < offset + int(np.prod(shape)) * found.itemsize:
        raise ShardError(f"{path}: truncated ({size} bytes, its header announces {shape} {found})")
    return os.open(path, os.O_RDONLY), offset, shape


class _Merged:
    """One sorted index over a list of tables, highest priority first: the tables' hashes merged into one sorted
    uint64 array and, beside it, each key's position in the tables' concatenation (16 bytes a key, 24 while
    building). Equal hashes keep the list's order, then the row order, so the first confirmed hit is the one a walk
    of the tables in order finds first. Building opens and checks every table of the list, so a damaged shard's
    ShardError (naming its file) comes with the first lookup of the kind, whichever shard holds the key."""

    def __init__(self, tables: list[_Table]):
        hashes = [table.files["searched"]["hash"] for table in tables]
        self.tables = tables
        self.starts = [0, *np.cumsum([len(h) for h in hashes]).tolist()]
        joined = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
        self.where = np.argsort(joined, kind="stable")
        self.hashes = joined[self.where]

    def find(self, key: bytes) -> tuple[_Table, int] | None:
        """(table, row) of `key`, or None."""
        digest = _hash(key)
        hashes = self.hashes
        at = int(hashes.searchsorted(digest))
        while at < len(hashes) and hashes[at] == digest:
            position = int(self.where[at])
            index = bisect.bisect_right(self.starts, position) - 1
            table, row = self.tables[index], position - self.starts[index]
            if table.key(row) == key:
                return table, row
            at += 1
        return None


class SaliencyStore:
    """Read-only access to the saliency stage's maps, by image path and, where one exists, by (text, image) pair.
    Nothing is loaded up front: the first lookup in a table kind merges the shards' sorted hashes into one index;
    each lookup searches it once and reads the one key and map it needs."""

    def __init__(self, saliency_dir: Path):
        manifest_path = saliency_dir / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"saliency manifest not found: {manifest_path} (run `ssame saliency`)")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise ShardError(f"{manifest_path}: not valid JSON: {err} (rerun `ssame saliency`)") from err
        shards = self.manifest.get("shards") if isinstance(self.manifest, dict) else None
        if not isinstance(shards, list) or not shards or not all(isinstance(s, str) and s for s in shards):
            raise ShardError(f"{manifest_path}: key 'shards' must list the datasets' shards (rerun `ssame saliency`)")
        self._images: list[_Table] = []
        self._pairs: list[_Table] = []
        for shard in reversed(self.manifest["shards"]):  # a later shard wins a key that two shards hold
            folder = shard_dir(saliency_dir / "shards", shard)
            if not (folder / SHARD_FILE).is_file():
                raise FileNotFoundError(f"saliency shard listed in {manifest_path} is missing or incomplete: "
                                        f"{folder} (rerun `ssame saliency`)")
            self._images.append(_Table(folder, "images"))
            self._pairs.append(_Table(folder, "pairs", subjects=True))
        self._merged: dict[str, _Merged] = {}  # per table kind, built on its first lookup

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_merged": {}}  # a DataLoader worker rebuilds its index on first use

    def _find(self, kind: str, key: bytes) -> tuple[_Table, int] | None:
        merged = self._merged.get(kind)
        if merged is None:
            merged = self._merged[kind] = _Merged(self._pairs if kind == "pairs" else self._images)
        return merged.find(key)

    def __contains__(self, image_path: str) -> bool:
        return self._find("images", image_path.encode()) is not None

    def subject(self, text: str, image_path: str) -> str | None:
        """The first subject phrase of a (text, image) pair that has a fused map, else None."""
        hit = self._find("pairs", _pair_key(text, image_path))
        return hit[0].subject(hit[1]) if hit else None

    def map(self, image_path: str, grid: tuple[int, int] | None = None, text: str | None = None) -> np.ndarray:
        """The pair's fused map if `text` names a subject, else the image's bottom-up map (float32), optionally
        area-resized to a (rows, cols) token grid."""
        hit = self._find("pairs", _pair_key(text, image_path)) if text is not None else None
        if hit is None:
            hit = self._find("images", image_path.encode())
            if hit is None:
                raise KeyError(f"no saliency map for image '{image_path}' in the saliency stage's shards")
        sal = hit[0].map(hit[1])
        if grid is not None:
            sal = cv2.resize(sal, (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
        return sal
