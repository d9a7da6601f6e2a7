"""A local stand-in for `TIGER-Lab/MMEB-train` and `TIGER-Lab/MMEB-eval`, laid out like the hub repositories at the
pinned revisions (docs/mmeb_hub.md), so the data stage reads it through the hub code path (`data.hub.local_dir`).

`write_hub_mirror(root, ...)` writes, deterministically for a seed (byte-identical files):

- `root/TIGER-Lab/MMEB-train/`: `README.md` (the `configs:` block that maps splits to files), for each of the 20
  configs `<Config>/{original,diverse_instruction,train}-00000-of-00001.parquet` (the legacy `train` split is still
  in the repo) and `images_zip/<Config>.zip` with members `<Config>/Train/…` plus directory entries and macOS junk
  (`__MACOSX/…/._*`), while the parquets say `images/<Config>/Train/…`;
- `root/TIGER-Lab/MMEB-eval/`: `README.md`, `<Dataset>/test-00000-of-00001.parquet` for the 36 datasets, and
  `images.zip` whose members are the parquet paths (`<Dataset>/…`).

Columns and dtypes are MMEB's (all strings; eval candidates `list<string>`; `huggingface` schema metadata as
`push_to_hub` writes it), texts carry `<|image_1|>` and MMEB's instructions (`resources/mmeb_v1_datasets.csv`) in
the layout `<|image_1|>\\n` + `instruction: text` + `\\n`, bare labels and captions as they are; the configs of the
classification and VQA datasets carry `neg_text`/`neg_image_path`, the others do not. Candidate lists have the
resource table's length; the non-ground-truth candidates are drawn with repetition from a pool of `POOL` inputs per
dataset, so a 1000-candidate list costs about `eval_queries + POOL` unique encodes. Images are MMEB-mini scenes
(one coloured subject among distractors), JPEG, `image_size` px; grounding targets are crops of the query scene.

Planted bad input, exactly one of each: `CORRUPT_IMAGE` (a truncated JPEG in a train zip, referenced by one train
row), `DUPLICATED_GROUND_TRUTH` (an eval row whose ground truth is also its last candidate) and `LONG_QUERY` (an
eval query of `LONG_QUERY_WORDS` words, over 300 tokens for any tokenizer).
"""

from __future__ import annotations

import io as stdio
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ssame.atomic import atomic_path, write_text
from ssame.data.hub import mmeb_datasets
from ssame.data.io import EVAL_COLUMNS, IMAGE_TOKEN, TRAIN_COLUMNS
from ssame.data.mini.render import box_around, render
from ssame.data.mini.scene import ALL_COMBOS, Scene, Shift, sample_scene

TRAIN_REPO, EVAL_REPO = "TIGER-Lab/MMEB-train", "TIGER-Lab/MMEB-eval"
TRAIN_SPLITS = ("original", "diverse_instruction")
LEGACY_SPLIT = "train"  # the October 2024 files, still next to the split files at the pinned revision
POOL = 12  # non-ground-truth inputs per eval dataset
NEG_META_TASKS = ("classification", "vqa")  # configs whose parquets carry neg_text / neg_image_path
CORRUPT_IMAGE = ("ImageNet_1K", 0, "qry_image_path")  # MMEB-train config, row, column
DUPLICATED_GROUND_TRUTH = ("N24News", 0)  # MMEB-eval dataset, row
LONG_QUERY = ("WebQA", 0)  # MMEB-eval dataset, row (a text-only query)
LONG_QUERY_WORDS = 420
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_WORDS = ("which", "wikipedia", "photo", "shows", "the", "red", "building", "near", "river", "that", "was", "built",
          "before", "old", "bridge", "collapsed", "during", "storm", "of", "and", "in", "city", "famous", "tower")


@dataclass(frozen=True)
class _Input:
    """One side of a pair: the text after the instruction ("" for none) and an image path ("" for none)."""

    content: str
    path: str


def _rng(seed: int, name: str, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()), stream)))


def _compose(instruction: str, item: _Input) -> str:
    """MMEB's baked-in text: `<|image_1|>\\n` with an image, then `instruction: text`, then a newline."""
    body = f"{instruction}: {item.content}" if instruction and item.content else instruction or item.content
    return (f"{IMAGE_TOKEN}\n" if item.path else "") + body + "\n"


def _paraphrase(instruction: str) -> str:
    """The diverse_instruction split words each instruction differently."""
    return f"Given the input, {instruction[0].lower()}{instruction[1:]}" if instruction else ""


