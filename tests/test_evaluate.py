"""The evaluate stage: protocol metrics, encode-once, saved files, resume, sharding and bad input."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

import ssame.evaluate as ev
from ssame.config import Paths, as_params
from ssame.data import io
from ssame.evaluate import evaluate, outputs
from ssame.evaluate.aggregate import aggregate
from ssame.evaluate.interpret import figures
from ssame.evaluate.metrics import rank_candidates, ranking_metrics
from ssame.train import train

MANIFEST = pd.DataFrame({
    "dataset": ["A", "B", "C", "D"],
    "meta_task": ["classification", "classification", "vqa", "grounding"],
    "split": ["IND", "OOD", "IND", "OOD"],
})


def test_aggregate_unweighted_means():
    result = aggregate({"A": 0.2, "B": 0.6, "C": 0.5, "D": 1.0}, MANIFEST)
    assert result["classification"] == pytest.approx(0.4)
    assert result["ind"] == pytest.approx(0.35) and result["ood"] == pytest.approx(0.8)
    assert result["overall"] == pytest.approx(0.575)
    assert result["retrieval"] is None


def test_aggregate_unknown_dataset():
    with pytest.raises(KeyError, match="Z"):
        aggregate({"Z": 0.1}, MANIFEST)


def test_rank_puts_the_ground_truth_first_on_a_tie_like_argmax():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1])
    rank, ranking = rank_candidates(scores)
    assert rank == 2 and ranking == [1, 0, 2, 3]
    assert rank_candidates(torch.tensor([0.3, 0.3, 0.2]))[0] == 1  # np.argmax returns the first maximum
    assert int(np.argmax([0.3, 0.3, 0.2])) == 0


def test_ranking_metrics_match_their_definitions():
    ranks = np.array([1, 2, 6, 11])
    m = ranking_metrics(ranks)
    assert m["hit_at_1"] == 0.25 and m["hit_at_5"] == 0.5 and m["hit_at_10"] == 0.75
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 1 / 11) / 4)
    assert m["ndcg_at_5"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    with pytest.raises(ValueError):
        ranking_metrics(np.array([0]))


def test_pointing_game_and_mask_share():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True  # the top-left cell of a 2x2 token grid
    peaked = torch.tensor([0.5, 0.1, 0.1, 0.1])
    f = figures(peaked, (2, 2), mask)
    assert f["pointing_game"] == 1.0 and f["mask_share"] == pytest.approx(0.5 / 0.8)
    assert f["visual_attention_mass"] == pytest.approx(0.8) and f["pointing_chance"] == 0.25
    assert figures(torch.tensor([0.1, 0.4, 0.1, 0.1]), (2, 2), mask)["pointing_game"] == 0.0
    assert math.isnan(figures(peaked, (2, 2), None)["pointing_game"])
    with pytest.raises(ValueError, match="2x3"):
        figures(peaked, (2, 3), mask)


# --- bad input: each error names the dataset and the row ----------------------------------------------------------

def _write_eval(data_dir, dataset: str, rows: dict) -> None:
    path = io.eval_path(data_dir, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)


GOOD = {"qry_text": ["q0", "q1"], "qry_img_path": ["", ""], "tgt_text": [["a", "b"], ["c", "d"]],
        "tgt_img_path": [["", ""], ["", ""]]}


@pytest.mark.parametrize("change, message", [
    ({"tgt_text": [["a", "b"], []], "tgt_img_path": [["", ""], []]}, "row 1 .*empty candidate list"),
    ({"tgt_img_path": [["", ""], [""]]}, "row 1 is ragged: 2 tgt_text vs 1 tgt_img_path"),
])
def test_malformed_eval_rows_are_refused_naming_dataset_and_row(tmp_path, change, message):
    _write_eval(tmp_path, "Bad", GOOD | change)
    with pytest.raises(io.DataFormatError, match=f"dataset Bad .*{message}"):
        io.read_eval(tmp_path, "Bad")


def test_missing_image_names_dataset_row_and_column(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(b"")
    frame = pd.DataFrame({"qry_text": ["q", "q"], "qry_img_path": ["x.png", "x.png"],
                          "tgt_text": [["a", "b"], ["a", "b"]], "tgt_img_path": [["", ""], ["", "gone.png"]]})
    with pytest.raises(io.DataFormatError, match=r"dataset Bad: row 1 column 'tgt_img_path' image 'gone\.png'"):
        io.check_images(tmp_path, "dataset Bad", frame, io.EVAL_IMAGE_COLUMNS)


# --- the stage on a trained tiny model -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(small_built) -> dict:
    params = copy.deepcopy(small_built)
    train(params, "ssame", 0)
    return params


def _files(eval_dir) -> dict[str, bytes]:
    return {str(p.relative_to(eval_dir)): p.read_bytes() for p in sorted(eval_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def evaluated(trained) -> tuple[dict, dict[str, bytes]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process of the sharded run below
    try:
        summary = evaluate(trained, "ssame", 0)
    finally:
        torch.set_num_threads(threads)
    return summary, _files(Paths.from_params(trained).eval("ssame", 0))


def test_files_per_dataset_and_encode_once(trained, evaluated):
    summary, _ = evaluated
    paths = Paths.from_params(trained)
    manifest = io.read_manifest(paths.data)
    eval_dir = paths.eval("ssame", 0)
    assert summary["forward_ratio"] == 1.0
    references = 0
    for name in manifest["dataset"]:
        record = json.loads(outputs.scores_path(eval_dir, name).read_text())
        frame = io.read_eval(paths.data, name)
        unique_q = len(set(zip(frame["qry_text"], frame["qry_img_path"], strict=True)))
        assert record["num_queries"] == len(frame) and record["unique_queries"] == unique_q
        assert record["forward_passes"] == record["unique_queries"] + record["unique_candidates"]
        assert record["input_references"] >= record["forward_passes"]
        references += record["input_references"]
        lo, hi = summary["ci95"]["per_dataset"][name]
        assert lo <= record["hit_at_1"] <= hi
        predictions = outputs.read_predictions(eval_dir, name)
        assert record["hit_at_1"] == predictions["correct"].mean()
        assert record["mrr"] == pytest.approx((1 / predictions["rank"]).mean())
        assert summary["per_dataset"][name] == record["hit_at_1"]
    forwards = sum(json.loads(outputs.scores_path(eval_dir, n).read_text())["forward_passes"]
                   for n in manifest["dataset"])
    assert references > 1.5 * forwards  # class labels and answers repeat across rows: each is encoded once
    assert summary["overall"] == pytest.approx(np.mean(list(summary["per_dataset"].values())))
    assert summary["ci95"]["overall"][0] <= summary["overall"] <= summary["ci95"]["overall"][1]
    assert not (paths.results / "cache" / "eval" / "ssame" / "seed0").exists()


def test_scores_recompute_from_the_saved_embeddings_and_keys(trained, evaluated):
    """What docs/evaluation.md tells others to do: join rows to embedding rows by key, cosine, rank."""
    paths = Paths.from_params(trained)
    eval_dir = paths.eval("ssame", 0)
    for name in io.read_manifest(paths.data)["dataset"]:
        tensors = load_file(outputs.embeddings_path(eval_dir, name))
        keys = pd.read_parquet(outputs.keys_path(eval_dir, name))
        index = {(s, t, p): i for s, i, t, p in keys[["side", "index", "text", "image_path"]].itertuples(index=False)}
        frame = io.read_eval(paths.data, name)
        for row, rec in enumerate(frame.itertuples()):
            q = tensors["query"][index[("query", rec.qry_text, rec.qry_img_path)]]
            c = tensors["candidate"][[index[("candidate", t, p)] for t, p in zip(rec.tgt_text, rec.tgt_img_path,
                                                                                 strict=True)]]
            scores = (c @ q).numpy()
            assert int((scores > scores[0]).sum()) + 1 == outputs.read_predictions(eval_dir, name)["rank"][row]


def test_interpretability_on_images_with_masks(evaluated):
    summary, _ = evaluated
    figures_ = summary["interpretability"]
    assert 0 < figures_["visual_attention_mass"] <= 1
    assert 0 <= figures_["pointing_game"] <= 1 and 0 < figures_["pointing_chance"] < 1
    assert 0 <= figures_["mask_share"] <= 1


def test_an_interrupted_evaluation_resumes_from_the_cache(trained, evaluated, monkeypatch):
    _, expected = evaluated
    eval_dir = Paths.from_params(trained).eval("ssame", 0)
    shutil.rmtree(eval_dir)
    calls = {"encode": 0, "rank": 0}
    real_encode, real_rank = ev.encode, ev.rank_rows

    def counting_encode(*args, **kwargs):
        calls["encode"] += 1
        return real_encode(*args, **kwargs)

    def failing_rank(*args, **kwargs):
        calls["rank"] += 1
        if calls["rank"] == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real_rank(*args, **kwargs)

    monkeypatch.setattr(ev, "encode", counting_encode)
    monkeypatch.setattr(ev, "rank_rows", failing_rank)
    with pytest.raises(KeyboardInterrupt):
        evaluate(trained, "ssame", 0)
    assert calls["encode"] == 4  # two datasets, both sides, cached before the interruption
    monkeypatch.setattr(ev, "rank_rows", real_rank)
    calls["encode"] = 0
    evaluate(trained, "ssame", 0)
    n = len(io.read_manifest(Paths.from_params(trained).data))
    assert calls["encode"] == 2 * (n - 2)
    assert _files(eval_dir) == expected


def test_two_processes_write_identical_files(trained, evaluated, tmp_path):
    _, expected = evaluated
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(trained))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "ssame", "evaluate", "--params", str(params_file), "--variant", "ssame", "--seed", "0",
           "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _files(Paths.from_params(trained).eval("ssame", 0)) == expected


# --- fidelity to VLM2Vec's evaluator and bad input in the data (docs/evaluation.md) ---------------------------------

SUBSET = ("MiniAttrVQA", "MiniT2I")  # image+text queries -> text answers; text queries -> image candidates


@pytest.fixture
def subset(trained, tmp_path) -> dict:
    """A copy of the trained run's data, saliency and model with a manifest of `SUBSET` only (free to corrupt)."""
    params = copy.deepcopy(trained)
    src, dst = Paths.from_params(trained).results, tmp_path / "results"
    for part in ("data", "saliency", "features", "train"):
        shutil.copytree(src / part, dst / part)
    params["results_dir"] = str(dst)
    manifest = io.read_manifest(dst / "data")
    io.write_manifest(dst / "data", manifest[manifest["dataset"].isin(SUBSET)].to_dict("records"))
    return params


