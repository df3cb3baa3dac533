"""Calibration with known answers: ECE and reliability bins, inverse-temperature fits, out-of-bag calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from heads_data import D_PROT, D_RNA, K, build_head, unit_inputs

from omicsclip.heads import (
    UncertaintyFusionHead,
    calibrate_out_of_bag,
    calibration,
    classification_metrics,
    expected_calibration_error,
    fit_inverse_temperature,
    reliability_bins,
)


def _two_class(conf: float, n: int, n_correct: int) -> tuple[np.ndarray, np.ndarray]:
    probs = np.tile([conf, 1 - conf], (n, 1))
    y = np.array([0] * n_correct + [1] * (n - n_correct))
    return probs, y


def test_ece_zero_when_confidence_equals_accuracy():
    probs, y = _two_class(0.8, 10, 8)  # 80% confident, 80% right
    assert expected_calibration_error(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_answers():
    probs, y = _two_class(1.0, 10, 5)  # certain, half right
    assert expected_calibration_error(probs, y) == pytest.approx(0.5)
    # two bins: 4 cells at 0.9 (all right: gap 0.1), 6 cells at 0.6 (3 right: gap 0.1) -> 0.1
    p = np.vstack([np.tile([0.9, 0.1], (4, 1)), np.tile([0.6, 0.4], (6, 1))])
    y = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(0.1)
    # same data, weights by bin size: 0.4 * |1 - 0.9| + 0.6 * |0.5 - 0.6| = 0.1; change one bin
    y2 = np.array([0, 0, 1, 1, 0, 0, 0, 1, 1, 1])  # first bin 50% right: 0.4 * 0.4 + 0.6 * 0.1 = 0.22
    assert expected_calibration_error(p, y2, n_bins=10) == pytest.approx(0.22)


def test_reliability_bins_edges_and_counts():
    p = np.array([[0.5, 0.5], [0.55, 0.45], [1.0, 0.0]])
    b = reliability_bins(p, np.array([0, 1, 0]), n_bins=10)
    assert b["count"].sum() == 3
    assert b["count"][4] == 1
    assert b["count"][5] == 1
    assert b["count"][9] == 1
    assert np.isnan(b["confidence"][0])
    assert b["accuracy"][9] == 1.0


def test_classification_metrics_against_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    y = rng.integers(0, 4, 200)
    m = classification_metrics(probs, y)
    assert m["accuracy"] == pytest.approx((probs.argmax(1) == y).mean())
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert m["n"] == 200
    assert 0 <= m["ece"] <= 1


def test_uncertainty_calibration_sees_the_prediction_it_calibrates():
    """calibrate_out_of_bag() fits beta on out-of-bag predictions made as predict() makes them: with every member counted as
    out-of-bag they are predict()'s fused log-probabilities (same MC-dropout passes, epistemic variance
    included), and the MC passes change them (a single deterministic pass would calibrate another prediction)."""
    torch.manual_seed(0)
    head: UncertaintyFusionHead = build_head("uncertainty", D_RNA, D_PROT, K, dropout=0.3).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    zr, zp = unit_inputs(20)
    mask = torch.ones(len(zr), 2)
    everyone = torch.ones(head.members, len(zr))
    torch.manual_seed(3)
    want = head.predict(zr, zp, mask, mc_samples=6)["log_probs"]
    torch.manual_seed(3)
    got = head.oob_fused_log_probs(zr, zp, mask, everyone, mc_samples=6)
    assert torch.allclose(got, want, atol=1e-6)
    torch.manual_seed(3)
    single = head.oob_fused_log_probs(zr, zp, mask, everyone, mc_samples=1)
    assert not torch.allclose(single, want, atol=1e-3)
    # out-of-bag: a cell's prediction uses only its selected members (member 0 alone here)
    only0 = torch.zeros_like(everyone)
    only0[0] = 1.0
    torch.manual_seed(3)
    mu, logvar = head._mc_passes(zr, zp, mask, 6)
    a = head._mc_fuse(mu, logvar, mask, only0)
    b = head._mc_fuse(mu[:, :1], logvar, mask, torch.ones(1, len(zr)))
    assert torch.allclose(a[2], b[2])
    assert torch.allclose(a[1], b[1])
    assert not head.training




def test_inverse_temperature_fit_recovers_the_sharpness_of_the_labels():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, K, generator=g)
    y = torch.multinomial(torch.softmax(2.0 * z, 1), 1, generator=g)[:, 0]  # labels drawn at beta = 2
    assert fit_inverse_temperature(z, y) == pytest.approx(2.0, rel=0.1)
    assert fit_inverse_temperature(z, y, hi=1.5) == pytest.approx(1.5)  # bounded


def test_uncertainty_calibration_in_blocks_of_cells(monkeypatch):
    """calibrate_out_of_bag() predicts the labelled cells in blocks (bounded memory): every block is used, and beta comes out
    as with one block, up to the fused prediction's logit-noise draws."""
    torch.manual_seed(0)
    head: UncertaintyFusionHead = build_head("uncertainty", D_RNA, D_PROT, K, dropout=0.3, members=3).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    zr, zp = unit_inputs(300)
    mask = torch.ones(len(zr), 2)
    y = torch.randint(0, K, (len(zr),), generator=torch.Generator().manual_seed(1))
    head.bootstrap(y, torch.Generator().manual_seed(2))
    seen = []
    original = head.oob_fused_log_probs

    def spy(*args, **kw):
        seen.append(len(args[0]))
        return original(*args, **kw)

    torch.manual_seed(5)
    calibrate_out_of_bag(head, zr, zp, y, mask, mc_samples=4)
    whole = float(head.beta)
    monkeypatch.setattr(calibration, "_CALIBRATE_BLOCK", 64)
    monkeypatch.setattr(head, "oob_fused_log_probs", spy)
    torch.manual_seed(5)
    calibrate_out_of_bag(head, zr, zp, y, mask, mc_samples=4)
    assert seen == [64, 64, 64, 64, 44]
    assert float(head.beta) == pytest.approx(whole, rel=0.05)
