"""Bad input at scale: hypothesis throws malformed params, hub parquets, rows, images, data-stage files, saliency
shards and checkpoint records at every reader of the project.

Each reader must answer with an error of the project's types (ParamsError, DataFormatError, ShardError,
ImageDecodeError, the checkpoint's ValueError) whose message names the file and the row, column or key, or with an
explicit, counted skip (`data.bad_input: skip` -> unreadable.json, VLM2Vec-accepted oddities -> eval_checks.json,
`evaluate.drop_unreadable` -> the scores' dropped rows): never a bare library traceback, never a different result.
`INVENTORY` is the list below in code (each test runs every class of its group); a test keeps the two equal.

Input classes (52):
- params: garbage_bytes, garbage_text, not_a_mapping, unknown_key, missing_key, wrong_type, integral_float,
  non_finite, duplicate_key, deep_nesting
- hub: missing_column, wrong_dtype, null_cell, candidate_lengths, duplicate_ground_truth, blank_input, empty_file,
  truncated, random_bytes, zero_rows, shard_schema_mismatch, unreadable_image
- images: zero_bytes, random_bytes, truncated_png, truncated_jpeg, corrupt_png, wrong_extension, oversized_header
- stage_files: manifest_bytes, manifest_column, manifest_value, parquet_bytes, parquet_row, json_bytes, json_shape
- saliency: manifest_garbage, zero_bytes, truncated, random_bytes, wrong_dtype, wrong_ndim, wrong_rows
- checkpoint: record_bytes, not_an_object, missing_key, wrong_type, step_mismatch, folder_name
- eval_rows: unreadable_refs, row_count, missing_checks
"""

from __future__ import annotations

import copy
import io as stdio
import json
import math
import re
import string
import struct
import tempfile
import textwrap
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

import ssame.train.checkpoint as ckpt
from ssame.config import Params, ParamsError, as_params, fingerprint, load_params
from ssame.data import images, io
from ssame.data.hub import build_hub
from ssame.evaluate import rank_rows, rows, unique_inputs
from ssame.model.inputs import ImageDecodeError, InputBuilder
from ssame.saliency.experts import read_image
from ssame.saliency.store import FIELDS, SaliencyStore, ShardError, write_shard
from ssame.train.batches import training_rows

REPO = Path(__file__).resolve().parents[1]
DEFAULT = load_params(REPO / "params" / "default.yaml").to_dict()
Case = Callable[..., None]


def _run(case: Case, examples: int, *args: Any, shrink: bool = True) -> None:
    """`examples` hypothesis examples of `case(data, tmp_dir, *args)`, each in a fresh temporary folder."""
    phases = [phase for phase in Phase if shrink or phase is not Phase.shrink]

    @settings(max_examples=examples, deadline=None, database=None, phases=phases,
              suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            case(data, Path(tmp), *args)

    example()


def _names(err: pytest.ExceptionInfo, *parts: object) -> None:
    assert all(str(p) in str(err.value) for p in parts), (parts, str(err.value))


def _leaves(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*path, k))]
    return [(path, node)]


def _maps(node: Any, path: tuple = ()) -> list[tuple]:
    return [path] + [p for k, v in node.items() for p in _maps(v, (*path, k))] if isinstance(node, dict) else []


def _at(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


# --- params: ssame.config.load_params --------------------------------------------------------------------------

LEAVES = _leaves(DEFAULT)
WORD = st.text(string.ascii_letters + "_", min_size=1, max_size=10)
BY_TYPE = {str: st.text(string.ascii_letters + string.digits + " _-./", max_size=8), int: st.integers(),
           float: st.floats(allow_nan=False, allow_infinity=False), bool: st.booleans(), type(None): st.none(),
           list: st.lists(st.integers(), max_size=3), dict: st.dictionaries(WORD, st.integers(), max_size=2)}
SCALAR = st.one_of([BY_TYPE[t] for t in (str, int, float, bool, type(None))])
VALUE = st.one_of(list(BY_TYPE.values()))


def _params_file(tmp: Path, content: str | bytes) -> Path:
    path = tmp / "params.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _refused(tmp: Path, content: str | bytes, *named: object) -> None:
    path = _params_file(tmp, content)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    _names(err, path, *named)


def _with(path: tuple, value: Any) -> dict:
    raw = copy.deepcopy(DEFAULT)
    _at(raw, path[:-1])[path[-1]] = value
    return raw


def _named(raw: dict, path: tuple) -> Params | None:
    """as_params(raw) (what load_params runs on the parsed YAML), or None once its error has named `path`."""
    try:
        return as_params(raw)
    except ParamsError as err:
        assert ".".join(map(str, path)) in str(err), (path, str(err))
        return None


def _numeric(leaf: tuple) -> bool:
    return isinstance(leaf[1], int | float) and not isinstance(leaf[1], bool)


def _other_type(value: Any) -> st.SearchStrategy:
    return st.one_of([strategy for kind, strategy in BY_TYPE.items() if kind is not type(value)])


# one example replaces (or deletes) every leaf in turn: each path is tried, not a random few
def _wrong_type(data: st.DataObject, tmp: Path) -> None:
    for path, value in LEAVES:
        new = data.draw(_other_type(value), label=".".join(path))
        loaded = _named(_with(path, new), path)
        if loaded is not None:  # the schema allows it: then exactly that value, nothing coerced
            got = _at(loaded.to_dict(), path)
            assert got == new and type(got) is type(new), (path, new, got)


def _integral_float(data: st.DataObject, tmp: Path) -> None:
    for path, _ in [leaf for leaf in LEAVES if _numeric(leaf) and isinstance(leaf[1], int)]:  # all `integer`
        assert _named(_with(path, float(data.draw(st.integers(0, 10**6)))), path) is None  # 150.0 is no integer


def _non_finite(data: st.DataObject, tmp: Path) -> None:
    for path, _ in filter(_numeric, LEAVES):
        assert _named(_with(path, data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))), path) is None


