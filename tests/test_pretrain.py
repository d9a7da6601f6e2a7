"""The pretrain stage: a corpus disjoint from the benchmark, a loss that falls, a folder fine-tuning starts from."""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from ssame.config import ParamsError, Paths, as_params, uses_pretrain
from ssame.data import io
from ssame.data.io import IMAGE_TOKEN
from ssame.data.mini.scene import IND_BACKGROUNDS, SEEN_COMBOS
from ssame.model import InputBuilder
from ssame.model.backbone import load_backbone
from ssame.pretrain import build, corpus
from ssame.pretrain.lm import encode, token_log_probs
from ssame.pretrain.probe import answer_scores


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def _benchmark(params: dict) -> tuple[set[str], set[str]]:
    """Every text and every image (pixel digest) of the benchmark's train and eval files."""
    data_dir = Paths.from_params(params).data
    texts, paths = set(), set()
    for name in io.read_manifest(data_dir)["dataset"]:
        frame = io.read_eval(data_dir, name)
        texts |= set(frame["qry_text"]) | {t for row in frame["tgt_text"] for t in row}
        paths |= {p for p in frame["qry_img_path"] if p} | {p for row in frame["tgt_img_path"] for p in row if p}
    for path in sorted((data_dir / "train").glob("*.parquet")):
        frame = io.read_train(data_dir, path.stem)
        texts |= set(frame["qry"]) | set(frame["pos_text"]) | set(frame["neg_text"])
        paths |= {p for col in ("qry_image_path", "pos_image_path", "neg_image_path") for p in frame[col] if p}
    with_images = {_digest(Image.open(io.image_root(data_dir) / p)) for p in paths}
    return texts, with_images


def test_corpus_shares_no_image_or_text_with_the_benchmark(small_built):
    texts, images = _benchmark(small_built)
    samples = corpus.build_corpus(small_built["pretrain"]["seed"], 30, small_built["data"]["mini"]["image_size"])
    assert len(samples) == corpus.SAMPLES_PER_SCENE * 30
    assert not {s.text for s in samples} & texts
    assert not {_digest(s.image) for s in samples} & images


def test_corpus_is_in_distribution_and_deterministic():
    scenes = corpus.scenes(7, 50, 96)
    assert all(s.subject.combo in SEEN_COMBOS and s.background in IND_BACKGROUNDS for s in scenes)
    assert all(len(s.distractors) <= 4 for s in scenes)  # no clutter: the OOD clutter sets stay unseen
    first, again = corpus.build_corpus(7, 5, 96), corpus.build_corpus(7, 5, 96)
    assert [s.text for s in first] == [s.text for s in again]
    assert [_digest(s.image) for s in first] == [_digest(s.image) for s in again]
    assert corpus.scenes(7, 5, 96, stream=1) != corpus.scenes(7, 5, 96)  # the probe's scenes are held out


def test_questions_are_answered_by_the_subject():
    scene = corpus.scenes(3, 1, 96)[0]
    for kind in corpus.QUESTIONS:
        assert corpus.answer(scene.subject, kind) in corpus.VOCAB[kind]
    with pytest.raises(ValueError, match="unknown question kind"):
        corpus.question(scene.subject, "size")


@pytest.fixture(scope="module")
def model_and_builder(small_built):
    model, tokenizer, processor = load_backbone(small_built, Paths.from_params(small_built).data)
    return model.eval(), InputBuilder(tokenizer, processor, None, 64)


def test_text_tokens_are_the_targets_not_image_tokens_or_padding(model_and_builder):
    model, build = model_and_builder
    samples = corpus.build_corpus(1, 2, 96)[:3]
    batch = encode(build, samples)
    _, counted = token_log_probs(model, batch, "vlm2vec_1d")
    targets = batch.inputs["input_ids"][:, 1:]
    assert not counted[targets == build.image_token_id].any()
    assert not counted[batch.inputs["attention_mask"][:, 1:] == 0].any()
    texts = build.tokenizer([s.text.split(IMAGE_TOKEN)[1] for s in samples], add_special_tokens=False)["input_ids"]
    assert counted.sum(1).tolist() == [len(t) for t in texts]  # every text token, the first one included


