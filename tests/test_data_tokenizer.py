"""Byte-level BPE tokenizer: special tokens, round trip of any unicode text, determinism."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from ssame.config import ParamsError, as_params
from ssame.data import build
from ssame.data.tokenizer import SPECIAL_TOKENS, train_tokenizer

CORPUS = [
    "a red circle on the left",
    "What is the colour of the large star?",
    "an orange cross at the top",
] * 5


def test_round_trip_unicode():
    tok = train_tokenizer(CORPUS, 300)
    for text in ["a red circle", "Ünïcødé ✓ 日本語 🙂 \t\n  spaces", "\x00\x7f\U0010ffff", "<|endoftext|> x"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in tok.encode("日本語🙂")


def test_special_tokens_and_padding():
    tok = train_tokenizer(CORPUS, 300)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.eos_token == tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"


def test_vocab_size_minimum_is_the_schemas(default_params):
    """The schema's minimum (300) is the only check: 299 is refused naming the key, 300 builds."""
    params = default_params.to_dict()
    params["data"]["tokenizer"]["vocab_size"] = 299
    with pytest.raises(ParamsError, match=r"data\.tokenizer\.vocab_size"):
        as_params(params)
    assert len(train_tokenizer(CORPUS, 300)) == 300


def test_saved_tokenizer_deterministic(tmp_path, default_params):
    mini = {
        "seed": 3,
        "image_size": 64,
        "train_rows_per_dataset": 4,
        "eval_queries_per_dataset": 4,
        "retrieval_candidates": 4,
        "grounding_candidates": 3,
        "vqa_candidates": 4,
    }
    outs = []
    for name in ("a", "b"):
        params = default_params.to_dict()
        params["results_dir"] = str(tmp_path / name)
        params["data"] = {"source": "mini", "mini": mini, "tokenizer": {"vocab_size": 400}}
        build(params)
        outs.append(tmp_path / name / "data" / "tokenizer")
    files = sorted(p.name for p in outs[0].iterdir())
    assert "tokenizer.json" in files and files == sorted(p.name for p in outs[1].iterdir())
    assert all((outs[0] / f).read_bytes() == (outs[1] / f).read_bytes() for f in files)
    tok = PreTrainedTokenizerFast.from_pretrained(outs[0])
    assert (
        len(tok) == 400 and tok.decode(tok.encode("a pink star in the center")) == "a pink star in the center"
    )
