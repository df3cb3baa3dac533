"""Training heads on synthetic embeddings where the answer is known; missing modalities; seeding; calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from heads_data import FAST, FINETUNE, MC, factors, params, typed
from heads_data import accuracy as _acc

from omicsclip.errors import InputError
from omicsclip.evaluation.fewlabel import corrupt
from omicsclip.heads import HeadParams, expected_calibration_error, fit_head, predict_head

# ------------------------------------------------------------------------------- fusions on known answers


@pytest.fixture(scope="module")
def joint():
    tr, te, pool = factors(120, 1), factors(600, 2), factors(400, 3)
    y_tr, y_te = 2 * tr[2] + tr[3], 2 * te[2] + te[3]
    single = {m: _acc(fit_head(tr[0], tr[1], y_tr, 4, params(fusion=m, **FAST)), te[0], te[1], y_te)
              for m in ("rna", "prot")}
    return tr, te, pool, y_tr, y_te, single


def test_single_modality_cannot_solve_joint_labels(joint):
    *_, single = joint
    assert max(single.values()) < 0.62  # each modality sees one factor: at most ~50% of the 4 classes


@pytest.mark.parametrize("fusion", ["early", "late", "gated", "uncertainty", "tensor"])
def test_every_fusion_combines_the_modalities(joint, fusion):
    tr, te, pool, y_tr, y_te, single = joint
    head = fit_head(tr[0], tr[1], y_tr, 4, params(fusion=fusion, **FAST), unlabelled=pool[:2])
    assert _acc(head, te[0], te[1], y_te) >= max(single.values()) + 0.15


@pytest.mark.parametrize(("fusion", "kind"), [("tensor", "linear"), ("early", "mlp")])
def test_interaction_heads_solve_xor(fusion, kind):
    """XOR of a factor per modality: only multiplicative (LMF) or non-linear early fusion can represent it."""
    tr, te = factors(120, 4), factors(600, 5)
    head = fit_head(tr[0], tr[1], tr[2] ^ tr[3], 2, params(fusion=fusion, head=kind, epochs=100))
    assert _acc(head, te[0], te[1], te[2] ^ te[3]) >= 0.9
    if fusion == "early":  # contrast: a linear early-fusion head cannot
        lin = fit_head(tr[0], tr[1], tr[2] ^ tr[3], 2, params(fusion="early", epochs=100))
        assert _acc(lin, te[0], te[1], te[2] ^ te[3]) < 0.7


@pytest.fixture(scope="module")
def noisy_protein():
    tr, te, pool = typed(80, 11, prot_noise=True), typed(600, 12, prot_noise=True), typed(300, 13, prot_noise=True)
    rna_only = _acc(fit_head(tr[0], tr[1], tr[2], 4, params(fusion="rna", **FAST)), te[0], te[1], te[2])
    return tr, te, pool, rna_only


@pytest.mark.parametrize("fusion", ["gated", "uncertainty"])
def test_pure_noise_modality_is_ignored(noisy_protein, fusion):
    """Protein is pure noise: gated and uncertainty heads match the RNA-only head (no negative transfer)."""
    tr, te, pool, rna_only = noisy_protein
    # the variance branch needs the default number of steps to learn that a whole modality is noise
    hp = params(fusion=fusion, ensemble=3, epochs=300 if fusion == "uncertainty" else FAST["epochs"])
    head = fit_head(tr[0], tr[1], tr[2], 4, hp, unlabelled=pool[:2])
    pred = predict_head(head, te[0], te[1], mc_samples=5, seed=0)
    assert (pred["probs"].argmax(1) == te[2]).mean() >= rna_only - 0.025
    assert pred["weights"][:, 0].mean() > 0.6  # more weight on RNA


@pytest.fixture(scope="module")
def typed_heads():
    """Every fusion trained once on clean 4-type data (80 labelled cells + 300 unlabelled)."""
    tr, te, pool = typed(80, 21), typed(500, 22), typed(300, 23)
    heads = {f: fit_head(tr[0], tr[1], tr[2], 4, params(fusion=f, epochs=150, ensemble=3), unlabelled=pool[:2])
             for f in ("early", "late", "gated", "uncertainty", "tensor")}
    return heads, te


def test_corrupted_modality_is_down_weighted(typed_heads):
    """Half of the test cells get one modality replaced by a random unit vector after clean training."""
    heads, te = typed_heads
    zr, zp, hit = corrupt(te[0], te[1], "noise", np.random.default_rng(0))
    drops = {}
    for fusion in ("gated", "uncertainty", "early"):
        head = heads[fusion]
        clean = _acc(head, te[0], te[1], te[2])
        pred = predict_head(head, zr, zp, mc_samples=5, seed=0)
        drops[fusion] = clean - float((pred["probs"].argmax(1) == te[2]).mean())
        if fusion != "early":
            w_bad = np.concatenate([pred["weights"][hit[:, 0], 0], pred["weights"][hit[:, 1], 1]])
            assert np.median(w_bad) < 0.2, fusion
    assert drops["gated"] <= 0.03, drops
    assert drops["uncertainty"] <= 0.03, drops
    assert drops["early"] > max(drops["gated"], drops["uncertainty"]), drops


# ------------------------------------------------------------------------------- missing modality


@pytest.mark.parametrize("fusion", ["early", "late", "gated", "uncertainty", "tensor"])
def test_predicts_from_either_modality_alone(typed_heads, fusion):
    heads, te = typed_heads
    head = heads[fusion]
    n = len(te[2])
    rna_only = np.tile(np.array([[1, 0]], np.float32), (n, 1))
    prot_only = rna_only[:, ::-1].copy()
    zp_missing = np.full_like(te[1], np.nan)  # a missing modality may hold NaN: it is masked, never read
    for mask, zr, zp in ((rna_only, te[0], zp_missing), (prot_only, np.full_like(te[0], np.nan), te[1])):
        pred = predict_head(head, zr, zp, mask=mask, mc_samples=5, seed=0)
        assert np.isfinite(pred["probs"]).all()
        assert (pred["probs"].argmax(1) == te[2]).mean() >= 0.9
        if fusion in ("late", "gated", "uncertainty"):
            present = mask.argmax(1)[0]
            assert np.allclose(pred["weights"][:, present], 1.0)
            assert np.isnan(pred["modality_uncertainty"][:, 1 - present]).all()
    # absent arrays (modality missing for every cell) are the same as masked rows
    a = predict_head(head, te[0], None, mc_samples=5, seed=0)
    b = predict_head(head, te[0], zp_missing, mask=rna_only, mc_samples=5, seed=0)
    assert np.allclose(a["probs"], b["probs"], atol=1e-6)


def test_single_modality_head_needs_its_modality():
    tr = typed(40, 41)
    with pytest.raises(InputError, match="none of the labelled cells"):
        fit_head(tr[0], tr[1], tr[2], 4, params(fusion="prot", epochs=5), mask=np.tile([[1.0, 0.0]], (40, 1)))



def test_heads_are_seeded():
    tr = typed(40, 61)
    a = fit_head(tr[0], tr[1], tr[2], 4, params(fusion="gated", epochs=15, seed=1))
    b = fit_head(tr[0], tr[1], tr[2], 4, params(fusion="gated", epochs=15, seed=1))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)



def test_gated_head_calibration_on_out_of_bag_cells():
    """The gated experts' inverse temperature is fitted on out-of-bag cells and lowers the test ECE."""
    tr, te = typed(60, 31, noise=0.3), typed(1500, 32, noise=0.3)
    head = fit_head(tr[0], tr[1], tr[2], 4, params(fusion="gated", epochs=150))
    assert float(head.beta) != 1.0
    calibrated = expected_calibration_error(predict_head(head, te[0], te[1], mc_samples=MC, seed=0)["probs"], te[2])
    head.beta.fill_(1.0)
    raw = expected_calibration_error(predict_head(head, te[0], te[1], mc_samples=MC, seed=0)["probs"], te[2])
    assert calibrated < raw, (calibrated, raw)


