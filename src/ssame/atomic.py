"""Atomic output writes, shared by every stage: a writer fills a temporary sibling of its target (same directory,
so same filesystem), which replaces the target only once complete. An interrupted job leaves the previous output or
none, never a partial one that looks complete (a killed process may leave a hidden `.tmp-*` sibling; no fsync, so
this guards against interrupted jobs, not power cuts). A write the OS refuses (disk full, quota, permissions, a
read-only filesystem) raises `WriteError`, naming the target and the reason."""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG})


class WriteError(OSError):
    """An output could not be written; `str()` is `cannot write <target>: <reason>`."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(err.errno, err.strerror or str(err), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an OSError of WRITE_ERRNOS as a WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise WriteError(path, err) from err
        raise


def _sibling(path: Path) -> Path:
    """An unused hidden name beside `path` that ends with its name, so suffix-driven writers (savefig, np.save) keep
    their format."""
    return path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a path (not yet created) beside `path` for the caller to write; it replaces `path` when the block ends
    normally and is removed when it raises. Creates the parent directory."""
    tmp = _sibling(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a new empty directory beside `path` to fill (e.g. by save_pretrained); it replaces `path` (see
    `replace_dir`) when the block ends normally and is deleted when it raises."""
    tmp = _sibling(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        try:
            yield tmp
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def replace_dir(src: Path, dst: Path) -> None:
    """Rename directory `src` to `dst` (same filesystem). A previous `dst` is renamed aside first and deleted after,
    so `dst` is at every moment the old folder, the new one, or briefly absent, never a mix."""
    old = _sibling(dst)
    with _naming(dst):
        if dst.exists():
            dst.rename(old)
        try:
            src.rename(dst)
        except OSError:
            if old.exists():
                old.rename(dst)
            raise
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: Path, record: object, sort_keys: bool = False) -> Path:
    """`record` as JSON indented by 2, with a final newline."""
    return write_text(path, json.dumps(record, indent=2, sort_keys=sort_keys) + "\n")