def _scores(params, dataset) -> dict:
    return json.loads(outputs.scores_path(Paths.from_params(params).eval("ssame", 0), dataset).read_text())


def test_eval_texts_are_not_truncated_and_mmeb_mini_texts_fit_anyway(trained):
    """`evaluate.max_text_tokens: null` cuts nothing (VLM2Vec); MMEB-mini's texts are shorter than the training cut,
    so the miniature's numbers are those of the cut it had before."""
    from transformers import AutoTokenizer

    from ssame.data.prompts import substitute_image_token

    data_dir = Paths.from_params(trained).data
    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    longest = 0
    for name in io.read_manifest(data_dir)["dataset"]:
        frame = io.read_eval(data_dir, name)
        for text in {*frame["qry_text"], *(t for texts in frame["tgt_text"] for t in texts)}:
            parts = substitute_image_token(text, "qwen2_vl").split("<|image_pad|>")
            longest = max(longest, sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in parts))
    assert 0 < longest <= trained["train"]["max_text_tokens"]
    assert ev.DatasetEvaluator(as_params(trained), "ssame", 0).build.max_text_tokens is None
    cut = copy.deepcopy(trained)
    cut["evaluate"]["max_text_tokens"] = 7
    assert ev.DatasetEvaluator(as_params(cut), "ssame", 0).build.max_text_tokens == 7


