import pandas as pd
import pytest
import torch

from ssame.evaluate import hit_at_1
from ssame.evaluate.aggregate import aggregate

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


def test_hit_at_1_ground_truth_at_index_zero_and_first_max_wins():
    frame = pd.DataFrame({"qry_text": ["q0", "q1", "q2"], "qry_img_path": ["", "", ""],
                          "tgt_text": [["a", "b"], ["b", "a"], ["a", "c"]],
                          "tgt_img_path": [["", ""], ["", ""], ["", ""]]})
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    cands = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # a, b, c (c ties with a)
    q_index = {("q0", ""): 0, ("q1", ""): 1, ("q2", ""): 2}
    c_index = {("a", ""): 0, ("b", ""): 1, ("c", ""): 2}
    assert hit_at_1(frame, queries, q_index, cands, c_index) == [1, 0, 1]
