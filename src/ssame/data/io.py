"""Read, write and validate the data stage's output (the one reader every later stage uses)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ssame.atomic import atomic_path, write_json

IMAGE_TOKEN = "<|image_1|>"
TRAIN_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
EVAL_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
MANIFEST_COLUMNS = ("dataset", "meta_task", "split", "num_candidates", "num_queries", "train_rows")
META_TASKS = ("classification", "vqa", "retrieval", "grounding")
SPLITS = ("IND", "OOD")
TRAIN_IMAGE_COLUMNS = ("qry_image_path", "pos_image_path", "neg_image_path")
EVAL_IMAGE_COLUMNS = ("qry_img_path", "tgt_img_path")
UNREADABLE_FILE = "unreadable.json"
EVAL_CHECKS_FILE = "eval_checks.json"
EVAL_CHECK_KEYS = ("duplicated_ground_truth_rows", "candidate_count_mismatch_rows")

_EVAL_SCHEMA = pa.schema(
    [
        ("qry_text", pa.string()),
        ("qry_img_path", pa.string()),
        ("tgt_text", pa.list_(pa.string())),
        ("tgt_img_path", pa.list_(pa.string())),
    ]
)
_TRAIN_SCHEMA = pa.schema([(c, pa.string()) for c in TRAIN_COLUMNS])


class DataFormatError(ValueError):
    """Malformed benchmark data; the message names the file, row and column."""


def image_root(data_dir: str | Path) -> Path:
    """The single root every image path in the parquets is relative to."""
    return Path(data_dir) / "images"


def mask_path(data_dir: str | Path, image_path: str) -> Path:
    """Ground-truth subject mask (MMEB-mini only) of image `image_path`."""
    if not image_path:
        raise DataFormatError("mask_path: empty image path")
    return Path(data_dir) / "masks" / Path(image_path).with_suffix(".png")


def train_path(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / "train" / f"{dataset}.parquet"


def eval_path(data_dir: str | Path, dataset: str) -> Path:
    return Path(data_dir) / "eval" / f"{dataset}.parquet"


def _require_columns(df: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataFormatError(f"{source}: missing column(s) {missing}; found {list(df.columns)}")


def _kind(value: object) -> str:
    """A cell's type for messages; pandas reads a null string cell as None or NaN."""
    return "null" if value is None or (isinstance(value, float) and value != value) else type(value).__name__


def _blank(text: str, image: str) -> bool:
    """An input the encoder refuses (ssame.model.InputBuilder): no image and no text beyond whitespace."""
    return not image and not text.strip()