def test_batched_answer_scores_equal_one_at_a_time(model_and_builder):
    """Left padding of the shorter answers must not change a text's score (the probe compares them)."""
    model, build = model_and_builder
    scene = corpus.scenes(5, 1, 96)[0]
    image = corpus.samples(scene, np.random.default_rng(0)).__next__().image
    samples = [corpus.Sample(image, corpus.with_image(f"{corpus.question(scene.subject, 'position')} {a}"))
               for a in corpus.VOCAB["position"]]
    batched = answer_scores(model, build, samples, "vlm2vec_1d")
    single = torch.cat([answer_scores(model, build, [s], "vlm2vec_1d") for s in samples])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def pretrained(small_built, tmp_path_factory):
    params = copy.deepcopy(small_built)
    params["results_dir"] = str(tmp_path_factory.mktemp("pretrained") / "results")
    (Paths.from_params(params).results).mkdir(parents=True)
    (Paths.from_params(params).data).symlink_to(Paths.from_params(small_built).data)
    params["pretrain"].update(steps=40, scenes=16, batch_size=16, lr=3e-3, warmup_steps=4, probe_scenes=4)
    return params, build(params)


def test_pretraining_lowers_the_loss_and_writes_its_outputs(pretrained):
    params, metrics = pretrained
    assert metrics["loss_lm"] < metrics["loss_lm_first"] - 0.5
    assert metrics["steps"] == 40 and metrics["samples"] == 96 and metrics["epochs"] == 40 * 16 / 96
    assert set(metrics) >= {f"probe_{k}_accuracy" for k in corpus.QUESTIONS}
    assert all(0 <= metrics[f"probe_{k}_accuracy"] <= 1 for k in corpus.QUESTIONS)
    assert (Paths.from_params(params).pretrain / "metrics.json").is_file()


def test_probe_can_be_switched_off(pretrained, tmp_path, caplog):
    params = copy.deepcopy(pretrained[0])
    params["results_dir"] = str(tmp_path / "results")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "data").symlink_to(Paths.from_params(pretrained[0]).data)
    params["pretrain"].update(steps=1, probe_scenes=0)
    with caplog.at_level("INFO", logger="ssame.pretrain"):
        metrics = build(params)
    assert not any(key.startswith("probe_") for key in metrics)
    assert "not run (pretrain.probe_scenes: 0)" in caplog.text
    assert "step 1/1 (100 %) loss_lm" in caplog.text  # the progress line of the last step


def test_fine_tuning_starts_from_the_pretrained_folder(pretrained):
    from accelerate import Accelerator

    from ssame import features
    from ssame.config import pretrained_backbone
    from ssame.train.recipe import build_trainer

    params, _ = pretrained
    folder = pretrained_backbone(params)
    assert folder == Paths.from_params(params).pretrain / "model"
    saved, *_ = load_backbone(params, Paths.from_params(params).data, folder)
    features.build(params)  # from the pretrained tower: build_trainer checks its digest against the one it loads
    embedder, *_ = build_trainer(params, "baseline", Accelerator(cpu=True))
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(embedder.qwen.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    random_init, *_ = load_backbone(params, Paths.from_params(params).data)
    assert not torch.equal(random_init.lm_head.weight, saved.lm_head.weight)


def test_pretrain_applies_to_the_tiny_backbone_only(small_built):
    params = copy.deepcopy(small_built)
    assert uses_pretrain(as_params(params))
    params["pretrain"]["steps"] = 0
    params["model"]["image_features"] = "pixels"  # cached features need the pretrained tower (test_features.py)
    assert not uses_pretrain(as_params(params))
    with pytest.raises(ValueError, match="only the tiny backbone is pretrained"):
        build(params)
    params["pretrain"]["steps"] = -1
    with pytest.raises(ParamsError, match=r"pretrain\.steps"):
        as_params(params)