@pytest.mark.parametrize("change, message", [
    ({"image_pixels": 4096}, r"min/max pixels \(9216, 9216\), params model give 4096"),
    ({"image_resize": "square", "image_side": 48}, r"params model give 2304"),
    ({"mrope": "grouped"}, "trained with mrope 'vlm2vec_1d'"),
])
def test_evaluation_refuses_a_model_trained_with_other_image_or_position_settings(trained, change, message):
    params = copy.deepcopy(trained)
    params["model"].update(change)
    with pytest.raises(ValueError, match=message):
        ev.DatasetEvaluator(as_params(params), "ssame", 0)


def test_duplicated_ground_truth_and_unexpected_candidate_count_are_scored_and_counted(subset, caplog):
    """VLM2Vec scores both (first-argmax: a tie with the ground truth is correct); we warn and count them."""
    data_dir = Paths.from_params(subset).data
    manifest = io.read_manifest(data_dir).set_index("dataset")
    frame = io.read_eval(data_dir, "MiniAttrVQA")
    frame.at[0, "tgt_text"] = [frame["tgt_text"][0][0]] * len(frame["tgt_text"][0])  # only copies of the truth
    frame.at[0, "tgt_img_path"] = [frame["tgt_img_path"][0][0]] * len(frame["tgt_img_path"][0])
    frame.at[1, "tgt_text"], frame.at[1, "tgt_img_path"] = frame["tgt_text"][1][:-1], frame["tgt_img_path"][1][:-1]
    io.write_eval(data_dir, "MiniAttrVQA", frame)
    io.write_eval_checks(data_dir, {name: io.eval_checks(io.read_eval(data_dir, name),
                                                         int(manifest.at[name, "num_candidates"]))
                                    for name in SUBSET})
    with caplog.at_level("WARNING", logger="ssame.evaluate.rows"):
        evaluate(subset, "ssame", 0)
    scores = _scores(subset, "MiniAttrVQA")
    assert scores["duplicated_ground_truth_rows"] == 1 and scores["candidate_count_mismatch_rows"] == 1
    assert _scores(subset, "MiniT2I")["duplicated_ground_truth_rows"] == 0
    assert "1 duplicated ground truth rows" in caplog.text
    predictions = outputs.read_predictions(Paths.from_params(subset).eval("ssame", 0), "MiniAttrVQA")
    assert predictions["rank"][0] == 1 and predictions["ranking"][0][0] == 0


