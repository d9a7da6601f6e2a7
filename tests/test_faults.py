"""Faults survived: atomic outputs (no partial file, the previous one intact), refused writes named in one line by
the CLI, and hub downloads checked against the sha256 the hub lists (re-fetched once, then an error)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub.hf_api import RepoFile

from ssame import atomic
from ssame.atomic import WriteError, atomic_dir, atomic_path, write_json
from ssame.cli import main
from ssame.data import io
from ssame.data.hub import Repo
from ssame.evaluate.outputs import write_predictions

REPO, REVISION, FILE = "TIGER-Lab/MMEB-eval", "2" * 40, "N24News/test-00000-of-00001.parquet"
GOOD, BAD = b"the parquet bytes", b"the parquet byt\x00s"


class Interrupted(Exception):
    pass


def _refusing(code: int):
    def refuse(*args):
        raise OSError(code, os.strerror(code))

    return refuse


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_writer_that_raises_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out" / "scores.json"
    with pytest.raises(Interrupted), atomic_path(target) as tmp:
        tmp.write_text('{"hit_at_1": 0.')
        raise Interrupted
    assert _listing(tmp_path / "out") == []


def test_the_previous_file_stays_intact_until_the_new_one_is_complete(tmp_path):
    target = write_json(tmp_path / "aggregate.json", {"overall": 1.0})
    with pytest.raises(Interrupted), atomic_path(target) as tmp, tmp.open("w") as f:
        f.write('{"overall": 0.')
        assert target.read_text() == '{\n  "overall": 1.0\n}\n'
        raise Interrupted
    assert target.read_text() == '{\n  "overall": 1.0\n}\n' and _listing(tmp_path) == ["aggregate.json"]
    write_json(target, {"overall": 2.0})
    assert target.read_text() == '{\n  "overall": 2.0\n}\n' and _listing(tmp_path) == ["aggregate.json"]


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("old")
    with pytest.raises(Interrupted), atomic_dir(target) as tmp:
        (tmp / "weights.safetensors").write_text("half")
        raise Interrupted
    assert _listing(target) == ["config.json"] and _listing(tmp_path) == ["model"]
    with atomic_dir(target) as tmp:
        (tmp / "weights.safetensors").write_text("new")
    assert _listing(target) == ["weights.safetensors"] and _listing(tmp_path) == ["model"]


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "No space left on device"),
                                               (errno.EDQUOT, "Disk quota exceeded"),
                                               (errno.EACCES, "Permission denied"),
                                               (errno.EROFS, "Read-only file system")])
def test_a_refused_write_names_the_path(tmp_path, monkeypatch, code, reason):
    monkeypatch.setattr(os, "replace", _refusing(code))
    target = tmp_path / "eval" / "predictions" / "N24News.jsonl"
    with pytest.raises(WriteError) as caught:
        write_predictions(target, [0, 1], [1, 2], [[0], [1]])
    assert str(caught.value) == f"cannot write {target}: {reason}"
    assert caught.value.errno == code and isinstance(caught.value.__cause__, OSError)
    assert _listing(target.parent) == []


def test_a_failing_library_writer_names_the_target_not_its_temporary(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/.tmp-1234-manifest.csv")

    monkeypatch.setattr("pandas.DataFrame.to_csv", full)
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path / 'manifest.csv'}: No space left on device$"):
        io.write_manifest(tmp_path, [{"dataset": "N24News", "meta_task": "classification", "split": "IND",
                                      "num_candidates": 24, "num_queries": 3, "train_rows": 0}])


def test_other_errors_are_not_relabelled(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "x.json"):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "input.parquet")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_directory_names_the_path(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=rf"^cannot write {folder / 'main.md'}: Permission denied$"):
            atomic.write_text(folder / "main.md", "| a |\n")
        with pytest.raises(WriteError, match=rf"^cannot write {folder / 'model'}: Permission denied$"), \
                atomic_dir(folder / "model"):
            pass
    finally:
        folder.chmod(0o700)


def test_cli_prints_a_refused_write_in_one_line(repo, tmp_path, monkeypatch, capsys):
    target = tmp_path / "results" / "eval" / "x.json"
    monkeypatch.setattr(os, "replace", _refusing(errno.ENOSPC))
    argv = ["evaluate", "--params", str(repo / "params" / "default.yaml"), "--variant", "ssame", "--seed", "0"]
    assert main(argv, run=lambda stage, params, args: write_json(target, {"hit_at_1": 0.5})) == 1
    assert capsys.readouterr().err == f"ssame evaluate: cannot write {target}: No space left on device\n"


class FakeHub:
    """A hub client whose downloads land in `cache`: the first download of a file gives `first`, a forced one
    `again`; `lfs` says whether the file is LFS (with the sha256 of GOOD)."""

    def __init__(self, cache: Path, first: bytes, again: bytes, lfs: bool = True):
        self.cache, self.first, self.again, self.lfs, self.forced = cache, first, again, lfs, []

    def list_repo_files(self, repo, repo_type, revision):
        return [FILE]

    def get_paths_info(self, repo, paths, repo_type, revision):
        assert (repo, paths, repo_type, revision) == (REPO, FILE, "dataset", REVISION)
        lfs = {"size": len(GOOD), "oid": hashlib.sha256(GOOD).hexdigest(), "pointerSize": 134} if self.lfs else None
        return [RepoFile(path=paths, size=len(GOOD), oid="0" * 40, lfs=lfs)]

    def download(self, repo, filename, repo_type, revision, force_download):
        self.forced.append(force_download)
        path = self.cache / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.again if force_download else self.first)
        return str(path)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    def install(first: bytes, again: bytes, lfs: bool = True) -> FakeHub:
        fake = FakeHub(tmp_path / "cache", first, again, lfs)
        monkeypatch.setattr("ssame.data.hub.HfApi", lambda: fake)
        monkeypatch.setattr("ssame.data.hub.hf_hub_download", fake.download)
        return fake

    return install


def test_a_verified_download_is_fetched_once(hub):
    fake = hub(GOOD, GOOD)
    assert Repo(REPO, REVISION, None).fetch(FILE).read_bytes() == GOOD and fake.forced == [False]


def test_a_corrupted_download_is_fetched_again(hub, caplog):
    fake = hub(BAD, GOOD)
    assert Repo(REPO, REVISION, None).fetch(FILE).read_bytes() == GOOD
    assert fake.forced == [False, True] and f"{FILE} does not match its sha256" in caplog.text


def test_a_persistent_mismatch_names_repo_revision_file_and_digests(hub):
    fake = hub(BAD, BAD)
    expected, actual = hashlib.sha256(GOOD).hexdigest(), hashlib.sha256(BAD).hexdigest()
    with pytest.raises(io.DataFormatError, match=rf"{REPO}@{REVISION}: {FILE} has sha256 {actual} after two "
                                                 rf"downloads, the hub lists {expected}"):
        Repo(REPO, REVISION, None).fetch(FILE)
    assert fake.forced == [False, True]


def test_a_file_outside_lfs_is_not_checked(hub):
    fake = hub(BAD, GOOD, lfs=False)
    assert Repo(REPO, REVISION, None).fetch(FILE).read_bytes() == BAD and fake.forced == [False]


def test_a_local_mirror_is_read_without_the_hub(tmp_path, monkeypatch):
    (tmp_path / REPO / FILE).parent.mkdir(parents=True)
    (tmp_path / REPO / FILE).write_bytes(BAD)
    monkeypatch.setattr("ssame.data.hub.HfApi", None)  # any hub call would fail
    assert Repo(REPO, REVISION, str(tmp_path)).fetch(FILE).read_bytes() == BAD
