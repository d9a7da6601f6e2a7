"""Hub path end to end on a tiny local mirror, the bad-input errors, and the io readers."""

from __future__ import annotations

import io as stdio
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ssame.data import build, io
from ssame.data.hub import mmeb_datasets

TRAIN_REPO, EVAL_REPO = "TIGER-Lab/MMEB-train", "TIGER-Lab/MMEB-eval"
IMG = io.IMAGE_TOKEN


def _png(colour) -> bytes:
    buf = stdio.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path, names) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for k, name in enumerate(names):
            zf.writestr(name, _png((k * 40 % 256, 10, 200)))


def _parquet(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def _eval_rows(config: str, n_cand: int, n: int = 3) -> list[dict]:
    return [
        {
            "qry_text": f"{IMG} Represent the given image for classification.",
            "qry_img_path": f"{config}/{i}.png",
            "tgt_text": [f"label {(i + k) % n_cand}" for k in range(n_cand)],
            "tgt_img_path": [""] * n_cand,
        }
        for i in range(n)
    ]


@pytest.fixture
def mirror(tmp_path):
    local = tmp_path / "mirror"
    for config, neg in (("ImageNet_1K", False), ("HatefulMemes", True)):
        rows = [
            {
                "qry": f"{IMG} Represent the given image for classification.",
                "qry_image_path": f"images/{config}/Train/{i}.png",
                "pos_text": f"class {i}",
                "pos_image_path": "",
            }
            for i in range(5)
        ]
        if neg:
            rows = [{**r, "neg_text": "other", "neg_image_path": ""} for r in rows]
        _parquet(local / TRAIN_REPO / config / "original-00000-of-00001.parquet", rows)
        _zip(
            local / TRAIN_REPO / "images_zip" / f"{config}.zip",
            [f"images/{config}/Train/{i}.png" for i in range(5)],
        )
    _parquet(
        local / EVAL_REPO / "HatefulMemes" / "test-00000-of-00001.parquet", _eval_rows("HatefulMemes", 2)
    )
    _parquet(local / EVAL_REPO / "N24News" / "test-00000-of-00001.parquet", _eval_rows("N24News", 24))
    _zip(
        local / EVAL_REPO / "images.zip",
        [f"{c}/{i}.png" for c in ("HatefulMemes", "N24News") for i in range(3)],
    )
    hub = {
        "train_repo": TRAIN_REPO,
        "train_revision": "r1",
        "eval_repo": EVAL_REPO,
        "eval_revision": "r2",
        "train_subset": "original",
        "train_datasets": ["ImageNet_1K", "HatefulMemes"],
        "eval_datasets": ["HatefulMemes", "N24News"],
        "max_train_rows_per_dataset": 4,
        "local_dir": str(local),
    }
    params = {
        "results_dir": str(tmp_path / "results"),
        "data": {"source": "hub", "hub": hub, "tokenizer": None},
    }
    return params, local


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


def test_hub_end_to_end(mirror):
    params, _ = mirror
    params["data"]["tokenizer"] = {"vocab_size": 300}
    build(params)
    data = Path(params["results_dir"]) / "data"
    manifest = io.read_manifest(data).set_index("dataset")
    assert list(manifest.index) == ["ImageNet-1K", "N24News", "HatefulMemes"]  # resource-table order
    assert manifest.loc["ImageNet-1K", ["num_queries", "train_rows"]].tolist() == [0, 4]
    assert manifest.loc["HatefulMemes", ["num_candidates", "num_queries", "train_rows"]].tolist() == [2, 3, 4]
    assert manifest.loc["N24News", ["meta_task", "split", "num_candidates"]].tolist() == [
        "classification",
        "IND",
        24,
    ]
    train = io.read_train(data, "ImageNet-1K")
    assert len(train) == 4 and (train["neg_text"] == "").all()
    assert train.loc[0, "qry_image_path"] == "train/images/ImageNet_1K/Train/0.png"
    ev = io.read_eval(data, "N24News")
    assert ev.loc[2, "qry_img_path"] == "eval/N24News/2.png" and ev.loc[2, "tgt_img_path"] == [""] * 24
    for path in [*train["qry_image_path"], *ev["qry_img_path"]]:
        assert (io.image_root(data) / path).is_file()
    assert (data / "tokenizer" / "tokenizer.json").is_file()


def _rewrite_eval(local, mutate) -> None:
    path = local / EVAL_REPO / "N24News" / "test-00000-of-00001.parquet"
    rows = _eval_rows("N24News", 24)
    mutate(rows)
    _parquet(path, rows)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda rows: rows[1].update(qry_img_path="N24News/missing.png"), r"N24News: row 1 .*missing\.png"),
        (lambda rows: rows[2].update(tgt_img_path=[""] * 23), r"N24News.*row 2 is ragged"),
        (lambda rows: rows[1].update(tgt_text=[], tgt_img_path=[]), r"N24News.*row 1 .*empty candidate list"),
        (lambda rows: [r.pop("tgt_text") for r in rows], r"N24News.*missing column.*tgt_text"),
        (
            lambda rows: rows[0].update(tgt_text=["a", "b"], tgt_img_path=["", ""]),
            r"N24News.*row 0 has 2 candidates",
        ),
    ],
)
def test_hub_bad_eval_input(mirror, mutate, match):
    params, local = mirror
    _rewrite_eval(local, mutate)
    with pytest.raises(io.DataFormatError, match=match):
        build(params)


def test_hub_missing_train_image_and_column(mirror):
    params, local = mirror
    _zip(local / TRAIN_REPO / "images_zip" / "HatefulMemes.zip", ["images/HatefulMemes/Train/0.png"])
    with pytest.raises(io.DataFormatError, match=r"HatefulMemes: row 1 .*Train/1\.png"):
        build(params)
    _parquet(local / TRAIN_REPO / "ImageNet_1K" / "original-00000-of-00001.parquet", [{"qry": "x"}])
    with pytest.raises(io.DataFormatError, match=r"ImageNet_1K.*missing column.*qry_image_path"):
        build(params)


def test_hub_config_errors(mirror):
    params, _ = mirror
    params["data"]["hub"]["eval_datasets"] = ["NotADataset"]
    with pytest.raises(ValueError, match="NotADataset"):
        build(params)
    del params["data"]["hub"]["local_dir"]
    with pytest.raises(KeyError, match=r"data\.hub\.local_dir"):
        build(params)


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