def _jpeg(image: Image.Image) -> bytes:
    buf = stdio.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class _Maker:
    """Inputs of one dataset: scenes whose subject is a given colour-shape pair, and their texts."""

    def __init__(self, spec, rng: np.random.Generator, size: int, files: dict[str, bytes], prefix: str):
        self.spec, self.rng, self.size, self.files, self.prefix = spec, rng, size, files, prefix

    def _scene(self, combo: tuple[str, str]) -> tuple[Scene, Image.Image]:
        scene = sample_scene(self.rng, self.size, Shift(subjects=(combo,), distractor_combos=ALL_COMBOS))
        return scene, render(scene)[0]

    def _save(self, name: str, image: Image.Image) -> str:
        path = f"{self.prefix}{name}.jpg"
        self.files[path] = _jpeg(image)
        return path

    def _words(self, scene: Scene, task: str) -> str:
        shape, colour = scene.subject.combo
        if task == "vqa":
            return f"What colour is the large {shape}?"
        if task == "grounding":
            return f"{colour} {shape}"
        return f"a {colour} {shape} at the {scene.subject.position}"

    def query(self, combo: tuple[str, str], name: str) -> tuple[_Input, Scene, Image.Image]:
        scene, image = self._scene(combo)
        text = self._words(scene, self.spec.meta_task) if "text" in self.spec.qry_modality else ""
        path = self._save(name, image) if "image" in self.spec.qry_modality else ""
        return _Input(text, path), scene, image

    def target(self, combo: tuple[str, str], name: str, query: tuple[Scene, Image.Image] | None = None) -> _Input:
        """The target of a pair about `combo`; grounding crops the subject out of the query scene when given."""
        if self.spec.tgt_modality == "text":
            shape, colour = combo
            return _Input(f"{colour} {shape}" if self.spec.meta_task != "retrieval"
                          else f"a photo of a {colour} {shape}", "")
        if self.spec.meta_task == "grounding" and query is not None:
            scene, image = query
        else:
            scene, image = self._scene(combo)
        if self.spec.meta_task == "grounding":
            image = image.crop(box_around(scene.subject, self.size)).resize((self.size, self.size))
        text = self._words(scene, "retrieval") if "text" in self.spec.tgt_modality else ""
        return _Input(text, self._save(name, image))

    def texts(self, item: _Input, side: str, diverse: bool = False) -> str:
        instruction = getattr(self.spec, f"{side}_instruction")
        if side == "tgt" and not instruction:
            return item.content  # bare label or caption
        return _compose(_paraphrase(instruction) if diverse else instruction, item)


def _table(columns: dict[str, list], list_columns: tuple[str, ...] = ()) -> pa.Table:
    """A table with MMEB's dtypes and the `huggingface` features metadata `push_to_hub` writes."""
    value = {"dtype": "string", "_type": "Value"}
    features = {c: {"feature": value, "_type": "Sequence"} if c in list_columns else value for c in columns}
    schema = pa.schema([(c, pa.list_(pa.string()) if c in list_columns else pa.string()) for c in columns],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    return pa.table(columns, schema=schema)


def _write_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_zip(path: Path, files: dict[str, bytes], junk: list[str]) -> None:
    """Members in sorted order with fixed timestamps and modes, directory entries, and macOS junk."""
    dirs = {str(p) + "/" for name in files for p in PurePosixPath(name).parents if str(p) != "."}
    entries = {**{d: b"" for d in dirs}, **files}
    for name in junk:
        entries[name] = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # an AppleDouble header
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.create_system = 3
            info.external_attr = (0o40755 << 16 | 0x10) if name.endswith("/") else 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED if name.endswith("/") else zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[name], compresslevel=6)


def _junk(files: dict[str, bytes]) -> list[str]:
    """AppleDouble companions of the first two images, as macOS zip tools add them."""
    out = []
    for name in sorted(files)[:2]:
        p = PurePosixPath(name)
        out.append(f"__MACOSX/{p.parent}/._{p.name}")
    return out