def _unreadable_target(params) -> tuple[str, list[int]]:
    """An image among MiniT2I's candidates, recorded as unreadable; the rows that reference it."""
    data_dir = Paths.from_params(params).data
    frame = io.read_eval(data_dir, "MiniT2I")
    path = frame["tgt_img_path"][1][0]
    io.write_unreadable(data_dir, {path: "UnidentifiedImageError: cannot identify image file"}, {})
    return path, [r for r, images in enumerate(frame["tgt_img_path"]) if path in images]


def test_a_row_with_an_unreadable_image_stops_evaluation_naming_it(subset):
    path, bad_rows = _unreadable_target(subset)
    with pytest.raises(io.DataFormatError, match=rf"dataset MiniT2I: row {bad_rows[0]} column 'tgt_img_path' image "
                                                 rf"'{path}' is unreadable \(UnidentifiedImageError.*drop_unreadable"):
        evaluate(subset, "ssame", 0)


def test_drop_unreadable_drops_and_reports_the_rows(subset):
    path, bad_rows = _unreadable_target(subset)
    subset["evaluate"]["drop_unreadable"] = True
    summary = evaluate(subset, "ssame", 0)
    scores, total = _scores(subset, "MiniT2I"), len(io.read_eval(Paths.from_params(subset).data, "MiniT2I"))
    assert 0 < len(bad_rows) < total
    assert scores["dropped_rows"] == len(bad_rows) and scores["num_queries"] == total - len(bad_rows)
    assert scores["dropped_images"] == {path: "UnidentifiedImageError: cannot identify image file"}
    predictions = outputs.read_predictions(Paths.from_params(subset).eval("ssame", 0), "MiniT2I")
    assert predictions["query"].tolist() == [r for r in range(total) if r not in bad_rows]
    assert scores["hit_at_1"] == predictions["correct"].mean() == summary["per_dataset"]["MiniT2I"]
    assert _scores(subset, "MiniAttrVQA")["dropped_rows"] == 0


def test_an_image_that_fails_to_decode_names_dataset_row_and_column(subset):
    subset["model"]["image_features"] = "pixels"  # with cached features the stage reads images (test_features.py)
    data_dir = Paths.from_params(subset).data
    frame = io.read_eval(data_dir, "MiniAttrVQA")
    path = frame["qry_img_path"][2]
    (io.image_root(data_dir) / path).write_bytes(b"not an image")
    row = frame["qry_img_path"].tolist().index(path)
    with pytest.raises(io.DataFormatError, match=rf"dataset MiniAttrVQA: row {row} column 'qry_img_path' image "
                                                 rf"'{path}' cannot be decoded: unreadable or corrupt image"):
        evaluate(subset, "ssame", 0)
