"""Head modules (torch only): shapes, masks, parity of the fusion maths with plain reference formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from heads_data import ARCH, D_PROT, D_RNA, K, build_head, unit_inputs

from omicsclip.heads import (
    FUSIONS,
    MULTIMODAL_FUSIONS,
    TensorFusionHead,
    UncertaintyFusionHead,
    normalised_entropy,
    random_unit_vectors,
)


def uncertainty_head() -> UncertaintyFusionHead:
    return UncertaintyFusionHead(D_RNA, D_PROT, K, kind=ARCH["kind"], hidden=ARCH["hidden"], dropout=ARCH["dropout"],
                                 members=ARCH["members"])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_forward_shapes_and_probabilities(fusion):
    torch.manual_seed(0)
    head = build_head(fusion, D_RNA, D_PROT, K, kind="mlp", hidden=8).eval()
    zr, zp = unit_inputs()
    mask = torch.ones(len(zr), 2)
    out = head.predict(zr, zp, mask, mc_samples=3)
    assert out["log_probs"].shape == (len(zr), K)
    assert torch.allclose(out["log_probs"].exp().sum(1), torch.ones(len(zr)), atol=1e-5)
    w = out["weights"]
    assert w.shape == (len(zr), 2)
    if fusion in ("early", "tensor"):  # interaction heads have no per-modality weight
        assert torch.isnan(w).all()
    else:
        assert torch.allclose(w.sum(1), torch.ones(len(zr)), atol=1e-5)
        assert (w >= 0).all()


@pytest.mark.parametrize("fusion", MULTIMODAL_FUSIONS)
def test_masked_modality_is_ignored_not_zero_filled(fusion):
    """A masked modality may hold anything (NaN, noise): the prediction must not depend on it."""
    torch.manual_seed(0)
    head = build_head(fusion, D_RNA, D_PROT, K, hidden=8).eval()
    zr, zp = unit_inputs()
    mask = torch.ones(len(zr), 2)
    mask[:6, 1] = 0  # first half: RNA only
    mask[6:, 0] = 0  # second half: protein only
    zp_nan, zr_nan = zp.clone(), zr.clone()
    zp_nan[:6] = float("nan")
    zr_nan[6:] = float("nan")
    zp_other, zr_other = zp.clone(), zr.clone()
    zp_other[:6] = random_unit_vectors(6, D_PROT, torch.Generator().manual_seed(9))
    zr_other[6:] = random_unit_vectors(6, D_RNA, torch.Generator().manual_seed(9))
    torch.manual_seed(1)  # same logit-noise draws (uncertainty head) for both calls
    a = head.predict(zr_nan, zp_nan, mask, mc_samples=1)["log_probs"]
    torch.manual_seed(1)
    b = head.predict(zr_other, zp_other, mask, mc_samples=1)["log_probs"]
    assert torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-6)
    if fusion in ("late", "gated", "uncertainty"):  # all weight on the present modality
        w = head.predict(zr_nan, zp_nan, mask, mc_samples=1)["weights"]
        assert torch.allclose(w[:6, 0], torch.ones(6))
        assert torch.allclose(w[6:, 1], torch.ones(6))


def test_early_fusion_uses_mask_as_input():
    """Early fusion sees the mask: a learned 'missing' token, not a zero vector."""
    torch.manual_seed(0)
    head = build_head("early", D_RNA, D_PROT, K).eval()
    with torch.no_grad():
        head.missing_prot.fill_(0.5)
    zr, zp = unit_inputs(4)
    mask = torch.tensor([[1.0, 0.0]] * 4)
    out = head(zr, zp, mask)["log_probs"]
    lin = head.clf[1]
    x = torch.cat([zr * math.sqrt(D_RNA), torch.full((4, D_PROT), 0.5), mask], 1)
    assert torch.allclose(out, torch.log_softmax(lin(x), 1), atol=1e-5)


def test_late_fusion_averages_probabilities():
    torch.manual_seed(0)
    head = build_head("late", D_RNA, D_PROT, K).eval()
    zr, zp = unit_inputs()
    out = head(zr, zp, torch.ones(len(zr), 2))
    p_r = torch.softmax(head.experts[0](zr * math.sqrt(D_RNA)), 1)
    p_p = torch.softmax(head.experts[1](zp * math.sqrt(D_PROT)), 1)
    assert torch.allclose(out["log_probs"].exp(), (p_r + p_p) / 2, atol=1e-6)


def test_gated_fusion_is_weighted_mixture_of_experts():
    torch.manual_seed(0)
    head = build_head("gated", D_RNA, D_PROT, K).eval()
    zr, zp = unit_inputs()
    out = head(zr, zp, torch.ones(len(zr), 2))
    w = out["weights"]
    p = out["expert_log_probs"].exp()
    assert torch.allclose(out["log_probs"].exp(), w[:, :1] * p[:, 0] + w[:, 1:] * p[:, 1], atol=1e-6)


def test_lmf_matches_full_outer_product_tensor():
    """Low-rank fusion equals contracting the full (d_r+1) x (d_p+1) outer-product tensor with the
    rank-r weight tensor sum_i w_i W_rna^(i) (x) W_prot^(i) (Liu et al. 2018)."""
    torch.manual_seed(0)
    head: TensorFusionHead = build_head("tensor", D_RNA, D_PROT, K, hidden=7, tensor_rank=3).eval()
    zr, zp = unit_inputs(5)
    xr = torch.cat([zr * math.sqrt(D_RNA), torch.ones(5, 1)], 1)
    xp = torch.cat([zp * math.sqrt(D_PROT), torch.ones(5, 1)], 1)
    outer = torch.einsum("ni,nj->nij", xr, xp)
    w_full = torch.einsum("r,rih,rjh->ijh", head.rank_weights[0], head.factor_rna, head.factor_prot)
    h = torch.einsum("nij,ijh->nh", outer, w_full) + head.fusion_bias
    ref = torch.log_softmax(head.clf(h), 1)
    assert torch.allclose(head(zr, zp, torch.ones(5, 2))["log_probs"], ref, atol=1e-4)


def test_uncertainty_weights_are_inverse_total_variance():
    torch.manual_seed(0)
    head: UncertaintyFusionHead = build_head("uncertainty", D_RNA, D_PROT, K, dropout=0.2).eval()
    with torch.no_grad():  # untrained heads start with zero logits and unit variance: give them some
        for p in head.parameters():
            p.normal_(0, 0.5)
    zr, zp = unit_inputs()
    torch.manual_seed(1)
    out = head.predict(zr, zp, torch.ones(len(zr), 2), mc_samples=8)
    total = out["aleatoric_var"] + out["epistemic_var"]
    assert torch.allclose(out["modality_var"], total)
    inv = 1.0 / total
    assert torch.allclose(out["weights"], inv / inv.sum(1, keepdim=True), atol=1e-5)
    assert (out["epistemic_var"] > 0).all()  # dropout active in the MC passes
    assert not head.training  # MC passes switch dropout on only temporarily


def test_uncertainty_fusion_is_precision_weighted_logit_average():
    """With no logit noise left (tiny fused variance) the fused class probabilities are the softmax of the
    inverse-variance weighted mean of the centred logits."""
    head = uncertainty_head()
    mu = torch.randn(5, 2, K) * 3
    var = torch.tensor([[1e-6, 4e-6]] * 5)
    lp, logw = head._fuse(mu, var, torch.ones(5, 2))
    w = torch.tensor([0.8, 0.2])
    assert torch.allclose(logw.exp(), w.expand(5, 2), atol=1e-5)
    centred = mu - mu.mean(-1, keepdim=True)
    assert torch.allclose(lp, torch.log_softmax((w[None, :, None] * centred).sum(1), -1), atol=1e-3)
    flat = mu.clone()
    flat[:, 1] = 7.0  # a flat (uninformative) modality cannot move the prediction, whatever its weight
    lp_flat, _ = head._fuse(flat, torch.full((5, 2), 1e-6), torch.ones(5, 2))
    assert torch.equal(lp_flat.argmax(1), mu[:, 0].argmax(1))


def test_kendall_gal_noise_free_limit_is_softmax():
    head = uncertainty_head()
    mu = torch.randn(3, 2, K)
    tiny = torch.full((3, 2), -30.0)
    assert torch.allclose(head._noisy_log_probs(mu, tiny, 5), torch.log_softmax(mu, -1), atol=1e-5)
    big = torch.full((3, 2), 8.0)  # huge logit noise -> predictions spread over classes
    assert (normalised_entropy(head._noisy_log_probs(mu, big, 2000)) > 0.5).all()


def test_normalised_entropy_bounds():
    uniform = torch.log(torch.full((2, K), 1.0 / K))
    certain = F.one_hot(torch.tensor([0, 2]), K).float().clamp_min(1e-30).log()
    assert torch.allclose(normalised_entropy(uniform), torch.ones(2))
    assert torch.allclose(normalised_entropy(certain), torch.zeros(2), atol=1e-5)


def test_unknown_fusion_rejected():
    with pytest.raises(ValueError, match="fusion"):
        build_head("concat", D_RNA, D_PROT, K)
    with pytest.raises(ValueError, match="kind"):
        build_head("late", D_RNA, D_PROT, K, kind="transformer")