def test_gated_head_without_out_of_bag_cells_keeps_unit_temperature():
    tr = typed(4, 33)  # one cell per class at most: every bootstrap keeps it, nothing is out-of-bag
    y = np.arange(4)
    head = fit_head(tr[0], tr[1], y, 4, params(fusion="gated", epochs=20))
    assert float(head.beta) == 1.0


def test_params_come_whole_from_the_config_section():
    assert HeadParams.from_section({**FINETUNE, "unknown_key": 1}) == params()
    short = {k: v for k, v in FINETUNE.items() if k not in ("mc_samples", "seed")}
    with pytest.raises(InputError, match="missing mc_samples, seed"):
        HeadParams.from_section(short)
    with pytest.raises(InputError, match="finetune.fusion"):
        HeadParams.from_section({**FINETUNE, "fusion": "sum"})


def test_fit_reports_epochs_only_when_asked(monkeypatch, caplog):
    monkeypatch.setenv("OMICSCLIP_PROGRESS_SECONDS", "0")
    tr = typed(40, 0)
    caplog.set_level("INFO", logger="omicsclip.heads.fit")
    fit_head(tr[0], tr[1], tr[2], 4, params(fusion="gated", epochs=5))  # few-label evaluation: many small fits
    assert "finetune" not in caplog.text
    fit_head(tr[0], tr[1], tr[2], 4, params(fusion="gated", epochs=5), progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "omicsclip.heads.fit"]
    assert lines[0].startswith("finetune gated head: 1/5 epoch (20%) ")
    assert "cells/s, loss " in lines[0]
    assert "ETA " in lines[0]
    assert lines[-1].startswith("finetune gated head: finished 5/5 epoch (100%) in ")
