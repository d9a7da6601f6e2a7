"""Hub path end to end on a tiny local mirror (MMEB's real zip layout and the other one), the hub client path,
bad input (unreadable images, missing splits, unsafe paths), the counted VLM2Vec-accepted oddities, and the io
readers."""

from __future__ import annotations

import hashlib
import io as stdio
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from huggingface_hub.hf_api import RepoFile
from PIL import Image

from ssame.config import as_params
from ssame.data import build, images, io
from ssame.data.hub import mmeb_datasets

TRAIN_REPO, EVAL_REPO = "TIGER-Lab/MMEB-train", "TIGER-Lab/MMEB-eval"
IMG = io.IMAGE_TOKEN


def _png(colour) -> bytes:
    buf = stdio.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, names, junk=(), corrupt=()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for k, name in enumerate(names):
            zf.writestr(name, _png((k * 40 % 256, 10, 200))[:30] if name in corrupt else _png((k * 40 % 256, 10, 200)))
        for name in junk:
            zf.writestr(name, b"\x00\x05\x16\x07 AppleDouble")


def _parquet(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def _train_rows(config: str, neg: bool) -> list[dict]:
    rows = [
        {
            "qry": f"{IMG}\nRepresent the given image for classification\n",
            "qry_image_path": f"images/{config}/Train/{i}.png",
            "pos_text": f"class {i}",
            "pos_image_path": "",
        }
        for i in range(5)
    ]
    return [{**r, "neg_text": "other", "neg_image_path": ""} for r in rows] if neg else rows


def _eval_rows(config: str, n_cand: int, n: int = 3) -> list[dict]:
    return [
        {
            "qry_text": f"{IMG}\nRepresent the given image for classification\n",
            "qry_img_path": f"{config}/{i}.png",
            "tgt_text": [f"label {(i + k) % n_cand}" for k in range(n_cand)],
            "tgt_img_path": [""] * n_cand,
        }
        for i in range(n)
    ]


def _write_mirror(local: Path, members_prefix: str = "") -> None:
    """MMEB-train zips hold `<Config>/…` (plus macOS junk) while parquets say `images/<Config>/…`, as on the hub;
    `members_prefix="images/"` gives the other layout (members = parquet paths)."""
    for config, neg in (("ImageNet_1K", False), ("HatefulMemes", True)):
        _parquet(local / TRAIN_REPO / config / "original-00000-of-00001.parquet", _train_rows(config, neg))
        _zip(
            local / TRAIN_REPO / "images_zip" / f"{config}.zip",
            [f"{members_prefix}{config}/Train/{i}.png" for i in range(5)],
            junk=[f"__MACOSX/{config}/Train/._0.png", f"{config}/Train/._1.png"],
        )
    _parquet(local / EVAL_REPO / "HatefulMemes" / "test-00000-of-00001.parquet", _eval_rows("HatefulMemes", 2))
    _parquet(local / EVAL_REPO / "N24News" / "test-00000-of-00001.parquet", _eval_rows("N24News", 24))
    _zip(local / EVAL_REPO / "images.zip", [f"{c}/{i}.png" for c in ("HatefulMemes", "N24News") for i in range(3)],
         junk=["__MACOSX/N24News/._0.png"])


def _params(tmp_path: Path, default_params, local: Path | None) -> dict:
    params = default_params.to_dict()
    params["results_dir"] = str(tmp_path / "results")
    hub = {
        "train_repo": TRAIN_REPO,
        "train_revision": "1" * 40,
        "eval_repo": EVAL_REPO,
        "eval_revision": "2" * 40,
        "train_subset": "original",
        "train_datasets": ["ImageNet_1K", "HatefulMemes"],
        "eval_datasets": ["HatefulMemes", "N24News"],
        "max_train_rows_per_dataset": 4,
    }
    if local is not None:
        hub["local_dir"] = str(local)
    params["data"] = {"source": "hub", "hub": hub, "tokenizer": {"vocab_size": 300}}
    return params


@pytest.fixture
def mirror(tmp_path, default_params):
    local = tmp_path / "mirror"
    _write_mirror(local)
    return _params(tmp_path, default_params, local), local


def _data(params) -> Path:
    return Path(params["results_dir"]) / "data"


def test_resource_table():
    table = mmeb_datasets()
    assert len(table) == 36 and (table["split"] == "IND").sum() == 20
    assert table.loc["ImageNet-1K", "train_config"] == "ImageNet_1K"
    assert (table.loc[table["split"] == "OOD", "train_config"] == "").all()
    assert (table["split"] == "OOD").sum() == 16 and (table["qry_instruction"] != "").all()
    assert set(table["qry_modality"]) | set(table["tgt_modality"]) == {"image", "text", "image+text"}
    assert not table["qry_instruction"].str.endswith(".").any()
    # a target with text beyond its label/caption carries an instruction; bare-label targets do not
    assert ((table["tgt_instruction"] == "") == (table["tgt_modality"] == "text")).all()


def test_hub_end_to_end_on_mmebs_zip_layout(mirror):
    """Members `<Config>/…` under parquet paths `images/<Config>/…` (the old loader expected `images/…` members)."""
    params, _ = mirror
    build(params)
    data = _data(params)
    manifest = io.read_manifest(data).set_index("dataset")
    assert list(manifest.index) == ["ImageNet-1K", "N24News", "HatefulMemes"]  # resource-table order
    assert manifest.loc["ImageNet-1K", ["num_queries", "train_rows"]].tolist() == [0, 4]
    assert manifest.loc["HatefulMemes", ["num_candidates", "num_queries", "train_rows"]].tolist() == [2, 3, 4]
    assert manifest.loc["N24News", ["meta_task", "split", "num_candidates"]].tolist() == ["classification", "IND",
                                                                                           24]
    train = io.read_train(data, "ImageNet-1K")
    assert len(train) == 4 and (train["neg_text"] == "").all()
    assert train.loc[0, "qry_image_path"] == "train/images/ImageNet_1K/Train/0.png"
    ev = io.read_eval(data, "N24News")
    assert ev.loc[2, "qry_img_path"] == "eval/N24News/2.png" and ev.loc[2, "tgt_img_path"] == [""] * 24
    for path in [*train["qry_image_path"], *ev["qry_img_path"]]:
        assert (io.image_root(data) / path).is_file()
    extracted = {p.relative_to(io.image_root(data)).as_posix() for p in io.image_root(data).rglob("*") if p.is_file()}
    assert not any("__MACOSX" in p or "/._" in p for p in extracted)  # junk is ignored
    assert "train/images/ImageNet_1K/Train/4.png" not in extracted  # only what the first 4 rows reference
    assert io.read_unreadable(data) == {} and io.read_dropped_train_rows(data) == {}
    zero = {"duplicated_ground_truth_rows": 0, "candidate_count_mismatch_rows": 0}
    assert io.read_eval_checks(data) == {"HatefulMemes": zero, "N24News": zero}
    assert (data / "tokenizer" / "tokenizer.json").is_file()


def test_hub_zip_layout_with_parquet_paths_as_members(tmp_path, default_params):
    local = tmp_path / "mirror"
    _write_mirror(local, members_prefix="images/")
    params = _params(tmp_path, default_params, local)
    build(params)
    assert (io.image_root(_data(params)) / "train/images/HatefulMemes/Train/3.png").is_file()


def test_hub_client_path_uses_the_pinned_revisions(tmp_path, default_params, monkeypatch):
    """`data.hub.local_dir` is optional (schema default null): left out, the files come from the hub client at the
    pinned revisions (served here from a local copy)."""
    local = tmp_path / "mirror"
    _write_mirror(local)
    params = _params(tmp_path, default_params, None)
    assert as_params(params)["data"]["hub"]["local_dir"] is None
    seen = set()

    class FakeApi:
        def list_repo_files(self, repo, repo_type, revision):
            seen.add((repo, repo_type, revision))
            return [p.relative_to(local / repo).as_posix() for p in (local / repo).rglob("*") if p.is_file()]

        def get_paths_info(self, repo, paths, repo_type, revision):
            seen.add((repo, repo_type, revision))
            data = (local / repo / paths).read_bytes()  # verified against the LFS sha256, as on the hub
            return [RepoFile(path=paths, size=len(data), oid="0" * 40,
                             lfs={"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 134})]

    def fake_download(repo, filename, repo_type, revision, force_download):
        seen.add((repo, repo_type, revision))
        return str(local / repo / filename)

    monkeypatch.setattr("ssame.data.hub.HfApi", FakeApi)
    monkeypatch.setattr("ssame.data.hub.hf_hub_download", fake_download)
    build(params)
    assert seen == {(TRAIN_REPO, "dataset", "1" * 40), (EVAL_REPO, "dataset", "2" * 40)}
    assert len(io.read_train(_data(params), "HatefulMemes")) == 4


def test_hub_missing_split_names_revision_and_files(mirror):
    params, local = mirror
    split = local / TRAIN_REPO / "HatefulMemes" / "original-00000-of-00001.parquet"
    split.rename(split.with_name("train-00000-of-00001.parquet"))  # what the old pinned revision held
    with pytest.raises(io.DataFormatError, match=r"TIGER-Lab/MMEB-train.*'HatefulMemes' has no split 'original'.*"
                                                 r"HatefulMemes/train-00000-of-00001\.parquet"):
        build(params)


def _rewrite_eval(local, mutate) -> None:
    rows = _eval_rows("N24News", 24)
    mutate(rows)
    _parquet(local / EVAL_REPO / "N24News" / "test-00000-of-00001.parquet", rows)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda rows: rows[1].update(qry_img_path="N24News/missing.png"),
         r"N24News .*row 1 column 'qry_img_path' image 'N24News/missing\.png' is not in .*images\.zip"),
        (lambda rows: rows[2].update(tgt_img_path=[""] * 23), r"N24News.*row 2 is ragged"),
        (lambda rows: rows[1].update(tgt_text=[], tgt_img_path=[]), r"N24News.*row 1 .*empty candidate list"),
        (lambda rows: rows[0].update(tgt_text=["a", None], tgt_img_path=["", ""]), r"N24News.*row 0 .*non-string"),
        (lambda rows: [r.pop("tgt_text") for r in rows], r"N24News.*missing column.*tgt_text"),
        (lambda rows: rows[0].update(qry_img_path="../escape.png"), r"N24News.*row 0 .*unsafe image path"),
    ],
)
def test_hub_bad_eval_input(mirror, mutate, match):
    params, local = mirror
    _rewrite_eval(local, mutate)
    with pytest.raises(io.DataFormatError, match=match):
        build(params)


def test_duplicated_ground_truth_and_candidate_count_are_counted_not_errors(mirror, caplog):
    """VLM2Vec accepts both (the old loader raised): the rows are kept and counted in eval_checks.json."""
    params, local = mirror

    def mutate(rows):
        rows[0].update(tgt_text=["a", "b"], tgt_img_path=["", ""])  # 2 candidates, the resource table says 24
        rows[2]["tgt_text"][5] = rows[2]["tgt_text"][0]  # a copy of the ground truth

    _rewrite_eval(local, mutate)
    build(params)
    data = _data(params)
    assert io.read_eval_checks(data)["N24News"] == {"duplicated_ground_truth_rows": 1,
                                                    "candidate_count_mismatch_rows": 1}
    assert len(io.read_eval(data, "N24News")) == 3
    assert "repeat their ground truth" in caplog.text and "do not have the 24 candidates" in caplog.text


def test_hub_missing_train_image_and_column(mirror):
    params, local = mirror
    _zip(local / TRAIN_REPO / "images_zip" / "HatefulMemes.zip", ["HatefulMemes/Train/0.png"])
    with pytest.raises(io.DataFormatError,
                       match=r"HatefulMemes .*HatefulMemes/original\): row 1 column 'qry_image_path' image "
                             r"'images/HatefulMemes/Train/1\.png' is not in"):
        build(params)
    _zip(local / TRAIN_REPO / "images_zip" / "HatefulMemes.zip", ["Other/0.png"])
    with pytest.raises(io.DataFormatError, match=r"row 0 .*Train/0\.png' matches no member .* in any layout"):
        build(params)
    _parquet(local / TRAIN_REPO / "ImageNet_1K" / "original-00000-of-00001.parquet", [{"qry": "x"}])
    with pytest.raises(io.DataFormatError, match=r"ImageNet_1K.*missing column.*qry_image_path"):
        build(params)


def test_unsafe_zip_member(mirror):
    params, local = mirror
    _zip(local / EVAL_REPO / "images.zip", ["N24News/0.png", "../evil.png"])
    with pytest.raises(io.DataFormatError, match=r"images\.zip: unsafe member path '\.\./evil\.png'"):
        build(params)


@pytest.mark.parametrize(("file", "match"), [
    (f"{TRAIN_REPO}/ImageNet_1K/original-00000-of-00001.parquet",
     r"ImageNet_1K/original-00000-of-00001\.parquet .* is not a readable parquet file"),
    (f"{EVAL_REPO}/images.zip", r"images\.zip is not a zip file"),
])
def test_lfs_pointer_instead_of_data(mirror, file, match):
    """A clone made without git-lfs holds pointer files: named, not a pyarrow/zipfile traceback."""
    params, local = mirror
    (local / file).write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(io.DataFormatError, match=match):
        build(params)


def _corrupt(local: Path) -> None:
    """Train row 2 of HatefulMemes and eval row 1 of N24News reference truncated PNGs."""
    _zip(local / TRAIN_REPO / "images_zip" / "HatefulMemes.zip", [f"HatefulMemes/Train/{i}.png" for i in range(5)],
         corrupt={"HatefulMemes/Train/2.png"})
    _zip(local / EVAL_REPO / "images.zip", [f"{c}/{i}.png" for c in ("HatefulMemes", "N24News") for i in range(3)],
         corrupt={"N24News/1.png"})


def test_unreadable_image_is_an_error_naming_dataset_row_column_path(mirror):
    params, local = mirror
    _corrupt(local)
    with pytest.raises(io.DataFormatError, match=r"HatefulMemes \(.*HatefulMemes/original\): row 2 column "
                                                 r"'qry_image_path' image 'images/HatefulMemes/Train/2\.png' is "
                                                 r"unreadable .*; 2 unreadable image\(s\) in all"):
        build(params)


def test_unreadable_image_skip_drops_train_rows_keeps_eval_rows(mirror):
    params, local = mirror
    _corrupt(local)
    params["data"]["bad_input"] = "skip"
    build(params)
    data = _data(params)
    bad = io.read_unreadable(data)
    assert set(bad) == {"train/images/HatefulMemes/Train/2.png", "eval/N24News/1.png"}
    assert all(reason for reason in bad.values())
    assert io.read_dropped_train_rows(data) == {"HatefulMemes": 1}
    train = io.read_train(data, "HatefulMemes")
    assert len(train) == 3 and "train/images/HatefulMemes/Train/2.png" not in set(train["qry_image_path"])
    manifest = io.read_manifest(data).set_index("dataset")
    assert manifest.loc["HatefulMemes", "train_rows"] == 3 and manifest.loc["ImageNet-1K", "train_rows"] == 4
    assert io.read_eval(data, "N24News").loc[1, "qry_img_path"] == "eval/N24News/1.png"  # kept for evaluation


def test_decoding_pool_finds_every_unreadable_image(tmp_path):
    """Several chunks on a pool of 2 processes; truncated, empty and non-image files are all reported."""
    names = [f"d/{i}.png" for i in range(images.DECODE_CHUNK + 20)]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_png((1, 2, 3)))
    (tmp_path / names[3]).write_bytes(_png((1, 2, 3))[:40])
    (tmp_path / names[-1]).write_bytes(b"")
    (tmp_path / names[200]).write_bytes(b"not an image")
    bad = images.unreadable(tmp_path, names + names[:5], workers=2)
    assert set(bad) == {names[3], names[-1], names[200]}


