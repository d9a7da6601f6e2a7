"""UniME-V2's parts: the symmetric-KL soft-label loss, mining, false-negative filtering, cyclic sampling, judges."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ssame.losses import soft_label_symmetric_kl


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softmax(x: list[float]) -> list[float]:
    e = [math.exp(v - max(x)) for v in x]
    return [v / sum(e) for v in e]


def test_symmetric_kl_by_hand():
    query = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])  # cos 1, 0, -1
    judge = torch.tensor([[0.9, 0.5, 0.1]])
    tau = 0.5
    p, q = _softmax([2.0, 0.0, -2.0]), _softmax([1.8, 1.0, 0.2])
    expected = 0.5 * (_kl(p, q) + _kl(q, p))
    assert soft_label_symmetric_kl(query, candidates, judge, tau).item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_kl_is_zero_when_the_model_agrees_with_the_judge_and_averages_queries():
    q = F.normalize(torch.randn(3, 4), dim=-1)
    cands = F.normalize(torch.randn(3, 5, 4), dim=-1)
    cos = torch.einsum("bd,bkd->bk", q, cands)
    assert soft_label_symmetric_kl(q, cands, cos, 0.02).item() == pytest.approx(0.0, abs=1e-5)
    one = [soft_label_symmetric_kl(q[i:i + 1], cands[i:i + 1], cos.flip(-1)[i:i + 1], 0.1) for i in range(3)]
    both = soft_label_symmetric_kl(q, cands, cos.flip(-1), 0.1)
    assert both.item() == pytest.approx(torch.stack(one).mean().item(), rel=1e-6)


def test_symmetric_kl_pulls_the_judged_candidate_up():
    q = F.normalize(torch.randn(1, 8), dim=-1).requires_grad_()
    cands = F.normalize(torch.randn(1, 3, 8), dim=-1)
    soft_label_symmetric_kl(q, cands, torch.tensor([[1.0, 0.0, 0.0]]), 0.1).backward()
    before = (q @ cands[0].T)[0, 0]
    after = (F.normalize(q - 0.1 * q.grad, dim=-1) @ cands[0].T)[0, 0]
    assert after > before


# ---- mining -------------------------------------------------------------------------------------------------------

def test_top_candidates_on_a_toy_set_with_known_neighbours():
    from ssame.mine.negatives import top_candidates

    # 1-D points: query i sits at x = i; candidates at x = 0..4; similarity = -distance
    x = np.arange(5.0)
    similarity = -np.abs(x[:, None] - x[None, :])
    picked = top_candidates(similarity, own=np.arange(5), top_k=2, threshold=np.inf)
    assert [p.tolist() for p in picked] == [[1, 2], [0, 2], [1, 3], [2, 4], [3, 2]]
    # δ drops everything at or above it: the nearest neighbours (similarity -1) go, the next ones stay
    picked = top_candidates(similarity, own=np.arange(5), top_k=3, threshold=-1.0)
    assert [p.tolist() for p in picked] == [[2, 3, 4], [3, 4], [0, 4], [1, 0], [2, 1, 0]]
    # δ below every similarity: each query still gets one, its least similar candidate
    picked = top_candidates(similarity, own=np.arange(5), top_k=3, threshold=-10.0)
    assert [p.tolist() for p in picked] == [[4], [4], [4], [0], [0]]
    with pytest.raises(ValueError, match="only the query's own positive"):
        top_candidates(np.ones((2, 1)), own=np.zeros(2, dtype=int), top_k=3, threshold=1.0)


def test_false_negatives_dropped_with_a_margin_and_a_fallback():
    from ssame.mine.negatives import drop_false_negatives

    kept, fallback = drop_false_negatives(np.array([0.95, 0.2, 0.85, 0.89]), positive=1.0, margin=0.1)
    assert kept.tolist() == [1, 2, 3] and not fallback  # 0.95 is within β of the positive's 1.0
    kept, fallback = drop_false_negatives(np.array([0.99, 0.97]), positive=1.0, margin=0.1)
    assert kept.tolist() == [1] and fallback


def test_cyclic_choice_walks_the_list_and_pads():
    from ssame.mine.negatives import cyclic_choice

    assert cyclic_choice(20, 8, 0).tolist() == list(range(8))
    assert cyclic_choice(20, 8, 1).tolist() == list(range(8, 16))
    assert cyclic_choice(20, 8, 2).tolist() == [16, 17, 18, 19, 0, 1, 2, 3]
    assert cyclic_choice(3, 8, 0).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    with pytest.raises(ValueError):
        cyclic_choice(0, 8, 0)


# ---- judges -------------------------------------------------------------------------------------------------------

LEXICON = {"colours": ["red", "cyan"], "shapes": ["star", "diamond"], "positions": ["top", "left"]}


def _row(qry: str, pos_text: str, qry_image: str = "", pos_image: str = "") -> pd.Series:
    return pd.Series({"qry": qry, "qry_image_path": qry_image, "pos_text": pos_text, "pos_image_path": pos_image})


def test_attribute_judge_by_hand():
    from ssame.mine.judge import AttributeJudge

    judge = AttributeJudge(LEXICON)
    i2t = _row("<|image_1|> Find a caption", "a cyan diamond at the top", "q.png")
    other = _row("<|image_1|> Find a caption", "a cyan star at the top", "r.png")
    # an image candidate with a generic prompt: described by the caption that picked it
    t2i = _row("Find an image: a red star on the left", "<|image_1|> Represent the given image", pos_image="s.png")
    scores = judge([(i2t, other), (i2t, i2t), (i2t, t2i), (t2i, t2i)])
    assert scores.tolist() == pytest.approx([2 / 4, 1.0, 0 / 6, 1.0])


def test_yes_probability_by_hand():
    from ssame.mine.judge import yes_probability

    logits = torch.tensor([[0.0, 2.0, 0.0, 5.0], [1.0, 1.0, 1.0, -3.0]])  # yes = 1, no = 0 (token 3 is ignored)
    expected = [math.exp(2) / (math.exp(2) + 1), 0.5]
    assert yes_probability(logits, yes=1, no=0).tolist() == pytest.approx(expected)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    """An LMMJudge on a tiny random instruct Qwen2-VL (the rehearsal mirror's kind) and an image folder."""
    from PIL import Image

    from ssame.mine.judge import LMMJudge
    from ssame.rehearsal.models import write_qwen2_vl

    root = tmp_path_factory.mktemp("judge")
    write_qwen2_vl(root / "model", seed=3, tie_word_embeddings=False)
    for i, colour in enumerate([(200, 30, 30), (30, 200, 200)]):
        Image.new("RGB", (56, 56), colour).save(root / f"{i}.png")
    return lambda batch_size: LMMJudge(root / "model", revision=None, image_root=root, batch_size=batch_size,
                                       device="cpu", dtype="float32")


def test_lmm_judge_scores_are_probabilities_whatever_the_batching(tiny_judge):
    pairs = [(_row("<|image_1|> what colour?", "red", "0.png"), _row("x", "red")),
             (_row("a cyan square", "<|image_1|> an image", pos_image="1.png"),
              _row("y", "<|image_1|> an image", pos_image="0.png")),
             (_row("short", "long candidate text here"), _row("z", "long candidate text here"))]
    one = tiny_judge(1)(pairs)
    together = tiny_judge(3)(pairs)  # left padding and two images in one batch
    assert ((one > 0) & (one < 1)).all() and len(set(one.round(6))) == 3
    np.testing.assert_allclose(together, one, atol=1e-5)


# ---- the stage and the two variants on a very small MMEB-mini -----------------------------------------------------

def test_mine_then_train_both_unime_variants(small_built):
    import copy

    from ssame.config import Paths
    from ssame.mine import build as mine
    from ssame.train import train
    from ssame.train.batches import training_rows

    params = copy.deepcopy(small_built)
    train(params, "baseline", 0)
    stats = mine(params, 0)
    paths = Paths.from_params(params)
    mined = pd.read_parquet(paths.mine(0) / "negatives.parquet")
    rows = training_rows(paths.data)
    assert len(mined) == len(rows) and stats["judge"] == "attribute judge (offline)"
    beta = params["mine"]["margin"]
    for (_, row), (_, got) in zip(rows.iterrows(), mined.iterrows(), strict=True):
        assert 1 <= len(got["neg_text"]) <= params["mine"]["top_k"]
        own = (row["pos_text"], row["pos_image_path"])
        assert own not in set(zip(got["neg_text"], got["neg_image_path"], strict=True))
        if not got["fallback"]:
            assert (np.asarray(got["neg_judge"]) < got["pos_judge"] - beta).all()
    soft, plain = train(params, "unime-v2", 0), train(params, "unime-v2-infonce", 0)
    assert "loss_soft_kl" in soft and "loss_nce" not in soft and np.isfinite(soft["loss"])
    assert "loss_nce" in plain and "loss_soft_kl" not in plain and np.isfinite(plain["loss"])
