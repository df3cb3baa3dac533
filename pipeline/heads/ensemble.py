"""The bootstrap-ensemble fusion heads, ``gated`` and ``uncertainty``: they judge each modality's reliability.

Each modality has a small ensemble of classifiers, each member fitting its own bootstrap (Poisson(1) counts) of
the labelled cells; a member's out-of-bag cells give honest, not memorised, predictions. Those train the parts
that weigh the modalities (the gate's prior, the variance branch) and calibrate the fused prediction
(:func:`omicsclip.heads.calibration.calibrate_out_of_bag`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omicsclip.heads.base import EnsembleClassifier, FusionHead, masked_log_weights, mix_experts


class BootstrapMixin:
    """Per-member bootstrap of the labelled cells: Poisson(1) in-bag counts; count 0 = out-of-bag (OOB).

    Members fit their in-bag cells; the out-of-bag cells give honest (not memorised) predictions, which train the
    parts that judge a modality's reliability (the gate, the variance branch).
    """

    members = 1
    _boot: torch.Tensor | None = None

    def bootstrap(self, y: torch.Tensor, generator: torch.Generator) -> None:
        """Draw each member's Poisson(1) counts of the labelled cells (classes ``y``), stratified by class."""
        counts = torch.poisson(torch.ones(self.members, len(y)), generator=generator)
        for c in torch.unique(y):  # stratified: every member keeps at least one cell of every class
            rows = torch.nonzero(y == c)[:, 0]
            empty = counts[:, rows].sum(1) == 0
            if empty.any():
                pick = rows[torch.randint(0, len(rows), (int(empty.sum()),), generator=generator)]
                counts[torch.nonzero(empty)[:, 0], pick] = 1.0
        self._boot = counts

    def out_of_bag(self) -> torch.Tensor | None:
        """Return the out-of-bag indicators (members, labelled cells) of the last bootstrap, or ``None``."""
        return None if self._boot is None else (self._boot == 0).float()

    def _bag(self, cells: torch.Tensor | None, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """In-bag weights and out-of-bag indicators (members, rows) of the rows' cells."""
        if self._boot is None or cells is None:
            return torch.ones(self.members, n_rows), torch.zeros(self.members, n_rows)
        w = self._boot[:, cells]
        return w, (w == 0).float()


def _member_nll(member_lp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(members, n) negative log-likelihood of ``y`` from member log-probabilities (members, n, K)."""
    return -member_lp.gather(2, y[None, :, None].expand(member_lp.shape[0], -1, 1))[..., 0]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    return (values * weights).sum() / total if total > 0 else values.sum() * 0.0


def _oob_probs(member_lp: torch.Tensor, oob: torch.Tensor) -> torch.Tensor:
    """Average each row's class probabilities over the members for which it is out-of-bag, detached.

    A row that is in every bag averages all members; member_lp (members, n, K), oob (members, n).
    """
    p = member_lp.detach().exp()
    cnt = oob.sum(0)
    w = torch.where(cnt[None] > 0, oob, torch.ones_like(oob))
    return (p * w[..., None]).sum(0) / w.sum(0)[:, None]


def _expert_oob_probs(member_lp: torch.Tensor, oob: torch.Tensor) -> torch.Tensor:
    """:func:`_oob_probs` of both experts: member_lp (members, n, 2, K) -> (n, 2, K)."""
    return torch.stack([_oob_probs(member_lp[:, :, m], oob) for m in range(2)], 1)


def _oob_mixture(expert_p: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Log of the gate-weighted mixture of the experts' out-of-bag probabilities: (n, 2, K), (n, 2) -> (n, K)."""
    return torch.log((weights[:, :, None] * expert_p).sum(1).clamp_min(1e-12))


class GatedFusionHead(BootstrapMixin, FusionHead):
    """Per-modality experts (small bootstrap ensembles) mixed by per-cell weights from a gate.

    Gate weights = softmax(prior + detector(cell) + log(mask)), masked to the present modalities (a soft mask,
    e.g. a protein panel lacking some of the model's proteins, lowers that modality's weight):

    - the detector: one small network per modality scoring how much its embedding looks like a real cell's,
      trained label-free on augmented cells (labelled and unlabelled training cells): all weight on the clean
      modality when the other was replaced by noise, equal weights (no opinion) on clean cells;
    - ``prior`` (2 numbers): which modality generalises better, fitted on the fused likelihood of the experts'
      OUT-OF-BAG predictions of the labelled cells (a modality that only memorised the few labels gains nothing),
      with a pull towards equal weights.

    Each expert is trained on its own in-bag cells; its prediction is the softmax of its members' mean logits.
    The fused prediction is ``softmax(beta * log(mixture))``: ``beta`` (1 while training) is fitted by
    :func:`~omicsclip.heads.calibration.calibrate_out_of_bag` after training on the mixture of the members' OUT-OF-BAG predictions of the labelled cells.
    A mixture of two experts that are each right on different cells is more often right than it is confident
    (ECE ~0.1 at 99% accuracy on pbmc10k without it); ``beta`` sharpens it to match cells it did not see.
    """

    fusion = "gated"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str, hidden: int,
                 dropout: float, members: int, gate_hidden: int = 32) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        self.members = int(members)
        self.experts = nn.ModuleList(
            [EnsembleClassifier(d, n_classes, kind, hidden, dropout, members) for d in (d_rna, d_prot)]
        )
        self.gate = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, gate_hidden), nn.ReLU(), nn.Linear(gate_hidden, 1)) for d in (d_rna, d_prot)]
        )
        self.prior = nn.Parameter(torch.zeros(2))
        self.prior_strength = 1.0
        self.register_buffer("beta", torch.ones(()))

    def detector(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(n, 2) per-modality scores: how much each (present) embedding looks like a real cell's."""
        xs = self._inputs(z_rna, z_prot, mask)
        return torch.cat([self.gate[i](x) for i, x in enumerate(xs)], dim=1)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        """Mix the experts' predictions by the gate (see the class docstring); one deterministic pass in eval."""
        xr, xp = self._inputs(z_rna, z_prot, mask)
        logits = torch.stack([self.experts[i](x) for i, x in enumerate((xr, xp))], 2)  # (E, n, 2, K)
        elp = torch.log_softmax(logits.mean(0), -1)  # expert: softmax of the members' mean logits
        detector = self.detector(z_rna, z_prot, mask)
        logw = masked_log_weights(detector + self.prior, mask)
        fused = torch.log_softmax(self.beta * mix_experts(elp, logw), -1)  # calibrated (beta = 1 while training)
        return {"log_probs": fused, "weights": logw.exp(), "expert_log_probs": elp,
                "member_log_probs": torch.log_softmax(logits, -1), "detector": detector}

    @staticmethod
    def _detector_loss(detector: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """All weight on the clean modality when the other is noise; equal weights on clean two-modality cells."""
        logw = masked_log_weights(detector, mask)
        both = (mask > 0).all(1)
        total = logw.new_zeros(())
        one = corrupted.any(1) & both
        if one.any():
            clean = (~corrupted[one]).to(torch.long).argmax(1)
            total = total - logw[one].gather(1, clean[:, None]).mean()
        ok = both & ~corrupted.any(1)
        if ok.any():  # KL(uniform || w)
            total = total + (-0.5 * logw[ok].sum(1) - math.log(2.0)).mean()
        return total

    def loss(self, out: dict, y: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor,
             cells: torch.Tensor | None = None) -> torch.Tensor:
        """Return the members' in-bag loss, the prior's out-of-bag fused loss and the detector's loss."""
        member_lp = out["member_log_probs"]  # (E, n, 2, K)
        inbag, oob = self._bag(cells, len(y))
        total = member_lp.new_zeros(())
        for m in range(2):
            use = ((mask[:, m] > 0) & ~corrupted[:, m]).float()
            total = total + _weighted_mean(_member_nll(member_lp[:, :, m], y), inbag * use[None])
        oob_p = _expert_oob_probs(member_lp, oob)
        # the prior learns from the out-of-bag fused likelihood (detector held fixed) ...
        w = masked_log_weights(out["detector"].detach() + self.prior, mask).exp()
        fused = _oob_mixture(oob_p, w)
        # with a pull towards equal weights (KL(uniform || softmax(prior))): a mixture likelihood alone drives the
        # weights to a vertex on small differences, losing what averaging two good experts gains
        lp = torch.log_softmax(self.prior, 0)
        prior_reg = self.prior_strength * (-0.5 * lp.sum() - math.log(2.0))
        # ... the detector from the augmentations only
        return total + F.nll_loss(fused, y) + prior_reg + self._detector_loss(out["detector"], mask, corrupted)

    def oob_fused_log_probs(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor,
                            oob: torch.Tensor, mc_samples: int) -> torch.Tensor:
        """Return the gate's mixture of the experts' probabilities from the members that did not see the cell.

        One deterministic pass, as :meth:`predict`; ``mc_samples`` is not used.
        """
        out = self.forward(z_rna, z_prot, mask)
        return _oob_mixture(_expert_oob_probs(out["member_log_probs"], oob), out["weights"])

    uses_unlabelled = True

    def unlabelled_loss(self, clean, augmented, mask, corrupted):
        """Return the detector's loss on augmented unlabelled cells."""
        return self._detector_loss(self.detector(augmented[0], augmented[1], mask), mask, corrupted)

    def decay_parameters(self) -> list[nn.Parameter]:
        """Return the experts' weight matrices."""
        return [p for e in self.experts for p in e.decay_parameters()]


class UncertaintyFusionHead(BootstrapMixin, FusionHead):
    """Heteroscedastic per-modality heads, fused by inverse total (aleatoric + epistemic) variance.

    Each modality has a mean branch (a small bootstrap ensemble of classifiers with dropout) giving logits, and a
    variance branch giving a per-cell variance of Gaussian logit noise (aleatoric; Kendall & Gal 2017: the loss is
    the negative log of the softmax averaged over noisy-logit draws). Ensemble members learn their means on their
    in-bag labelled cells (variance held fixed). The variance branch learns (means held fixed) on the members'
    OUT-OF-BAG cells — so it grows where a modality does not generalise, e.g. a modality that is pure noise — and
    on augmented cells whose modality was replaced by noise: labelled ones, and unlabelled training cells whose
    label is the head's own clean-cell prediction, scored against another cell's logits (noise carries no
    information about the cell, which only a large variance fits).

    Prediction runs ``mc_samples`` MC-dropout passes of every member. Per modality: aleatoric = the noise
    variance, epistemic = the MC-dropout variance of the logits (mean over members and classes), total = their
    sum (logit units). The modalities' (centred, member-averaged) logits are fused by inverse-variance weighting —
    weights = normalised mask/total, the product of the two Gaussian logit beliefs (a soft mask ``r``, a degraded
    protein panel, reads as variance total/r) — and the fused variance 1/sum(mask/total) is propagated as logit
    noise into the class probabilities. Finally the fused log-probabilities
    are sharpened by ``beta`` (1 while training), which :func:`~omicsclip.heads.calibration.calibrate_out_of_bag` fits on the out-of-bag fused
    predictions of the labelled cells, as in the gated head.
    """

    fusion = "uncertainty"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str, hidden: int,
                 dropout: float, members: int, noise_samples: int = 5) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        self.members = int(members)
        self.noise_samples = int(noise_samples)
        self.mean_branch = nn.ModuleList(
            [EnsembleClassifier(d, n_classes, kind, hidden, dropout, members, zero_last=True) for d in (d_rna, d_prot)]
        )
        self.var_branch = nn.ModuleList(
            [nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 1)) for d in (d_rna, d_prot)]
        )
        for branch in self.var_branch:  # start at unit variance
            nn.init.zeros_(branch[-1].weight)
            nn.init.zeros_(branch[-1].bias)
        self.register_buffer("beta", torch.ones(()))

    def _branches(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor):
        """Member logits (E, n, 2, K) and log-variances (n, 2)."""
        xs = self._inputs(z_rna, z_prot, mask)
        return self._mean_logits(xs), self._log_variances(xs)

    def _mean_logits(self, xs) -> torch.Tensor:
        """Member logits (E, n, 2, K) of the per-modality inputs ``xs`` (see :meth:`_inputs`)."""
        return torch.stack([self.mean_branch[i](x) for i, x in enumerate(xs)], dim=2)

    def _log_variances(self, xs) -> torch.Tensor:
        """Log-variances (n, 2) of the per-modality inputs ``xs``."""
        raw = torch.stack([self.var_branch[i](x)[:, 0] for i, x in enumerate(xs)], dim=1)
        return 8.0 * torch.tanh(raw / 8.0)  # soft bounds: a hard clamp would stop the gradient for good

    def _noisy_log_probs(self, mu: torch.Tensor, logvar: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Return the log of the softmax averaged over ``n_samples`` Gaussian logit-noise draws.

        mu (..., n, 2, K), logvar (n, 2) -> (..., n, 2, K).
        """
        sd = (0.5 * logvar).exp()[..., None]
        eps = torch.randn(n_samples, *mu.shape, device=mu.device, dtype=mu.dtype)
        lp = torch.log_softmax(mu + sd * eps, dim=-1)
        return torch.logsumexp(lp, dim=0) - math.log(n_samples)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        """One stochastic pass (no MC over dropout); see :meth:`predict` for the fused prediction."""
        mu, logvar = self._branches(z_rna, z_prot, mask)
        # training mode: the loss samples the noise itself; skip it here (cheap, noise-free probabilities)
        member_lp = torch.log_softmax(mu, -1) if self.training else self._noisy_log_probs(mu, logvar,
                                                                                          self.noise_samples)
        elp = torch.logsumexp(member_lp, 0) - math.log(self.members)
        total = logvar.exp()  # a single pass has no MC-dropout (epistemic) estimate
        fused, logw = self._fuse(mu.mean(0), total, mask)
        return {"log_probs": torch.log_softmax(self.beta * fused, -1), "weights": logw.exp(), "expert_log_probs": elp,
                "modality_var": total, "mu": mu, "logvar": logvar}

    def loss(self, out: dict, y: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor,
             cells: torch.Tensor | None = None) -> torch.Tensor:
        """Return the mean branch's in-bag loss and the variance branch's out-of-bag and corrupted-cell loss."""
        mu, logvar = out["mu"], out["logvar"]
        inbag, oob = self._bag(cells, len(y))
        lp_mean = self._noisy_log_probs(mu, logvar.detach(), self.noise_samples)  # trains the means
        lp_var = self._noisy_log_probs(mu.detach(), logvar, self.noise_samples)  # trains the variance
        total = mu.new_zeros(())
        for m in range(2):
            present = (mask[:, m] > 0).float()
            bad = corrupted[:, m].float()
            total = total + _weighted_mean(_member_nll(lp_mean[:, :, m], y), inbag * (present * (1 - bad))[None])
            var_rows = torch.maximum(oob * (1 - bad)[None], bad[None].expand_as(oob)) * present[None]
            total = total + _weighted_mean(_member_nll(lp_var[:, :, m], y), var_rows)
        return total

    def decay_parameters(self) -> list[nn.Parameter]:
        """Return the mean branch's weight matrices."""
        return [p for e in self.mean_branch for p in e.decay_parameters()]

    uses_unlabelled = True

    def unlabelled_loss(self, clean, augmented, mask, corrupted):
        """Return the variance branch's loss (means held fixed) with the fused clean-cell prediction as label.

        The variance becomes small where a modality reproduces that label (the data manifold), large where it does
        not (noise).
        """
        with torch.no_grad():
            ref = self.forward(clean[0], clean[1], mask)
            pseudo = ref["log_probs"].argmax(-1)
        mu, logvar = self._branches(augmented[0], augmented[1], mask)
        # A noise input carries no label information: its variance is trained against a confident prediction
        # that has nothing to do with the cell (another cell's clean logits), which only a large variance fits.
        mu = torch.where(corrupted[None, :, :, None], ref["mu"].roll(1, dims=1), mu).detach()
        lp = self._noisy_log_probs(mu, logvar, self.noise_samples)
        total = mu.new_zeros(())
        for m in range(2):
            sel = (mask[:, m] > 0) & corrupted[:, m]
            if sel.any():
                total = total + _member_nll(lp[:, sel, m], pseudo[sel]).mean()
        return total

    def _mc_passes(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor,
                   mc_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return member logits of ``mc_samples`` MC-dropout passes (T, E, n, 2, K) and log-variances (n, 2).

        One deterministic pass when ``mc_samples`` <= 1; the variance branch has no dropout.
        """
        passes = max(1, int(mc_samples))
        xs = self._inputs(z_rna, z_prot, mask)  # once: only the mean branch has dropout
        was = self.training
        self.train(passes > 1)  # dropout on: MC-dropout passes (the heads have no batch-norm)
        try:
            mu = torch.stack([self._mean_logits(xs) for _ in range(passes)])
            logvar = self._log_variances(xs)
        finally:
            self.train(was)
        return mu, logvar

    def _mc_fuse(self, mu: torch.Tensor, logvar: torch.Tensor, mask: torch.Tensor, members: torch.Tensor):
        """Fuse MC-dropout logits ``mu`` (T, E, n, 2, K) of the members selected per cell by ``members``.

        ``members`` (E, n) is 1 where a member is used. The selected members' mean logits are fused with variance
        aleatoric + epistemic (the MC-dropout variance within each selected member, averaged over them and the
        classes). Returns (log_probs, log_weights, total, epistemic).
        """
        n_sel = members.sum(0).clamp_min(1.0)  # (n,)
        mean = (mu * members[None, :, :, None, None]).sum((0, 1)) / (len(mu) * n_sel)[:, None, None]
        aleatoric = logvar.exp()
        if len(mu) > 1:
            within = mu.var(0, unbiased=False).mean(-1)  # (E, n, 2)
            epistemic = (within * members[:, :, None]).sum(0) / n_sel[:, None]
        else:
            epistemic = torch.zeros_like(aleatoric)
        total = aleatoric + epistemic
        fused, logw = self._fuse(mean, total, mask)
        return fused, logw, total, epistemic

    @torch.no_grad()
    def predict(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor, mc_samples: int) -> dict:
        """Predict with ``mc_samples`` MC-dropout passes of every member, fused by inverse total variance."""
        mu, logvar = self._mc_passes(z_rna, z_prot, mask, mc_samples)
        fused, logw, total, epistemic = self._mc_fuse(mu, logvar, mask, mu.new_ones(mu.shape[1:3]))
        # every member's noisy probabilities in every pass (one pass at a time: bounded memory)
        lp = torch.cat([self._noisy_log_probs(m, logvar, self.noise_samples) for m in mu])
        elp = torch.logsumexp(lp, dim=0) - math.log(len(lp))
        return {"log_probs": torch.log_softmax(self.beta * fused, -1), "weights": logw.exp(),
                "expert_log_probs": elp, "modality_var": total, "aleatoric_var": logvar.exp(),
                "epistemic_var": epistemic}

    def oob_fused_log_probs(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor,
                            oob: torch.Tensor, mc_samples: int) -> torch.Tensor:
        """Return :meth:`predict`'s fused prediction from, for each cell, only the members that did not see it.

        Same passes, same variances; ``oob`` (E, n) marks the out-of-bag members of each cell.
        """
        mu, logvar = self._mc_passes(z_rna, z_prot, mask, mc_samples)
        return self._mc_fuse(mu, logvar, mask, oob)[0]

    def _fuse(self, mu: torch.Tensor, var: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse-variance (precision-weighted) fusion of the modalities' logit estimates.

        Each modality gives centred logits ``mu`` (n, 2, K) with variance ``var`` (n, 2); the fused logits are
        their precision-weighted mean, with variance 1 / sum(1/var) (the product of the Gaussian beliefs), turned
        into probabilities by averaging the softmax over logit-noise draws. A flat (uninformative) modality adds
        the same amount to every class and so cannot move the prediction. Returns (log_probs, log_weights).
        """
        logw = masked_log_weights(-var.clamp_min(1e-8).log(), mask)
        w = logw.exp()
        centred = mu - mu.mean(-1, keepdim=True)
        fused_mu = (w[:, :, None] * centred).sum(1)  # (n, K)
        precision = (mask / var.clamp_min(1e-8)).sum(1)
        fused_logvar = (-precision.clamp_min(1e-8).log())[:, None]  # (n, 1): one "modality"
        lp = self._noisy_log_probs(fused_mu[:, None, :], fused_logvar, max(self.noise_samples, 20))[:, 0]
        return lp, logw