def _missing_key(data: st.DataObject, tmp: Path) -> None:
    for path, _ in data.draw(st.permutations(LEAVES)):
        raw = copy.deepcopy(DEFAULT)
        del _at(raw, path[:-1])[path[-1]]
        try:
            loaded = as_params(raw)
        except ParamsError as err:
            assert f"'{path[-1]}'" in str(err) and ".".join(path[:-1]) in str(err), str(err)
            continue
        _at(loaded, path)  # a schema default filled it


def _deep_nesting(data: st.DataObject, tmp: Path) -> None:
    depth, (opening, closing) = data.draw(st.integers(200, 3000)), data.draw(st.sampled_from(["[]", "{}"]))
    _refused(tmp, opening * depth + closing * depth)


def _duplicate_key(data: st.DataObject, tmp: Path) -> None:
    sections = [k for k, v in DEFAULT.items() if isinstance(v, dict) and v]
    section = data.draw(st.sampled_from([None, *sections]))
    node = DEFAULT if section is None else DEFAULT[section]
    key = data.draw(st.sampled_from(sorted(node)))
    twice = yaml.safe_dump(node) + yaml.safe_dump({key: node[key]})
    if section is not None:
        twice = yaml.safe_dump({k: v for k, v in DEFAULT.items() if k != section}) + f"{section}:\n" + textwrap.indent(
            twice, "  ")
    _refused(tmp, twice, f"duplicate key '{key}'")


def _unknown_key(data: st.DataObject, tmp: Path) -> None:
    path = data.draw(st.sampled_from(_maps(DEFAULT)))
    key = data.draw(st.one_of(WORD, st.integers()).filter(lambda k: k not in _at(DEFAULT, path)))
    raw = copy.deepcopy(DEFAULT)
    _at(raw, path)[key] = data.draw(SCALAR)
    _refused(tmp, yaml.safe_dump(raw), f"'{'.'.join(map(str, (*path, key)))}'")


PARAMS: dict[str, Case] = {
    "garbage_bytes": lambda data, tmp: _refused(tmp, data.draw(st.binary(max_size=200))),
    "garbage_text": lambda data, tmp: _refused(tmp, data.draw(st.text(max_size=200))),
    "not_a_mapping": lambda data, tmp: _refused(tmp, yaml.safe_dump(data.draw(st.one_of(
        st.lists(SCALAR, max_size=3), st.integers(), st.text(string.ascii_letters, min_size=1)))), "mapping"),
    "unknown_key": _unknown_key,
    "missing_key": _missing_key,
    "wrong_type": _wrong_type,
    "integral_float": _integral_float,
    "non_finite": _non_finite,
    "duplicate_key": _duplicate_key,
    "deep_nesting": _deep_nesting,
}


PARAMS_EXAMPLES = {"deep_nesting": 4, "wrong_type": 3, "integral_float": 2, "non_finite": 2, "missing_key": 1}


@pytest.mark.parametrize("case", list(PARAMS))
def test_params(case):
    # a RecursionError takes a second; the loops try every leaf (their messages name it: no shrinking needed)
    _run(PARAMS[case], PARAMS_EXAMPLES.get(case, 30), shrink=case not in PARAMS_EXAMPLES)


# --- hub: ssame.data.hub.build_hub on a local mirror (MMEB-train and MMEB-eval parquets, image zips) --------------

TRAIN_REPO, EVAL_REPO, CONFIG, N = "TIGER-Lab/MMEB-train", "TIGER-Lab/MMEB-eval", "HatefulMemes", 4
SPLIT_FILE = {"train": f"{CONFIG}/original-00000-of-00001.parquet", "eval": f"{CONFIG}/test-00000-of-00001.parquet"}
SOURCE = {"train": f"{CONFIG}/original", "eval": f"{CONFIG}/test"}  # how messages name the split
REPO_OF = {"train": TRAIN_REPO, "eval": EVAL_REPO}
TRAIN_IMAGE = "images/HatefulMemes/Train/{}.png"
HUB = dict(as_params({**DEFAULT, "data": {"source": "hub", "tokenizer": {"vocab_size": 300}, "hub": {
    "train_repo": TRAIN_REPO, "train_revision": "1" * 40, "eval_repo": EVAL_REPO, "eval_revision": "2" * 40,
    "train_subset": "original", "train_datasets": [CONFIG], "eval_datasets": [CONFIG],
    "max_train_rows_per_dataset": N}}})["data"]["hub"])
SPLIT = st.sampled_from(["train", "eval"])


def _png(k: int = 0, size: int = 8, fmt: str = "PNG") -> bytes:
    buf = stdio.BytesIO()
    Image.new("RGB", (size, size), (k * 40 % 256, 10, 200)).save(buf, format=fmt)
    return buf.getvalue()


def _train_rows() -> list[dict]:
    return [{"qry": f"{io.IMAGE_TOKEN}\nRepresent the given image {i}", "qry_image_path": TRAIN_IMAGE.format(i),
             "pos_text": f"class {i}", "pos_image_path": "", "neg_text": "other", "neg_image_path": ""}
            for i in range(N)]