def test_io_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        io.read_manifest(tmp_path)
    pd.DataFrame(
        [
            {
                "dataset": "X",
                "meta_task": "captioning",
                "split": "IND",
                "num_candidates": 2,
                "num_queries": 1,
                "train_rows": 0,
            }
        ]
    ).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(io.DataFormatError, match=r"row 0 \(X\) meta_task 'captioning'"):
        io.read_manifest(tmp_path)
    _parquet(tmp_path / "train" / "X.parquet", [{c: "" for c in io.TRAIN_COLUMNS} | {"pos_text": 3}])
    with pytest.raises(io.DataFormatError, match=r"X\.parquet: row 0 column 'pos_text' is int"):
        io.read_train(tmp_path, "X")
    assert io.mask_path(tmp_path, "A/b.jpg") == tmp_path / "masks" / "A" / "b.png"


def test_unreadable_and_eval_checks_readers(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"unreadable\.json"):
        io.read_unreadable(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"eval_checks\.json"):
        io.read_eval_checks(tmp_path)
    io.write_unreadable(tmp_path, {"train/a.jpg": "OSError: truncated"}, {"A": 2})
    assert io.read_unreadable(tmp_path) == {"train/a.jpg": "OSError: truncated"}
    assert io.read_dropped_train_rows(tmp_path) == {"A": 2}
    (tmp_path / io.UNREADABLE_FILE).write_text(json.dumps({"images": {}, "dropped_train_rows": {"A": -1}}))
    with pytest.raises(io.DataFormatError, match="dropped_train_rows"):
        io.read_unreadable(tmp_path)
    (tmp_path / io.EVAL_CHECKS_FILE).write_text(json.dumps({"A": {"duplicated_ground_truth_rows": 1}}))
    with pytest.raises(io.DataFormatError, match=r"'A' must hold exactly"):
        io.read_eval_checks(tmp_path)
