"""Dual encoder: output contract, normalisation, temperature handling."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from omicsclip.config import default_config
from omicsclip.model.encoders import DualEncoder, MLPEncoder, build_model
from omicsclip.model.loss import ClipLoss

CFG = default_config()


def dual(n_genes: int, n_proteins: int, **kw) -> DualEncoder:
    """A :class:`DualEncoder` from the config's ``model`` and ``train`` sections, one member and no dropout unless
    ``kw`` (keys of either section) says otherwise."""
    model = {**CFG["model"], "members": 1, "dropout": 0.0, "input_dropout": 0.0}
    train = dict(CFG["train"])
    for key, value in kw.items():
        (model if key in model else train)[key] = value
    return build_model(n_genes, n_proteins, model, train)


def test_forward_returns_normalised_dict():
    m = DualEncoder(30, 5, rna_hidden=[16, 8], prot_hidden=[8], embed_dim=4, dropout=0.1, input_dropout=0.1,
                    temperature=0.1, learnable_temperature=False, temperature_min=0.01, temperature_max=1.0,
                    members=1)
    out = m(torch.randn(7, 30), torch.randn(7, 5))
    assert set(out) == {"rna_features", "prot_features", "logit_scale"}
    assert out["rna_features"].shape == (7, 4)
    assert out["prot_features"].shape == (7, 4)
    assert torch.allclose(out["rna_features"].norm(dim=1), torch.ones(7), atol=1e-5)
    assert torch.allclose(out["prot_features"].norm(dim=1), torch.ones(7), atol=1e-5)
    loss = ClipLoss()(**out)
    loss.backward()
    assert m.rna.proj.weight.grad is not None
    assert m.prot.proj.weight.grad is not None


def test_layer_structure():
    enc = MLPEncoder(10, [6, 5], 3, dropout=0.2, input_dropout=0.1)
    kinds = [type(m).__name__ for m in enc.body]
    assert kinds == ["MaskDropout", "Linear", "LayerNorm", "GELU", "MaskDropout", "Linear", "LayerNorm", "GELU",
                     "MaskDropout"]
    assert MLPEncoder(10, [], 3).proj.in_features == 10  # linear encoder


def test_fixed_temperature_is_a_buffer_not_a_parameter():
    m = dual(4, 3, temperature=0.2)
    assert "logit_scale" not in dict(m.named_parameters())
    assert "logit_scale" in m.state_dict()
    assert m.temperature == pytest.approx(0.2)


def test_learnable_temperature_is_clamped():
    m = dual(4, 3, temperature=0.1, learnable_temperature=True, temperature_min=0.05, temperature_max=0.5)
    assert "logit_scale" in dict(m.named_parameters())
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1 / 0.001))
    assert m.temperature == pytest.approx(0.05)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(1 / 10.0))
    assert m.temperature == pytest.approx(0.5)


def test_learnable_temperature_receives_gradient():
    m = dual(6, 3, rna_hidden=[8], prot_hidden=[8], embed_dim=4, learnable_temperature=True)
    out = m(torch.randn(10, 6), torch.randn(10, 3))
    ClipLoss()(**out).backward()
    assert m.logit_scale.grad is not None
    assert m.logit_scale.grad.abs() > 0


def test_build_model_from_config_and_eval_is_deterministic():
    m = build_model(12, 4, {**CFG["model"], "rna_hidden": [8], "prot_hidden": [8], "embed_dim": 5, "dropout": 0.5,
                            "input_dropout": 0.1, "members": 1}, {**CFG["train"], "temperature": 0.1})
    m.eval()
    x, y = torch.randn(3, 12), torch.randn(3, 4)
    assert torch.equal(m(x, y)["rna_features"], m(x, y)["rna_features"])
    assert m.rna.proj.out_features == 5


def test_rejects_temperature_outside_clamp():
    with pytest.raises(ValueError, match="temperature_max"):
        dual(4, 3, temperature=2.0, temperature_max=1.0)


def test_every_setting_comes_from_the_config():
    """No second default in code: build_model takes every value from the sections, DualEncoder has no
    fallbacks (configs/default.yaml is the one place for defaults)."""
    m = build_model(12, 4, CFG["model"], CFG["train"])
    widths = [layer.n_out for layer in m.rna.body if hasattr(layer, "n_out")]
    assert widths == CFG["model"]["rna_hidden"]
    assert m.members == CFG["model"]["members"]
    assert m.rna.proj.out_features == CFG["model"]["members"] * CFG["model"]["embed_dim"]
    assert m.temperature == pytest.approx(CFG["train"]["temperature"])
    params = inspect.signature(DualEncoder).parameters
    assert all(p.default is inspect.Parameter.empty for p in params.values())
    with pytest.raises(KeyError):
        build_model(12, 4, {k: v for k, v in CFG["model"].items() if k != "rna_hidden"}, CFG["train"])


# ---------------------------------------------------------------------------------------------- ensembles
def _single_from_member(ens: DualEncoder, k: int, hidden: list[int], prot_hidden: list[int]) -> DualEncoder:
    """A members=1 DualEncoder holding member ``k``'s weights of ``ens``."""
    single = dual(ens.rna.n_in, ens.prot.n_in, rna_hidden=hidden, prot_hidden=prot_hidden,
                  embed_dim=ens.rna.proj.n_out, temperature=ens.temperature)
    with torch.no_grad():
        for s_enc, e_enc in ((single.rna, ens.rna), (single.prot, ens.prot)):
            s_layers = [m for m in [*s_enc.body, s_enc.proj] if isinstance(m, torch.nn.Linear | torch.nn.LayerNorm)]
            e_layers = [m for m in [*e_enc.body, e_enc.proj] if hasattr(m, "members")]
            assert len(s_layers) == len(e_layers)
            for s, e in zip(s_layers, e_layers, strict=True):
                if isinstance(s, torch.nn.Linear):
                    s.weight.copy_(e.weight[k].t())
                else:
                    s.weight.copy_(e.weight[k])
                s.bias.copy_(e.bias[k])
    return single