def _readme(configs: list[str], splits: tuple[str, ...]) -> str:
    lines = ["---", "configs:"]
    for config in configs:
        lines += [f"- config_name: {config}", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    return "\n".join([*lines, "---", "", "Rehearsal mirror written by ssame.rehearsal.hub_mirror.", ""])


def _train_config(root: Path, config: str, spec, seed: int, rows: int, size: int) -> None:
    files: dict[str, bytes] = {}
    make = _Maker(spec, _rng(seed, config, 0), size, files, f"{config}/Train/{config}_")
    combos = [ALL_COMBOS[j] for j in make.rng.permutation(len(ALL_COMBOS))]
    pairs = []
    for i in range(rows):
        combo, other = combos[i % len(combos)], combos[(i + 1) % len(combos)]
        qry, scene, image = make.query(combo, f"qry_{i:05d}")
        pos = make.target(combo, f"pos_{i:05d}", (scene, image))
        neg = make.target(other, f"neg_{i:05d}") if spec.meta_task in NEG_META_TASKS else None
        pairs.append((qry, pos, neg))
    config_name, row, column = CORRUPT_IMAGE
    if config == config_name:
        member = pairs[row][0].path if column == "qry_image_path" else pairs[row][1].path
        files[member] = files[member][: len(files[member]) // 2]  # a truncated JPEG: the header opens, decoding fails
    columns = TRAIN_COLUMNS if spec.meta_task in NEG_META_TASKS else TRAIN_COLUMNS[:4]
    repo = root / TRAIN_REPO
    for split in (*TRAIN_SPLITS, LEGACY_SPLIT):
        diverse = split == "diverse_instruction"
        data = {c: [] for c in columns}
        for qry, pos, neg in pairs:
            data["qry"].append(make.texts(qry, "qry", diverse))
            data["qry_image_path"].append(f"images/{qry.path}" if qry.path else "")
            data["pos_text"].append(make.texts(pos, "tgt", diverse))
            data["pos_image_path"].append(f"images/{pos.path}" if pos.path else "")
            if neg is not None:
                data["neg_text"].append(make.texts(neg, "tgt", diverse))
                data["neg_image_path"].append(f"images/{neg.path}" if neg.path else "")
        _write_parquet(repo / config / f"{split}-00000-of-00001.parquet", _table(data))
    _write_zip(repo / "images_zip" / f"{config}.zip", files, _junk(files))


def _eval_dataset(root: Path, name: str, spec, seed: int, queries: int, size: int,
                  files: dict[str, bytes]) -> None:
    make = _Maker(spec, _rng(seed, name, 1), size, files, f"{name}/")
    combos = [ALL_COMBOS[j] for j in make.rng.permutation(len(ALL_COMBOS))]
    pool = [make.target(c, f"pool_{k:02d}") for k, c in enumerate(combos[-POOL:])]
    data = {c: [] for c in EVAL_COLUMNS}
    for i in range(queries):
        combo = combos[i % (len(combos) - POOL)]  # never a pool pair, so no candidate copies the ground truth
        qry, scene, image = make.query(combo, f"qry_{i:04d}")
        if (name, i) == LONG_QUERY:
            qry = _Input(" ".join(make.rng.choice(_WORDS, size=LONG_QUERY_WORDS)) + "?", qry.path)
        truth = make.target(combo, f"tgt_{i:04d}", (scene, image))
        cands = [truth] + [pool[j] for j in make.rng.integers(POOL, size=int(spec.num_candidates) - 1)]
        if (name, i) == DUPLICATED_GROUND_TRUTH:
            cands[-1] = truth
        data["qry_text"].append(make.texts(qry, "qry"))
        data["qry_img_path"].append(qry.path)
        data["tgt_text"].append([make.texts(c, "tgt") for c in cands])
        data["tgt_img_path"].append([c.path for c in cands])
    _write_parquet(root / EVAL_REPO / name / "test-00000-of-00001.parquet",
                   _table(data, list_columns=("tgt_text", "tgt_img_path")))


def write_hub_mirror(root: Path, *, seed: int, train_rows: int, eval_queries: int, image_size: int) -> None:
    """Write both repositories under `root` (see the module docstring); existing files are overwritten."""
    root = Path(root)
    table = mmeb_datasets()
    train = table[table["train_config"] != ""]
    for _, spec in train.iterrows():
        _train_config(root, spec.train_config, spec, seed, train_rows, image_size)
    write_text(root / TRAIN_REPO / "README.md", _readme(sorted(train["train_config"]), TRAIN_SPLITS))
    files: dict[str, bytes] = {}
    for name, spec in table.iterrows():
        _eval_dataset(root, name, spec, seed, eval_queries, image_size, files)
    _write_zip(root / EVAL_REPO / "images.zip", files, _junk(files))
    write_text(root / EVAL_REPO / "README.md", _readme(sorted(table.index), ("test",)))