def _eval_rows() -> list[dict]:
    return [{"qry_text": f"{io.IMAGE_TOKEN}\nRepresent the given image", "qry_img_path": f"{CONFIG}/{i}.png",
             "tgt_text": [f"label {i}", f"label {i + 1}"], "tgt_img_path": ["", ""]} for i in range(N)]


def _rows(split: str) -> list[dict]:
    return _train_rows() if split == "train" else _eval_rows()


def _mirror(root: Path, replaced: dict[str, list[dict]] | None = None,
            bad_image: tuple[str, int, bytes] | None = None) -> Path:
    """A mirror of both repos; `replaced` gives the rows of a split, `bad_image` = (split, row, bytes) replaces one
    referenced image."""
    local, replaced = root / "mirror", replaced or {}
    for split in ("train", "eval"):
        rows_ = replaced.get(split) or _rows(split)
        path = local / REPO_OF[split] / SPLIT_FILE[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows_).to_parquet(path, index=False)
    for split, zip_path, member in (("train", f"{TRAIN_REPO}/images_zip/{CONFIG}.zip", f"{CONFIG}/Train/{{}}.png"),
                                    ("eval", f"{EVAL_REPO}/images.zip", f"{CONFIG}/{{}}.png")):
        (local / zip_path).parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(local / zip_path, "w") as zf:
            for i in range(N):
                bad = bad_image is not None and bad_image[:2] == (split, i)
                zf.writestr(member.format(i), bad_image[2] if bad else _png(i))
    return local


def _build(root: Path, bad_input: str = "error") -> Path:
    out = root / "data"
    out.mkdir(exist_ok=True)
    build_hub({**HUB, "local_dir": str(root / "mirror")}, out, bad_input)
    return out


def _hub_refuses(root: Path, *named: object) -> pytest.ExceptionInfo:
    with pytest.raises(io.DataFormatError) as err:
        _build(root)
    _names(err, *named)
    return err


def _split_file(root: Path, split: str) -> Path:
    return root / "mirror" / REPO_OF[split] / SPLIT_FILE[split]


def _hub_missing_column(data: st.DataObject, root: Path) -> None:
    split = data.draw(SPLIT)
    column = data.draw(st.sampled_from(io.TRAIN_COLUMNS if split == "train" else io.EVAL_COLUMNS))
    _mirror(root, {split: [{k: v for k, v in r.items() if k != column} for r in _rows(split)]})
    if column in ("neg_text", "neg_image_path"):  # optional in MMEB-train: read as "" (no negative)
        assert (io.read_train(_build(root), CONFIG)[column] == "").all()
    else:
        _hub_refuses(root, SOURCE[split], "missing column", column)


WRONG = {"int": st.integers(-10**9, 10**9), "float": st.floats(allow_nan=False), "bool": st.booleans(),
         "bytes": st.binary(), "struct": st.fixed_dictionaries({"a": st.text(max_size=3)}),
         "nested": st.lists(st.lists(st.text(max_size=2), max_size=2), max_size=2)}


def _hub_wrong_dtype(data: st.DataObject, root: Path) -> None:
    split = data.draw(SPLIT)
    column = data.draw(st.sampled_from(io.TRAIN_COLUMNS if split == "train" else io.EVAL_COLUMNS))
    values = data.draw(st.sampled_from(sorted(WRONG)).flatmap(lambda k: st.lists(WRONG[k], min_size=N, max_size=N)))
    _mirror(root, {split: [{**r, column: v} for r, v in zip(_rows(split), values, strict=True)]})
    _hub_refuses(root, SOURCE[split], "row 0", repr(column))


def _hub_null_cell(data: st.DataObject, root: Path) -> None:
    split, row = data.draw(SPLIT), data.draw(st.integers(0, N - 1))
    rows_ = _rows(split)
    column = data.draw(st.sampled_from(sorted(rows_[0])))
    if split == "eval" and column.startswith("tgt") and data.draw(st.booleans()):
        rows_[row][column] = [None, *rows_[row][column][1:]]  # a null candidate
    else:
        rows_[row][column] = None
    _mirror(root, {split: rows_})
    if split == "eval":
        _hub_refuses(root, SOURCE[split], f"row {row}", repr(column))
        return
    cells = {**rows_[row], column: ""}  # MMEB-train: a null cell reads as ""
    if (not cells["qry"] and not cells["qry_image_path"]) or (not cells["pos_text"] and not cells["pos_image_path"]):
        _hub_refuses(root, SOURCE[split], f"row {row}", "blank")
    else:
        assert io.read_train(_build(root), CONFIG).loc[row, column] == ""


def _hub_candidate_lengths(data: st.DataObject, root: Path) -> None:
    lengths = data.draw(st.lists(st.one_of(st.integers(1, 4).map(lambda n: (n, n)),
                                           st.tuples(st.integers(0, 4), st.integers(0, 4))), min_size=N, max_size=N))
    evals = [{**r, "tgt_text": [f"label {i}.{k}" for k in range(nt)], "tgt_img_path": [""] * ni}
             for i, (r, (nt, ni)) in enumerate(zip(_eval_rows(), lengths, strict=True))]
    _mirror(root, {"eval": evals})
    bad = {i for i, (nt, ni) in enumerate(lengths) if not nt or not ni or nt != ni}
    if bad:
        err = _hub_refuses(root, SOURCE["eval"])
        assert int(re.search(r"row (\d+)", str(err.value)).group(1)) in bad, str(err.value)
        return
    out = _build(root)  # kept as VLM2Vec keeps them, and counted
    assert io.read_eval_checks(out)[CONFIG]["candidate_count_mismatch_rows"] == sum(nt != 2 for nt, _ in lengths)
    assert len(io.read_eval(out, CONFIG)) == N


