import pytest
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


def _reference_kl(attention, saliency, eps=1e-6, reduction="mean"):
    """The per-image loop saliency_attention_kl replaced."""
    terms = []
    for attn, sal in zip(attention, saliency, strict=True):
        p = attn / attn.sum().clamp_min(eps)
        q = sal.to(attn) / sal.sum().clamp_min(eps)
        terms.append((q * ((q + eps).log() - (p + eps).log())).sum())
    stacked = torch.stack(terms)
    return stacked.sum() if reduction == "sum" else stacked.mean()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_attention_kl_matches_the_per_image_loop(reduction, dtype):
    """Values and gradients of the vectorised loss equal the loop's, over variable lengths (an empty vector, a
    length-1 one, zero-sum attention and saliency, saliency in float16 as the store's maps)."""
    torch.manual_seed(0)
    lengths = [16, 1, 7, 0, 25, 16, 3, 16]
    logits = [torch.randn(n, dtype=dtype) for n in lengths]
    saliency = [torch.rand(n).to(torch.float16) for n in lengths]
    saliency[2] = torch.zeros(7, dtype=torch.float16)
    saliency[5][:8] = 0
    results = []
    for fn in (saliency_attention_kl, _reference_kl):
        leaves = [x.clone().requires_grad_(True) for x in logits]
        attention = [x.softmax(0) for x in leaves]
        attention[6] = leaves[6] * 0  # attention that sums to zero (clamped by eps)
        loss = fn(attention, saliency, reduction=reduction)
        loss.backward()
        results.append((loss, [x.grad for x in leaves]))
    (loss, grads), (ref, ref_grads) = results
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    assert loss.dtype == dtype and loss.shape == () and torch.allclose(loss, ref, **tol)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert torch.allclose(grad, ref_grad, **tol)


def test_attention_kl_in_bfloat16_sums_like_the_loop():
    """bfloat16 attention over long vectors: the per-image sums accumulate in float32, as torch.sum does (an
    index_add in bfloat16 rounds every addition and is off by ~40% here)."""
    torch.manual_seed(0)
    lengths = [1024, 400, 256, 16]
    logits, saliency = [torch.randn(n) for n in lengths], [torch.rand(n) for n in lengths]
    results = []
    for fn in (saliency_attention_kl, _reference_kl):
        leaves = [x.to(torch.bfloat16).requires_grad_(True) for x in logits]
        loss = fn([x.softmax(0) for x in leaves], saliency, reduction="sum")
        loss.backward()
        results.append((loss, [x.grad.float() for x in leaves]))
    (loss, grads), (ref, ref_grads) = results
    assert loss.dtype == torch.bfloat16 and torch.allclose(loss.float(), ref.float(), rtol=1e-2)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert (grad - ref_grad).abs().sum() <= 0.02 * ref_grad.abs().sum()


def test_attention_kl_flattens_a_saliency_grid():
    torch.manual_seed(0)
    attention, grids = [torch.rand(12), torch.rand(6)], [torch.rand(3, 4), torch.rand(2, 3)]
    expected = _reference_kl(attention, [g.ravel() for g in grids])
    assert torch.allclose(saliency_attention_kl(attention, grids), expected, rtol=1e-6)


@pytest.mark.parametrize("sal_len", [1, 15, 17])
def test_attention_kl_rejects_a_vector_length_mismatch(sal_len):
    """A length-1 saliency vector is not broadcast over the attention vector: the image is named."""
    attention, saliency = [torch.rand(16), torch.rand(16)], [torch.rand(16), torch.rand(sal_len)]
    with pytest.raises(ValueError, match=f"attention vector 1 has 16 visual tokens but its saliency map has "
                                         f"{sal_len} values"):
        saliency_attention_kl(attention, saliency)


def test_attention_kl_rejects_empty_input():
    with pytest.raises(ValueError, match="one saliency map per attention"):
        saliency_attention_kl([], [])


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