def validate_train(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check MMEB-train columns: every value a string ("" when missing); query and positive not blank, the negative
    absent ("", "") or not blank."""
    _require_columns(df, TRAIN_COLUMNS, source)
    df = df.loc[:, list(TRAIN_COLUMNS)].reset_index(drop=True)
    for col in TRAIN_COLUMNS:
        for row, value in enumerate(df[col]):
            if not isinstance(value, str):
                raise DataFormatError(
                    f"{source}: row {row} column {col!r} is {_kind(value)}, not str"
                )
    for side, text, image in (("query", "qry", "qry_image_path"), ("positive", "pos_text", "pos_image_path"),
                              ("negative", "neg_text", "neg_image_path")):
        for row, (t, i) in enumerate(zip(df[text], df[image], strict=True)):
            if _blank(t, i) and (side != "negative" or t):
                raise DataFormatError(f"{source}: row {row} has a blank {side} (columns {text!r} and {image!r} "
                                      "hold neither text nor an image)")
    return df


def validate_eval(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check MMEB-eval columns; candidate lists become Python lists of str of equal, non-zero length. A copy of the
    ground truth among the candidates is accepted, as VLM2Vec does (`eval_checks` counts them)."""
    _require_columns(df, EVAL_COLUMNS, source)
    df = df.loc[:, list(EVAL_COLUMNS)].reset_index(drop=True)
    for col in ("qry_text", "qry_img_path"):
        for row, value in enumerate(df[col]):
            if not isinstance(value, str):
                raise DataFormatError(
                    f"{source}: row {row} column {col!r} is {_kind(value)}, not str"
                )
    lists = {}
    for col in ("tgt_text", "tgt_img_path"):
        values = []
        for row, value in enumerate(df[col]):
            if value is None or isinstance(value, str | Mapping) or not hasattr(value, "__len__"):
                raise DataFormatError(f"{source}: row {row} column {col!r} is not a list of str")
            value = list(value)
            if not value:
                raise DataFormatError(f"{source}: row {row} column {col!r} is an empty candidate list")
            if not all(isinstance(v, str) for v in value):
                raise DataFormatError(f"{source}: row {row} column {col!r} holds a non-string candidate")
            values.append(value)
        lists[col] = values
    for row, (texts, images) in enumerate(zip(lists["tgt_text"], lists["tgt_img_path"], strict=True)):
        if len(texts) != len(images):
            raise DataFormatError(
                f"{source}: row {row} is ragged: {len(texts)} tgt_text vs {len(images)} tgt_img_path"
            )
    for row, (text, image, texts, images) in enumerate(zip(df["qry_text"], df["qry_img_path"], lists["tgt_text"],
                                                            lists["tgt_img_path"], strict=True)):
        blank = [k for k, (t, i) in enumerate(zip(texts, images, strict=True)) if _blank(t, i)]
        if _blank(text, image) or blank:
            what = "query" if _blank(text, image) else f"candidate {blank[0]}"
            raise DataFormatError(f"{source}: row {row} has a blank {what} (neither text nor an image)")
    df["tgt_text"] = pd.Series(lists["tgt_text"], dtype=object)
    df["tgt_img_path"] = pd.Series(lists["tgt_img_path"], dtype=object)
    return df


def duplicated_ground_truth_rows(df: pd.DataFrame) -> list[int]:
    """Rows of a validated eval frame whose ground truth (candidate 0) appears again among its candidates."""
    return [
        row
        for row, (texts, images) in enumerate(zip(df["tgt_text"], df["tgt_img_path"], strict=True))
        if (texts[0], images[0]) in zip(texts[1:], images[1:], strict=True)
    ]


def eval_checks(df: pd.DataFrame, num_candidates: int) -> dict[str, int]:
    """What VLM2Vec accepts and we count (`EVAL_CHECK_KEYS`): rows repeating their ground truth, and rows whose
    candidate count differs from the dataset's `num_candidates`."""
    return {
        "duplicated_ground_truth_rows": len(duplicated_ground_truth_rows(df)),
        "candidate_count_mismatch_rows": int(sum(len(t) != num_candidates for t in df["tgt_text"])),
    }


def validate_manifest(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check manifest columns, vocabularies and integer counts."""
    _require_columns(df, MANIFEST_COLUMNS, source)
    df = df.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)
    for row, rec in enumerate(df.itertuples(index=False)):
        if not isinstance(rec.dataset, str) or not rec.dataset:
            raise DataFormatError(f"{source}: row {row} dataset name {rec.dataset!r} is not a non-empty string")
        if rec.meta_task not in META_TASKS:
            raise DataFormatError(
                f"{source}: row {row} ({rec.dataset}) meta_task {rec.meta_task!r} not in {META_TASKS}"
            )
        if rec.split not in SPLITS:
            raise DataFormatError(f"{source}: row {row} ({rec.dataset}) split {rec.split!r} not in {SPLITS}")
    for col in ("num_candidates", "num_queries", "train_rows"):
        if not pd.api.types.is_integer_dtype(df[col]) or (df[col] < 0).any():
            raise DataFormatError(f"{source}: column {col!r} must hold non-negative integers")
    dupes = df["dataset"][df["dataset"].duplicated()].tolist()
    if dupes:
        raise DataFormatError(f"{source}: duplicate dataset rows {dupes}")
    ood_train = df[(df["split"] == "OOD") & (df["train_rows"] != 0)]["dataset"].tolist()
    if ood_train:
        raise DataFormatError(f"{source}: OOD dataset(s) {ood_train} must have train_rows 0")
    return df


@dataclass(frozen=True, slots=True)
class Ref:
    """One image path in one cell of a parquet; `where` names the dataset (and file) in messages."""

    where: str
    row: int
    column: str
    path: str

    def __str__(self) -> str:
        return f"{self.where}: row {self.row} column {self.column!r} image {self.path!r}"


def references(df: pd.DataFrame, columns: Iterable[str], where: str) -> list[Ref]:
    """Every non-empty image path of `columns` (str or list-of-str cells), in row order."""
    refs = []
    for col in columns:
        for row, value in enumerate(df[col]):
            refs += [Ref(where, row, col, p) for p in ([value] if isinstance(value, str) else value) if p]
    return sorted(refs, key=lambda r: r.row)


def first_reference(df: pd.DataFrame, columns: Iterable[str], where: str, paths: set[str]) -> Ref:
    """The first reference (row order) to one of `paths`."""
    for ref in references(df, columns, where):
        if ref.path in paths:
            return ref
    raise KeyError(f"{where}: no row references {sorted(paths)[:3]}")


def check_images(data_dir: str | Path, where: str, df: pd.DataFrame, columns: Iterable[str]) -> None:
    """Raise naming `where` (the dataset), row, column and path for the first referenced image (row order) that is
    not a file under the image root; each distinct path is looked up once."""
    root = image_root(data_dir)
    paths = {p for col in columns for value in df[col] for p in ([value] if isinstance(value, str) else value)}
    missing = {p for p in paths - {""} if not (root / p).is_file()}
    if missing:
        raise DataFormatError(f"{first_reference(df, columns, where, missing)} not found under {root}")


def read_manifest(data_dir: str | Path) -> pd.DataFrame:
    path = Path(data_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        df = pd.read_csv(path, keep_default_na=False)
    except ValueError as err:  # pandas' ParserError and EmptyDataError, UnicodeDecodeError
        raise DataFormatError(f"{path}: not a readable CSV file: {type(err).__name__}: {err}") from err
    return validate_manifest(df, str(path))


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"parquet not found: {path}")
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as err:
        raise DataFormatError(f"{path}: not a readable parquet file (rerun the data stage): {err}") from err


def read_train(data_dir: str | Path, dataset: str) -> pd.DataFrame:
    path = train_path(data_dir, dataset)
    return validate_train(_read_parquet(path), str(path))


def read_eval(data_dir: str | Path, dataset: str) -> pd.DataFrame:
    path = eval_path(data_dir, dataset)
    return validate_eval(_read_parquet(path), f"dataset {dataset} ({path})")


def write_train(data_dir: str | Path, dataset: str, df: pd.DataFrame) -> Path:
    path = train_path(data_dir, dataset)
    df = validate_train(df, f"train/{dataset}")
    check_images(data_dir, dataset, df, TRAIN_IMAGE_COLUMNS)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, schema=_TRAIN_SCHEMA, preserve_index=False), tmp)
    return path


def write_eval(data_dir: str | Path, dataset: str, df: pd.DataFrame) -> Path:
    path = eval_path(data_dir, dataset)
    df = validate_eval(df, f"eval/{dataset}")
    check_images(data_dir, dataset, df, EVAL_IMAGE_COLUMNS)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, schema=_EVAL_SCHEMA, preserve_index=False), tmp)
    return path


def write_manifest(data_dir: str | Path, rows: list[dict]) -> Path:
    path = Path(data_dir) / "manifest.csv"
    df = validate_manifest(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), str(path))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    return path


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"data stage output not found: {path} (rerun the data stage)")
    try:
        return json.loads(path.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise DataFormatError(f"{path}: not valid JSON: {err}") from err


def _counts(value: object, path: Path, key: str) -> dict[str, int]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(n, int) and not isinstance(n, bool) and n >= 0 for k, n in value.items()
    ):
        raise DataFormatError(f"{path}: {key!r} must map names to non-negative integers")
    return dict(value)


def write_unreadable(data_dir: str | Path, images: Mapping[str, str], dropped_train_rows: Mapping[str, int]) -> Path:
    """`unreadable.json`: {"images": {path under images/: reason}, "dropped_train_rows": {dataset: rows}}."""
    record = {"images": dict(images), "dropped_train_rows": dict(dropped_train_rows)}
    return write_json(Path(data_dir) / UNREADABLE_FILE, record, sort_keys=True)


def _read_unreadable(data_dir: str | Path) -> tuple[dict[str, str], dict[str, int]]:
    path = Path(data_dir) / UNREADABLE_FILE
    record = _read_json(path)
    if not isinstance(record, dict) or set(record) != {"images", "dropped_train_rows"}:
        raise DataFormatError(f"{path}: expected the keys 'images' and 'dropped_train_rows'")
    images = record["images"]
    if not isinstance(images, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in images.items()):
        raise DataFormatError(f"{path}: 'images' must map image paths to reasons (strings)")
    return images, _counts(record["dropped_train_rows"], path, "dropped_train_rows")


def read_unreadable(data_dir: str | Path) -> dict[str, str]:
    """Images (paths relative to `image_root`) the data stage could not decode, with the reason; the training rows
    that referenced them are already dropped, evaluation rows are kept (`data.bad_input`)."""
    return _read_unreadable(data_dir)[0]


def read_dropped_train_rows(data_dir: str | Path) -> dict[str, int]:
    """Training rows the data stage dropped per dataset because they reference an unreadable image."""
    return _read_unreadable(data_dir)[1]


def write_eval_checks(data_dir: str | Path, checks: Mapping[str, Mapping[str, int]]) -> Path:
    """`eval_checks.json`: {dataset: {"duplicated_ground_truth_rows": n, "candidate_count_mismatch_rows": n}}."""
    return write_json(Path(data_dir) / EVAL_CHECKS_FILE, {d: dict(c) for d, c in checks.items()})


def read_eval_checks(data_dir: str | Path) -> dict[str, dict[str, int]]:
    """Per evaluation dataset, the rows VLM2Vec accepts that the data stage counted (`EVAL_CHECK_KEYS`)."""
    path = Path(data_dir) / EVAL_CHECKS_FILE
    record = _read_json(path)
    if not isinstance(record, dict):
        raise DataFormatError(f"{path}: expected an object of datasets")
    out = {}
    for dataset, counts in record.items():
        counts = _counts(counts, path, dataset)
        if set(counts) != set(EVAL_CHECK_KEYS):
            raise DataFormatError(f"{path}: {dataset!r} must hold exactly {list(EVAL_CHECK_KEYS)}")
        out[dataset] = counts
    return out