def _hub_duplicate_ground_truth(data: st.DataObject, root: Path) -> None:
    repeated = data.draw(st.sets(st.integers(0, N - 1)))
    evals = [{**r, "tgt_text": [*r["tgt_text"], r["tgt_text"][0]] if i in repeated else r["tgt_text"] + ["x"],
              "tgt_img_path": ["", "", ""]} for i, r in enumerate(_eval_rows())]
    _mirror(root, {"eval": evals})
    out = _build(root)
    assert io.read_eval_checks(out)[CONFIG] == {"duplicated_ground_truth_rows": len(repeated),
                                               "candidate_count_mismatch_rows": N}
    assert len(io.read_eval(out, CONFIG)) == N


def _hub_blank_input(data: st.DataObject, root: Path) -> None:
    split, row = data.draw(SPLIT), data.draw(st.integers(0, N - 1))
    blank = data.draw(st.sampled_from(["", " ", "\n\t"]))
    rows_ = _rows(split)
    if split == "train":
        side = data.draw(st.sampled_from([("qry", "qry_image_path"), ("pos_text", "pos_image_path"),
                                          ("neg_text", "neg_image_path")]))
        rows_[row].update({side[0]: blank, side[1]: ""})
        absent = side[0] == "neg_text" and not blank  # ("", ""): no hard negative
    else:
        k = data.draw(st.integers(-1, 1))
        if k < 0:
            rows_[row].update(qry_text=blank, qry_img_path="")
        else:
            rows_[row]["tgt_text"][k] = blank
        absent = False
    _mirror(root, {split: rows_})
    if absent:
        assert io.read_train(_build(root), CONFIG).loc[row, "neg_text"] == ""
    else:
        _hub_refuses(root, SOURCE[split], f"row {row}", "blank")


def _hub_bytes(root: Path, split: str, content: bytes) -> None:
    _mirror(root)
    _split_file(root, split).write_bytes(content)
    _hub_refuses(root, SPLIT_FILE[split], "not a readable parquet file")


def _hub_truncated(data: st.DataObject, root: Path) -> None:
    split = data.draw(SPLIT)
    _mirror(root)
    whole = _split_file(root, split).read_bytes()
    _hub_bytes(root, split, whole[:data.draw(st.integers(0, len(whole) - 1))])


def _hub_zero_rows(data: st.DataObject, root: Path) -> None:
    split = data.draw(SPLIT)
    _mirror(root)
    pq.write_table(pq.read_table(_split_file(root, split)).slice(0, 0), _split_file(root, split))
    _hub_refuses(root, SOURCE[split], "no rows")


def _hub_shard_schema_mismatch(data: st.DataObject, root: Path) -> None:
    split = data.draw(SPLIT)
    rows_ = _rows(split)
    column = data.draw(st.sampled_from(sorted(rows_[0])))
    other = ([{k: v for k, v in r.items() if k != column} for r in rows_] if data.draw(st.booleans())
             else [{**r, column: 7} for r in rows_])
    _mirror(root)
    second = SPLIT_FILE[split].replace("00000-of-00001", "00001-of-00002")
    pd.DataFrame(other).to_parquet(root / "mirror" / REPO_OF[split] / second, index=False)
    _hub_refuses(root, SOURCE[split], SPLIT_FILE[split], second, "do not share one schema")


def _decodes(content: bytes) -> bool:
    """An independent oracle: PIL opens and converts it, as training does."""
    try:
        with Image.open(stdio.BytesIO(content)) as image:
            image.convert("RGB")
        return True
    except Exception:
        return False


def _hub_unreadable_image(data: st.DataObject, root: Path) -> None:
    split, row, bad_input = data.draw(SPLIT), data.draw(st.integers(0, N - 1)), data.draw(st.sampled_from(
        ["error", "skip"]))
    content = data.draw(st.sampled_from(sorted(IMAGES)).flatmap(lambda k: IMAGES[k]))[0]
    _mirror(root, bad_image=(split, row, content))
    path = TRAIN_IMAGE.format(row) if split == "train" else f"{CONFIG}/{row}.png"
    if _decodes(content):
        assert io.read_unreadable(_build(root, bad_input)) == {}
    elif bad_input == "error":
        _hub_refuses(root, f"row {row} column", path, "unreadable")
    else:
        out = _build(root, bad_input)
        assert set(io.read_unreadable(out)) == {f"{split}/{path}"}
        train, evals = io.read_train(out, CONFIG), io.read_eval(out, CONFIG)
        assert io.read_dropped_train_rows(out) == ({CONFIG: 1} if split == "train" else {})
        assert len(train) == N - (split == "train") and f"train/{path}" not in set(train["qry_image_path"])
        assert len(evals) == N  # evaluation rows are kept; evaluate.drop_unreadable decides


