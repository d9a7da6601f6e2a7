import torch
import torch.nn.functional as F

from ssame.losses import gather_with_grad, info_nce, saliency_attention_kl


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