@pytest.mark.parametrize("hidden", [[16, 8], []])
def test_ensemble_members_are_independent_models(hidden):
    """members=K is exactly K separate encoders: outputs are their normalised blocks / sqrt(K), the loss is the
    mean of their losses, and member k's gradient is that of its own loss."""
    torch.manual_seed(0)
    K = 3
    ens = dual(12, 5, rna_hidden=hidden, prot_hidden=[6], embed_dim=4, members=K, temperature=0.1).eval()
    x, y = torch.randn(9, 12), torch.randn(9, 5)
    out = ens(x, y)
    assert out["rna_features"].shape == (9, K * 4)
    assert torch.allclose(out["rna_features"].norm(dim=1), torch.ones(9), atol=1e-5)
    singles = [_single_from_member(ens, k, hidden, [6]).eval() for k in range(K)]
    outs = [s(x, y) for s in singles]
    want = torch.cat([o["rna_features"] for o in outs], dim=1) / math.sqrt(K)
    assert torch.allclose(out["rna_features"], want, atol=1e-5)
    loss = ClipLoss(members=K)(**out)
    losses = [ClipLoss()(**o) for o in outs]
    assert loss.item() == pytest.approx(sum(x.item() for x in losses) / K, rel=1e-5)
    loss.backward()
    losses[1].backward()
    assert torch.allclose(ens.prot.proj.weight.grad[1].t(), singles[1].prot.proj.weight.grad / K, atol=1e-6)