HUB_CASES: dict[str, Case] = {
    "missing_column": _hub_missing_column,
    "wrong_dtype": _hub_wrong_dtype,
    "null_cell": _hub_null_cell,
    "candidate_lengths": _hub_candidate_lengths,
    "duplicate_ground_truth": _hub_duplicate_ground_truth,
    "blank_input": _hub_blank_input,
    "empty_file": lambda data, root: _hub_bytes(root, data.draw(SPLIT), b""),
    "truncated": _hub_truncated,
    "random_bytes": lambda data, root: _hub_bytes(root, data.draw(SPLIT), data.draw(
        st.sampled_from([b"", b"PAR1"])) + data.draw(st.binary(max_size=300))),
    "zero_rows": _hub_zero_rows,
    "shard_schema_mismatch": _hub_shard_schema_mismatch,
    "unreadable_image": _hub_unreadable_image,
}


@pytest.mark.parametrize("case", list(HUB_CASES))
def test_hub(case):
    _run(HUB_CASES[case], 25)


# --- images: the data stage's check, training/evaluation's loader and the saliency stage's reader agree ----------

MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP", b"P6\n",
         b"qoif", b"\x00\x00\x01\x00", b"%!PS"]
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "WEBP"]


def _bomb(size: tuple[int, int]) -> bytes:
    """A PNG header announcing `size` pixels (PIL refuses over 2 x Image.MAX_IMAGE_PIXELS)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return MAGIC[0] + chunk(b"IHDR", struct.pack(">IIBBBBB", *size, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _cut(encoded: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return encoded.flatmap(lambda b: st.integers(0, len(b) - 1).map(lambda n: b[:n]))


def _flip(content: bytes) -> st.SearchStrategy[bytes]:
    return st.lists(st.tuples(st.integers(8, len(content) - 1), st.integers(1, 255)), min_size=1, max_size=4).map(
        lambda flips: bytes(b ^ next((x for i, x in flips if i == k), 0) for k, b in enumerate(content)))


# each class: (bytes, file name) — the name's extension need not match the content
IMAGES: dict[str, st.SearchStrategy[tuple[bytes, str]]] = {
    "zero_bytes": st.just((b"", "x.png")),
    "random_bytes": st.tuples(st.builds(bytes.__add__, st.sampled_from([b"", *MAGIC]), st.binary(max_size=200)),
                              st.just("x.jpg")),
    "truncated_png": st.tuples(_cut(st.integers(1, 32).map(lambda n: _png(n, n))), st.just("x.png")),
    "truncated_jpeg": st.tuples(_cut(st.integers(1, 32).map(lambda n: _png(n, n, "JPEG"))), st.just("x.jpg")),
    "corrupt_png": st.tuples(st.integers(1, 32).map(lambda n: _png(n, n)).flatmap(_flip), st.just("x.png")),
    "wrong_extension": st.tuples(st.tuples(st.integers(1, 32), st.sampled_from(FORMATS)).map(
        lambda a: _png(a[0], a[0], a[1])), st.sampled_from(["x.jpg", "x.png", "x.gif", "x.txt", "x"])),
    "oversized_header": st.tuples(st.tuples(st.integers(15_000, 60_000), st.integers(15_000, 60_000)).map(_bomb),
                                  st.just("x.png")),
}
MUST = {"zero_bytes": False, "wrong_extension": True, "oversized_header": False}  # verdicts known in advance


def _image_case(data: st.DataObject, root: Path, case: str, tokenizer: Any, image_processor: Any) -> None:
    content, name = data.draw(IMAGES[case])
    (root / name).write_bytes(content)
    bad = images.unreadable(root, [name], workers=1)
    try:
        InputBuilder(tokenizer, image_processor, root, None)._load(name)
        loaded = True
    except ImageDecodeError as err:
        assert err.path == name and str(root / name) in str(err)
        loaded = False
    try:
        read_image(root / name)
        read = True
    except ValueError as err:
        assert str(root / name) in str(err)
        read = False
    assert (name not in bad) == loaded == read == MUST.get(case, loaded), (bad, loaded, read)
    assert all(bad.values())  # a reason for each


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # corrupt EXIF, decompression bomb warnings
@pytest.mark.parametrize("case", list(IMAGES))
def test_images(case, tokenizer, tiny_stack):
    _run(_image_case, 40, case, tokenizer, tiny_stack[1])


# --- stage files: what the data stage writes, as later stages read it ----------------------------------------------

MANIFEST = {"dataset": CONFIG, "meta_task": "classification", "split": "IND", "num_candidates": 2, "num_queries": N,
            "train_rows": N}
STAGE_JSON = {io.UNREADABLE_FILE: (io.read_unreadable, io.read_dropped_train_rows), io.EVAL_CHECKS_FILE:
              (io.read_eval_checks,)}


def _stage(root: Path) -> Path:
    """A data stage output with one dataset: text-only rows, no images."""
    data_dir = root / "data"
    io.write_manifest(data_dir, [MANIFEST])
    io.write_train(data_dir, CONFIG, pd.DataFrame([{**r, "qry_image_path": ""} for r in _train_rows()]))
    io.write_eval(data_dir, CONFIG, pd.DataFrame([{**r, "qry_img_path": ""} for r in _eval_rows()]))
    io.write_unreadable(data_dir, {}, {})
    io.write_eval_checks(data_dir, {CONFIG: dict.fromkeys(io.EVAL_CHECK_KEYS, 0)})
    return data_dir


def _manifest_refused(data_dir: Path, *named: object) -> None:
    for reader in (io.read_manifest, training_rows):
        with pytest.raises(io.DataFormatError) as err:
            reader(data_dir)
        _names(err, data_dir / "manifest.csv", *named)


def _manifest_bytes(data: st.DataObject, root: Path) -> None:
    data_dir = _stage(root)
    (data_dir / "manifest.csv").write_bytes(data.draw(st.binary(max_size=300)))
    _manifest_refused(data_dir)


def _manifest_column(data: st.DataObject, root: Path) -> None:
    data_dir = _stage(root)
    column = data.draw(st.sampled_from(io.MANIFEST_COLUMNS))
    pd.DataFrame([MANIFEST]).drop(columns=column).to_csv(data_dir / "manifest.csv", index=False)
    _manifest_refused(data_dir, column)


MANIFEST_BAD = [("meta_task", "captioning"), ("split", "ID"), ("num_candidates", -1), ("num_queries", 2.5),
                ("train_rows", ""), ("dataset", ""), ("dataset", 123)]


def _manifest_value(data: st.DataObject, root: Path) -> None:
    data_dir = _stage(root)
    kind = data.draw(st.sampled_from([*MANIFEST_BAD, "duplicate", "ood_train"]))
    rows_ = [MANIFEST, MANIFEST] if kind == "duplicate" else [{**MANIFEST, "split": "OOD"} if kind == "ood_train"
                                                               else {**MANIFEST, kind[0]: kind[1]}]
    pd.DataFrame(rows_).to_csv(data_dir / "manifest.csv", index=False)
    _manifest_refused(data_dir, *([kind[0]] if isinstance(kind, tuple) and kind[0] != "dataset" else []))


def _parquet_refused(data_dir: Path, split: str, *named: object) -> None:
    path = (io.train_path if split == "train" else io.eval_path)(data_dir, CONFIG)
    readers = [lambda: io.read_train(data_dir, CONFIG), lambda: training_rows(data_dir)] if split == "train" else [
        lambda: io.read_eval(data_dir, CONFIG)]
    for reader in readers:
        with pytest.raises(io.DataFormatError) as err:
            reader()
        _names(err, path, *named)


def _parquet_bytes(data: st.DataObject, root: Path) -> None:
    data_dir, split = _stage(root), data.draw(SPLIT)
    path = (io.train_path if split == "train" else io.eval_path)(data_dir, CONFIG)
    whole = path.read_bytes()
    path.write_bytes(data.draw(st.one_of(st.binary(max_size=300), st.integers(0, len(whole) - 1).map(
        lambda n: whole[:n]))))
    _parquet_refused(data_dir, split, "not a readable parquet file")


def _parquet_row(data: st.DataObject, root: Path) -> None:
    data_dir, split, row = _stage(root), data.draw(SPLIT), data.draw(st.integers(0, N - 1))
    rows_ = _rows(split)
    kind = data.draw(st.sampled_from(["null", "blank"] if split == "train" else ["null", "blank", "ragged", "empty"]))
    column = data.draw(st.sampled_from(sorted(rows_[0])))
    if kind == "null":
        rows_[row][column] = None
    elif kind == "blank":
        blank = {"qry": " ", "qry_image_path": ""} if split == "train" else {"qry_text": "", "qry_img_path": ""}
        rows_[row].update(blank)
    else:
        rows_[row].update(tgt_text=[] if kind == "empty" else ["a", "b", "c"])
    path = (io.train_path if split == "train" else io.eval_path)(data_dir, CONFIG)
    pd.DataFrame(rows_).to_parquet(path, index=False)
    _parquet_refused(data_dir, split, f"row {row}")


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                max_size=3), max_leaves=6)


def _json_case(data: st.DataObject, root: Path, content: bytes) -> None:
    data_dir = _stage(root)
    name = data.draw(st.sampled_from(sorted(STAGE_JSON)))
    (data_dir / name).write_bytes(content)
    for reader in STAGE_JSON[name]:
        try:
            got = reader(data_dir)
        except io.DataFormatError as err:
            assert str(data_dir / name) in str(err), str(err)
            continue
        record = json.loads(content)  # accepted: exactly what the file says, of the documented shape
        assert got == (record[{io.read_unreadable: "images", io.read_dropped_train_rows: "dropped_train_rows"}[reader]]
                       if name == io.UNREADABLE_FILE else record)
        values = [v for d in got.values() for v in d.values()] if name == io.EVAL_CHECKS_FILE else list(got.values())
        assert all(isinstance(v, str) or (type(v) is int and v >= 0) for v in values)


STAGE_FILES: dict[str, Case] = {
    "manifest_bytes": _manifest_bytes,
    "manifest_column": _manifest_column,
    "manifest_value": _manifest_value,
    "parquet_bytes": _parquet_bytes,
    "parquet_row": _parquet_row,
    "json_bytes": lambda data, root: _json_case(data, root, data.draw(st.binary(max_size=100))),
    "json_shape": lambda data, root: _json_case(data, root, json.dumps(data.draw(st.one_of(
        JSON, st.fixed_dictionaries({"images": JSON, "dropped_train_rows": JSON}),
        st.dictionaries(st.just(CONFIG), st.dictionaries(st.sampled_from(io.EVAL_CHECK_KEYS), JSON)))),
        allow_nan=True).encode()),
}


@pytest.mark.parametrize("case", list(STAGE_FILES))
def test_stage_files(case):
    _run(STAGE_FILES[case], 30)


# --- saliency: SaliencyStore over a shard whose files are damaged ----------------------------------------------------

SHARD_FIELDS = [("images", f) for f in ("hash", "key_offsets", "keys", "maps")] + [
    ("pairs", f) for f in FIELDS]


def _shard(root: Path, n: int) -> tuple[Path, dict[str, np.ndarray], dict[tuple[str, str], str]]:
    maps = {f"d/{i}.png": np.full((6, 6), i / 4, dtype=np.float32) for i in range(n)}
    subjects = {(f"the red thing {i}", f"d/{i}.png"): f"red thing {i}" for i in range(n)}
    write_shard(root / "shards", CONFIG, maps, {k: np.ones((6, 6)) for k in subjects}, 6, subjects)
    (root / "manifest.json").write_text(json.dumps({"shards": [CONFIG]}))
    return root, maps, subjects


def _lookups(root: Path, maps: dict, subjects: dict) -> None:
    """Every lookup returns exactly what was written."""
    store = SaliencyStore(root)
    for image, expected in maps.items():
        assert image in store and np.allclose(store.map(image), expected, atol=1e-3)
    for (text, image), phrase in subjects.items():
        assert store.subject(text, image) == phrase and np.allclose(store.map(image, text=text), 1.0)


def _damaged(data: st.DataObject, root: Path, damage: Callable[[np.ndarray, Path], None]) -> None:
    shard, maps, subjects = _shard(root, data.draw(st.integers(1, 4)))
    table, field = data.draw(st.sampled_from(SHARD_FIELDS))
    path = root / "shards" / CONFIG / f"{table}.{field}.npy"
    damage(np.load(path), path)
    try:
        _lookups(shard, maps, subjects)
    except ShardError as err:
        assert path.name in str(err) and str(path.parent) in str(err), str(err)


def _retyped(array: np.ndarray, path: Path, dtype: type) -> None:
    with np.errstate(all="ignore"):
        np.save(path, array.astype(dtype))


def _wrong_rows(array: np.ndarray, path: Path) -> None:
    np.save(path, np.concatenate([array, array[:1]]) if len(array) < 2 else array[:-1])


def _manifest_garbage(data: st.DataObject, root: Path) -> None:
    shard, maps, subjects = _shard(root, 1)
    content = data.draw(st.one_of(st.binary(max_size=60), JSON.map(lambda v: json.dumps(v).encode()),
                                  JSON.map(lambda v: json.dumps({"shards": v}).encode())))
    (root / "manifest.json").write_bytes(content)
    try:
        _lookups(shard, maps, subjects)
    except ShardError as err:
        assert str(root / "manifest.json") in str(err), str(err)
    except FileNotFoundError as err:  # it lists a shard that is not there
        assert str(root / "manifest.json") in str(err), str(err)


SALIENCY: dict[str, Case] = {
    "manifest_garbage": _manifest_garbage,
    "zero_bytes": lambda data, root: _damaged(data, root, lambda a, p: p.write_bytes(b"")),
    "truncated": lambda data, root: _damaged(data, root, lambda a, p: p.write_bytes(
        p.read_bytes()[:data.draw(st.integers(0, p.stat().st_size - 1))])),
    "random_bytes": lambda data, root: _damaged(data, root, lambda a, p: p.write_bytes(
        data.draw(st.sampled_from([b"", b"\x93NUMPY\x01\x00"])) + data.draw(st.binary(max_size=200)))),
    "wrong_dtype": lambda data, root: _damaged(data, root, lambda a, p: _retyped(a, p, data.draw(st.sampled_from(
        [np.float32, np.int32, np.uint64, np.int64, np.float16, np.uint8]).filter(lambda t: t != a.dtype)))),
    "wrong_ndim": lambda data, root: _damaged(data, root, lambda a, p: np.save(p, a.reshape(1, -1) if a.ndim == 1
                                                                               else a.reshape(-1))),
    "wrong_rows": lambda data, root: _damaged(data, root, _wrong_rows),
}


@pytest.mark.parametrize("case", list(SALIENCY))
def test_saliency_store(case):
    _run(SALIENCY[case], 30)


# --- checkpoint: the trainer record a resumed run reads ---------------------------------------------------------------

SHAPED = ckpt.params_record(DEFAULT, "ssame", 0)
RECORD = {"step": 4, "history": [{"loss": 1.0}], "run_id": "abc", "seconds": 2.5, "fingerprint": fingerprint(SHAPED),
          "params": SHAPED}


def _checkpoint(root: Path, record: Any = None, raw: bytes | None = None) -> Path:
    folder = root / "step4"
    folder.mkdir(parents=True)
    (folder / ckpt.TRAINER_FILE).write_bytes(raw if raw is not None else json.dumps(record).encode())
    return folder


def _resume_refused(folder: Path, *named: object) -> None:
    assert ckpt.latest(folder.parent) == folder
    with pytest.raises(ValueError) as err:
        ckpt.read(folder, SHAPED)
    _names(err, folder, *named)


def _ckpt_wrong_type(data: st.DataObject, root: Path) -> None:
    key = data.draw(st.sampled_from(["step", "history", "run_id", "seconds", "fingerprint"]))
    value = data.draw(VALUE.filter(lambda v: type(v) is not type(RECORD[key]) and not (key == "run_id" and v is None)
                                   and not (key == "seconds" and type(v) is int)))
    _resume_refused(_checkpoint(root, {**RECORD, key: value}))


def _ckpt_folder_name(data: st.DataObject, root: Path) -> None:
    folder = _checkpoint(root, RECORD)
    junk = root / ("step" + data.draw(st.text(string.ascii_letters + string.digits + "-_.", min_size=1).filter(
        lambda s: not s.isdigit())))
    junk.mkdir()
    (junk / ckpt.TRAINER_FILE).write_text(json.dumps(RECORD))
    assert ckpt.latest(root) == folder and ckpt.read(folder, SHAPED)["step"] == 4


CHECKPOINT: dict[str, Case] = {
    "record_bytes": lambda data, root: _resume_refused(_checkpoint(root, raw=data.draw(st.binary(max_size=100)))),
    "not_an_object": lambda data, root: _resume_refused(_checkpoint(root, data.draw(
        JSON.filter(lambda v: not isinstance(v, dict))))),
    "missing_key": lambda data, root: (lambda key: _resume_refused(_checkpoint(
        root, {k: v for k, v in RECORD.items() if k != key}), key if key not in ("params", "fingerprint") else ""))(
        data.draw(st.sampled_from(sorted(RECORD)))),
    "wrong_type": _ckpt_wrong_type,
    "step_mismatch": lambda data, root: _resume_refused(_checkpoint(root, {**RECORD, "step": data.draw(
        st.integers(0, 10**6).filter(lambda s: s != 4))}), "step"),
    "folder_name": _ckpt_folder_name,
}


@pytest.mark.parametrize("case", list(CHECKPOINT))
def test_checkpoint_record(case):
    _run(CHECKPOINT[case], 30)


# --- eval rows: which rows are scored, and the scores of those rows ------------------------------------------------

POOL = [f"eval/d/{i}.png" for i in range(5)]
IMAGE_OR_NONE = st.sampled_from(["", *POOL])


@st.composite
def _eval_frame(draw: st.DrawFn) -> pd.DataFrame:
    n, k = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    return pd.DataFrame([{"qry_text": f"q{i}", "qry_img_path": draw(IMAGE_OR_NONE),
                          "tgt_text": [f"t{i}.{j}" for j in range(k)],
                          "tgt_img_path": draw(st.lists(IMAGE_OR_NONE, min_size=k, max_size=k))} for i in range(n)])


def _hits(frame: pd.DataFrame, seed: int) -> np.ndarray:
    """Per row: 1 if the ground truth ranks first, with a fixed random embedding per (text, image) input."""
    queries, cands = unique_inputs(frame)
    embed = {key: torch.randn(8, generator=torch.Generator().manual_seed(seed + zlib.crc32(repr(key).encode())))
             for key in [*queries, *cands]}
    ranks, _ = rank_rows(frame, queries, torch.stack([embed[q] for q in queries]), cands,
                         torch.stack([embed[c] for c in cands]))
    return (np.asarray(ranks) == 1).astype(float)


def _unreadable_refs(data: st.DataObject, _: Path) -> None:
    frame, allow, seed = data.draw(_eval_frame()), data.draw(st.booleans()), data.draw(st.integers(0, 100))
    unreadable = {p: "OSError: truncated" for p in data.draw(st.sets(st.sampled_from(POOL)))}
    refs = [{q, *t} for q, t in zip(frame["qry_img_path"], frame["tgt_img_path"], strict=True)]
    bad = [r for r, paths in enumerate(refs) if paths & set(unreadable)]
    if bad and (not allow or len(bad) == len(frame)):
        with pytest.raises(io.DataFormatError) as err:
            rows.drop_unreadable(frame, CONFIG, unreadable, allow)
        _names(err, f"dataset {CONFIG}", f"row {bad[0]} column")
        return
    kept = rows.drop_unreadable(frame, CONFIG, unreadable, allow)
    assert kept.rows == [r for r in range(len(frame)) if r not in bad]
    assert kept.record["dropped_rows"] == len(bad) and set(kept.record["dropped_images"]) == set().union(
        *[refs[r] for r in bad]) & set(unreadable)
    assert (_hits(kept.frame, seed) == _hits(frame, seed)[kept.rows]).all()  # each kept row scores as it would


def _row_count(data: st.DataObject, _: Path) -> None:
    frame = data.draw(_eval_frame())
    expected = data.draw(st.integers(0, 10).filter(lambda m: m != len(frame)))
    with pytest.raises(io.DataFormatError) as err:
        rows.check_count(frame, CONFIG, expected)
    _names(err, f"dataset {CONFIG}", f"holds {len(frame)} rows", f"counts {expected}")


def _missing_checks(data: st.DataObject, _: Path) -> None:
    others = data.draw(st.dictionaries(WORD.filter(lambda w: w != CONFIG), st.just(dict.fromkeys(io.EVAL_CHECK_KEYS,
                                                                                                   0))))
    with pytest.raises(io.DataFormatError) as err:
        rows.accepted_counts(others, CONFIG)
    _names(err, CONFIG, io.EVAL_CHECKS_FILE)


EVAL_ROWS: dict[str, Case] = {
    "unreadable_refs": _unreadable_refs,
    "row_count": _row_count,
    "missing_checks": _missing_checks,
}


@pytest.mark.parametrize("case", list(EVAL_ROWS))
def test_eval_rows(case):
    _run(EVAL_ROWS[case], 100)


INVENTORY = {"params": PARAMS, "hub": HUB_CASES, "images": IMAGES, "stage_files": STAGE_FILES, "saliency": SALIENCY,
             "checkpoint": CHECKPOINT, "eval_rows": EVAL_ROWS}


def test_inventory_matches_docstring():
    listed = re.search(r"Input classes \((\d+)\):\n(.*)", __doc__, re.S)
    groups = dict(re.findall(r"- (\w+): ([^-]+)", listed.group(2)))
    assert {g: [c.strip() for c in v.split(",")] for g, v in groups.items()} == {g: list(c) for g, c in
                                                                                  INVENTORY.items()}
    assert int(listed.group(1)) == sum(map(len, INVENTORY.values()))
