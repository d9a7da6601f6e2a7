import pytest
import torch

from ssame.model.regen import FeatureRegenerator


def test_identity_when_gates_closed():
    regen = FeatureRegenerator(8, gain_init=0.0)
    tokens = torch.randn(5, 8)
    assert torch.allclose(regen(tokens, torch.rand(5)), tokens)


def test_emphasises_subject_and_suppresses_background():
    regen = FeatureRegenerator(8)
    tokens = torch.ones(2, 8)
    out = regen(tokens, torch.tensor([1.0, 0.0]))
    assert (out[0] > tokens[0]).all() and (out[1] < tokens[1]).all()


def test_scale_invariant_in_saliency():
    regen = FeatureRegenerator(4)
    tokens, sal = torch.randn(3, 4), torch.tensor([0.2, 0.5, 1.0])
    assert torch.allclose(regen(tokens, sal), regen(tokens, 7 * sal))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 visual tokens"):
        FeatureRegenerator(4)(torch.randn(3, 4), torch.rand(4))
