"""Byte-level BPE tokenizer trained on the benchmark text (for the tiny random-init backbone)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ssame.atomic import atomic_dir

from . import io
from .io import IMAGE_TOKEN

SPECIAL_TOKENS = ["<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train deterministically on the unique text pieces around the image placeholder (verbatim, as the model's
    input builder tokenises them), in sorted order. `vocab_size` is checked by the params schema (>= 300: the 256
    byte symbols, the special tokens and some merges)."""
    corpus = sorted({piece for t in texts for piece in t.split(IMAGE_TOKEN)} - {""})
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", padding_side="left"
    )


def benchmark_texts(data_dir: Path, datasets: Iterable[str], train: Iterable[str]) -> list[str]:
    """All query and candidate texts of the written train and eval parquets."""
    texts: list[str] = []
    for name in train:
        df = io.read_train(data_dir, name)
        texts += [*df["qry"], *df["pos_text"], *df["neg_text"]]
    for name in datasets:
        df = io.read_eval(data_dir, name)
        texts += [*df["qry_text"], *(t for row in df["tgt_text"] for t in row)]
    return texts


def build_tokenizer(data_dir: Path, vocab_size: int) -> Path:
    """Train on every parquet listed in the manifest and save_pretrained to `<data_dir>/tokenizer`."""
    manifest = io.read_manifest(data_dir)
    texts = benchmark_texts(
        data_dir,
        manifest.loc[manifest["num_queries"] > 0, "dataset"],
        manifest.loc[manifest["train_rows"] > 0, "dataset"],
    )
    out = data_dir / "tokenizer"
    with atomic_dir(out) as tmp:
        train_tokenizer(texts, vocab_size).save_pretrained(tmp)
    return out