def test_ensemble_chunked_loss_equals_plain():
    torch.manual_seed(1)
    ens = dual(10, 4, rna_hidden=[8], prot_hidden=[8], embed_dim=4, members=2)
    x, y = torch.randn(11, 10), torch.randn(11, 4)
    grads = []
    for loss_fn in (ClipLoss(members=2), ClipLoss(chunk_size=4, members=2)):  # batched members vs member loop
        ens.zero_grad()
        loss = loss_fn(**ens(x, y))
        loss.backward()
        grads.append((loss.item(), ens.rna.proj.weight.grad.clone()))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-6)
    assert torch.allclose(grads[1][1], grads[0][1], atol=1e-6)


def test_ensemble_weight_decay_groups_skip_member_biases_and_norms():
    from omicsclip.train.trainer import _param_groups

    ens = dual(10, 4, rna_hidden=[8], prot_hidden=[8], embed_dim=4, members=3)
    decay, no_decay = _param_groups(ens, 0.1)
    assert all(p.ndim == 3 for p in decay["params"])  # the member weight stacks only
    assert len(decay["params"]) == 4
    assert all(p.ndim <= 2 for p in no_decay["params"])
    single = dual(10, 4, rna_hidden=[8], prot_hidden=[8], embed_dim=4)
    assert len(_param_groups(single, 0.1)[0]["params"]) == 4


def test_members_from_config_and_rejects_zero():
    m = build_model(12, 4, {**CFG["model"], "rna_hidden": [8], "prot_hidden": [8], "embed_dim": 5, "members": 4},
                    {**CFG["train"], "temperature": 0.1})
    assert m.members == 4
    assert m.rna.proj.out_features == 20
    with pytest.raises(ValueError, match="members must be >= 1"):
        MLPEncoder(10, [4], 3, members=0)


def test_ensemble_loss_refuses_features_that_do_not_split_into_members():
    out = dual(10, 4, rna_hidden=[8], prot_hidden=[8], embed_dim=5, members=2)(torch.randn(6, 10),
                                                                              torch.randn(6, 4))
    with pytest.raises(ValueError, match="member blocks"):
        ClipLoss(members=3)(**out)
    empty = dual(10, 4, rna_hidden=[8], prot_hidden=[8], embed_dim=5, members=2).encode_rna(torch.zeros(0, 10))
    assert empty.shape == (0, 10)


def test_mask_dropout_matches_nn_dropout_in_distribution_and_eval():
    """MaskDropout: zeros with probability p, survivors scaled by exactly 1/(1-p) (the values nn.Dropout uses),
    gradients through the same mask, identity in eval mode."""
    from torch import nn

    from omicsclip.model.encoders import MaskDropout

    torch.manual_seed(0)
    x = torch.full((400, 500), 2.0, requires_grad=True)
    d = MaskDropout(0.2).train()
    y = d(x)
    ref = nn.Dropout(0.2).train()(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005
    # p is rounded to a multiple of 2**-15 (0.2 -> 6554/32768) and survivors scaled by the inverse of its complement
    scale = 32768 / (32768 - 6554)
    torch.testing.assert_close(torch.unique(y[kept]), torch.unique(ref[ref != 0]), rtol=1e-4, atol=0)
    assert torch.equal(torch.unique(y[kept]), torch.tensor([2.0 * scale]))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * scale)
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(MaskDropout(0.0).train()(x), x)


@pytest.mark.parametrize("hidden", [[], [7], [7, 5]])
def test_member_major_forward_equals_body_then_proj(hidden):
    """The ensemble's member-major forward = ``proj(body(x))`` (the cells-major layers) in eval mode."""
    torch.manual_seed(0)
    enc = MLPEncoder(6, hidden, 4, dropout=0.3, input_dropout=0.1, members=3)
    with torch.no_grad():
        for m in enc.modules():
            if hasattr(m, "members") and hasattr(m, "weight"):
                m.weight.normal_()
                m.bias.normal_()
    x = torch.randn(11, 6)
    enc.eval()
    torch.testing.assert_close(enc(x), enc.proj(enc.body(x)), atol=1e-5, rtol=1e-5)
    enc.train()  # training: dropout masks differ, shapes and gradients flow
    out = enc(x)
    assert out.shape == (11, 12)
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
