"""The rehearsal's local hub mirror: laid out like MMEB-train/MMEB-eval at the pinned revisions, deterministic, with
exactly the planted bad input, and read by the data stage through the hub code path."""

from __future__ import annotations

import time
import zipfile
from io import BytesIO
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from ssame.config import load_params
from ssame.data import build, io
from ssame.data.hub import mmeb_datasets
from ssame.rehearsal import hub_mirror as hm

SIZES = {"seed": 3, "train_rows": 8, "eval_queries": 4, "image_size": 56}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    start = time.perf_counter()
    hm.write_hub_mirror(root, **SIZES)
    assert time.perf_counter() - start < 20
    return root


@pytest.fixture(scope="module")
def paper(repo) -> dict:
    return load_params(repo / "params" / "paper.yaml").to_dict()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_the_hubs(mirror, paper):
    hub = paper["data"]["hub"]
    train, ev = mirror / hm.TRAIN_REPO, mirror / hm.EVAL_REPO
    table = mmeb_datasets()
    for config in hub["train_datasets"]:
        spec = table[table["train_config"] == config].iloc[0]
        for split in ("original", "diverse_instruction", "train"):
            schema = pq.read_schema(train / config / f"{split}-00000-of-00001.parquet")
            columns = io.TRAIN_COLUMNS if spec.meta_task in ("classification", "vqa") else io.TRAIN_COLUMNS[:4]
            assert schema.names == list(columns) and all(str(t) == "string" for t in schema.types)
            assert b"huggingface" in schema.metadata
        df = pq.read_table(train / config / "original-00000-of-00001.parquet").to_pandas()
        assert len(df) == SIZES["train_rows"] and df["qry"].str.endswith("\n").all()
        with zipfile.ZipFile(train / "images_zip" / f"{config}.zip") as zf:
            names = zf.namelist()
            assert {i.date_time for i in zf.infolist()} == {hm.ZIP_TIME}
        assert any(n.startswith("__MACOSX/") and "/._" in n for n in names)  # macOS junk, as in MMEB's zips
        paths = [p for c in io.TRAIN_IMAGE_COLUMNS if c in df for p in df[c] if p]
        assert paths and all(p.startswith(f"images/{config}/") and p.removeprefix("images/") in names for p in paths)
    assert sorted(p.name for p in train.iterdir() if p.is_dir() and p.name != "images_zip") == sorted(
        hub["train_datasets"])
    for name in hub["eval_datasets"]:
        df = pq.read_table(ev / name / "test-00000-of-00001.parquet").to_pandas()
        assert list(df.columns) == list(io.EVAL_COLUMNS) and len(df) == SIZES["eval_queries"]
        assert {len(t) for t in df["tgt_text"]} == {int(table.loc[name, "num_candidates"])}
        pairs = {(t, p) for texts, imgs in zip(df["tgt_text"], df["tgt_img_path"], strict=True)
                 for t, p in zip(texts, imgs, strict=True)}
        assert len(pairs) <= SIZES["eval_queries"] + hm.POOL  # few unique inputs even at 1000 candidates
        assert df["qry_text"].str.contains(str(table.loc[name, "qry_instruction"]), regex=False).all()
    assert sorted(p.name for p in ev.iterdir() if p.is_dir()) == sorted(hub["eval_datasets"])
    assert (ev / "images.zip").is_file() and "config_name: ImageNet_1K" in (train / "README.md").read_text()


