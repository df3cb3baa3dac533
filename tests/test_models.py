"""Dual encoder: output contract, normalisation, temperature handling."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.loss import ClipLoss
from pipeline.models import DualEncoder, MLPEncoder, build_model


def test_forward_returns_normalised_dict():
    m = DualEncoder(30, 5, rna_hidden=[16, 8], prot_hidden=[8], embed_dim=4, dropout=0.1, input_dropout=0.1)
    out = m(torch.randn(7, 30), torch.randn(7, 5))
    assert set(out) == {"rna_features", "prot_features", "logit_scale"}
    assert out["rna_features"].shape == (7, 4) and out["prot_features"].shape == (7, 4)
    assert torch.allclose(out["rna_features"].norm(dim=1), torch.ones(7), atol=1e-5)
    assert torch.allclose(out["prot_features"].norm(dim=1), torch.ones(7), atol=1e-5)
    loss = ClipLoss()(**out)
    loss.backward()
    assert m.rna.proj.weight.grad is not None and m.prot.proj.weight.grad is not None


def test_layer_structure():
    enc = MLPEncoder(10, [6, 5], 3, dropout=0.2, input_dropout=0.1)
    kinds = [type(m).__name__ for m in enc.body]
    assert kinds == ["Dropout", "Linear", "LayerNorm", "GELU", "Dropout", "Linear", "LayerNorm", "GELU", "Dropout"]
    assert MLPEncoder(10, [], 3).proj.in_features == 10  # linear encoder


def test_fixed_temperature_is_a_buffer_not_a_parameter():
    m = DualEncoder(4, 3, temperature=0.2)
    assert "logit_scale" not in dict(m.named_parameters())
    assert "logit_scale" in m.state_dict()
    assert m.temperature == pytest.approx(0.2)


def test_learnable_temperature_is_clamped():
    m = DualEncoder(4, 3, temperature=0.1, learnable_temperature=True, temperature_min=0.05, temperature_max=0.5)
    assert "logit_scale" in dict(m.named_parameters())
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1 / 0.001))
    assert m.temperature == pytest.approx(0.05)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1 / 10.0))
    assert m.temperature == pytest.approx(0.5)


def test_learnable_temperature_receives_gradient():
    m = DualEncoder(6, 3, rna_hidden=[8], prot_hidden=[8], embed_dim=4, learnable_temperature=True)
    out = m(torch.randn(10, 6), torch.randn(10, 3))
    ClipLoss()(**out).backward()
    assert m.logit_scale.grad is not None and m.logit_scale.grad.abs() > 0


def test_build_model_from_config_and_eval_is_deterministic():
    m = build_model(12, 4, {"rna_hidden": [8], "prot_hidden": [8], "embed_dim": 5, "dropout": 0.5,
                            "input_dropout": 0.1}, {"temperature": 0.1})
    m.eval()
    x, y = torch.randn(3, 12), torch.randn(3, 4)
    assert torch.equal(m(x, y)["rna_features"], m(x, y)["rna_features"])
    assert m.rna.proj.out_features == 5


def test_rejects_temperature_outside_clamp():
    with pytest.raises(ValueError):
        DualEncoder(4, 3, temperature=2.0, temperature_max=1.0)
