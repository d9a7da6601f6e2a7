import torch
import torch.nn.functional as F

from ssame.losses import (
    gather_varlen_with_grad,
    gather_with_grad,
    info_nce,
    saliency_attention_kl,
    saliency_pool,
    subject_alignment,
)


def test_info_nce_matches_cross_entropy():
    torch.manual_seed(0)
    q, t = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    expected = F.cross_entropy(q @ t.T / 0.05, torch.arange(6))
    assert torch.allclose(info_nce(q, t, 0.05), expected)


def test_info_nce_masks_duplicate_targets():
    torch.manual_seed(0)
    q = F.normalize(torch.randn(4, 8), dim=-1)
    t = F.normalize(torch.randn(4, 8), dim=-1)
    t[1] = t[0]
    ids = torch.tensor([0, 0, 1, 2])
    masked = info_nce(q, t, 0.1, ids)
    logits = q @ t.T / 0.1
    logits[0, 1] = logits[1, 0] = float("-inf")
    assert torch.allclose(masked, F.cross_entropy(logits, torch.arange(4)))
    assert not torch.allclose(masked, info_nce(q, t, 0.1))


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


def test_attention_kl_zero_at_target_and_pulls_toward_it():
    sal = torch.tensor([0.0, 0.0, 1.0, 3.0])
    assert saliency_attention_kl([sal / sal.sum()], [sal]).item() < 1e-4
    logits = torch.zeros(4, requires_grad=True)
    loss = saliency_attention_kl([logits.softmax(0)], [sal])
    assert loss.item() > 0.5
    loss.backward()
    assert logits.grad[3] < 0 < logits.grad[0]  # gradient descent raises attention on the salient tokens


def test_attention_kl_rejects_mismatch():
    import pytest

    with pytest.raises(ValueError, match="one saliency map per attention"):
        saliency_attention_kl([torch.ones(3)], [])


def test_hard_negatives_join_every_row_and_copies_of_the_positive_are_masked():
    torch.manual_seed(0)
    q, t = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    n = F.normalize(torch.randn(2, 8), dim=-1)
    ids, neg_ids = torch.tensor([0, 1, 2]), torch.tensor([3, 0])  # the second negative is row 0's positive
    logits = torch.cat([q @ t.T, q @ n.T], dim=1) / 0.1
    logits[0, 4] = float("-inf")
    expected = F.cross_entropy(logits, torch.arange(3))
    got = info_nce(q, t, 0.1, ids, n, neg_ids)
    assert torch.allclose(got, expected)
    assert got > info_nce(q, t, 0.1, ids)  # more negatives, larger loss


def test_subject_alignment_is_symmetric_masks_shared_phrases_and_is_zero_without_regions():
    torch.manual_seed(0)
    r, p = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 1, 0, 2])
    expected = 0.5 * (info_nce(r, p, 0.1, ids) + info_nce(p, r, 0.1, ids))
    assert torch.allclose(subject_alignment(r, p, 0.1, ids), expected)
    assert subject_alignment(r, r.clone(), 0.1, torch.arange(4)) < subject_alignment(r, p, 0.1, torch.arange(4))
    empty = torch.zeros(0, 8, requires_grad=True)
    zero = subject_alignment(empty, empty, 0.1, torch.zeros(0, dtype=torch.long))
    assert zero.item() == 0 and zero.requires_grad


def test_saliency_pool_weights_tokens_by_saliency():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    pooled = saliency_pool(hidden, torch.tensor([3.0, 1.0, 0.0]))
    assert torch.allclose(pooled, torch.tensor([0.75, 0.25]))


def test_varlen_gather_is_identity_without_process_group():
    x = torch.randn(0, 4)
    assert gather_varlen_with_grad(x) is x