def test_the_planted_bad_input_exactly_once(mirror, tokenizer):
    undecodable = []
    for path in sorted(mirror.rglob("*.zip")):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith(".jpg") and "/._" not in name:
                    try:
                        Image.open(BytesIO(zf.read(name))).convert("RGB")
                    except OSError:
                        undecodable.append(name)
    config, row, column = hm.CORRUPT_IMAGE
    df = pq.read_table(mirror / hm.TRAIN_REPO / config / "original-00000-of-00001.parquet").to_pandas()
    assert undecodable == [df.loc[row, column].removeprefix("images/")]
    assert sum(df[c].eq(df.loc[row, column]).sum() for c in io.TRAIN_IMAGE_COLUMNS if c in df) == 1
    duplicated, long_queries = [], []
    for name in mmeb_datasets().index:
        frame = io.validate_eval(
            pq.read_table(mirror / hm.EVAL_REPO / name / "test-00000-of-00001.parquet").to_pandas(), name)
        duplicated += [(name, r) for r in io.duplicated_ground_truth_rows(frame)]
        long_queries += [(name, r) for r, t in enumerate(frame["qry_text"]) if len(tokenizer(t).input_ids) > 300]
    assert duplicated == [hm.DUPLICATED_GROUND_TRUTH] and long_queries == [hm.LONG_QUERY]


def test_deterministic_for_a_seed(mirror, tmp_path):
    hm.write_hub_mirror(tmp_path / "same", **SIZES)
    assert _files(tmp_path / "same") == _files(mirror)
    hm.write_hub_mirror(tmp_path / "other", **{**SIZES, "seed": 4})
    other, ref = _files(tmp_path / "other"), _files(mirror)
    assert other.keys() == ref.keys() and sum(other[k] != ref[k] for k in ref) > 0.9 * len(ref)


def _params(default_params, paper, mirror: Path, results: Path, bad_input: str) -> dict:
    params = default_params.to_dict()
    params["results_dir"] = str(results)
    params["data"] = {**paper["data"], "tokenizer": {"vocab_size": 300}, "bad_input": bad_input}
    params["data"]["hub"]["local_dir"] = str(mirror)
    return params


def test_data_stage_reads_the_mirror_like_the_hub(mirror, paper, default_params, tmp_path):
    """The paper's data section with `bad_input: skip`, pointed at the mirror."""
    params = _params(default_params, paper, mirror, tmp_path / "results", "skip")
    build(params)
    data = tmp_path / "results" / "data"
    config, row, _ = hm.CORRUPT_IMAGE
    name = mmeb_datasets().reset_index().set_index("train_config").loc[config, "dataset"]
    bad = io.read_unreadable(data)
    assert list(bad) == [f"train/images/{config}/Train/{config}_qry_{row:05d}.jpg"] and "truncated" in bad[
        next(iter(bad))]
    assert io.read_dropped_train_rows(data) == {name: 1}
    manifest = io.read_manifest(data).set_index("dataset")
    assert manifest.loc[name, "train_rows"] == SIZES["train_rows"] - 1
    ind = manifest[manifest["split"] == "IND"].drop(index=name)
    assert (ind["train_rows"] == SIZES["train_rows"]).all() and (manifest["num_queries"] == 4).all()
    assert len(io.read_train(data, name)) == SIZES["train_rows"] - 1
    checks = io.read_eval_checks(data)
    dup_name, dup_row = hm.DUPLICATED_GROUND_TRUTH
    assert checks[dup_name] == {"duplicated_ground_truth_rows": 1, "candidate_count_mismatch_rows": 0}
    assert sum(sum(c.values()) for c in checks.values()) == 1 and len(checks) == 36
    assert io.duplicated_ground_truth_rows(io.read_eval(data, dup_name)) == [dup_row]  # kept for evaluation


def test_data_stage_on_the_mirror_with_bad_input_error_names_the_corrupt_image(mirror, paper, default_params,
                                                                              tmp_path):
    params = _params(default_params, paper, mirror, tmp_path / "results", "error")
    config, row, column = hm.CORRUPT_IMAGE
    path = rf"images/{config}/Train/{config}_qry_{row:05d}\.jpg"
    with pytest.raises(io.DataFormatError, match=rf"ImageNet-1K \(.*{config}/original\): row {row} column "
                                                 rf"'{column}' image '{path}' is unreadable .*truncated"):
        build(params)
