"""Few-label classification heads on the shared embedding: one module per fusion strategy (torch + numpy only).

Every head takes the per-modality embeddings ``z_rna`` (n x d_rna) and ``z_prot`` (n x d_prot) and an explicit
presence ``mask`` (n x 2 float, columns rna, prot; 1 = present). A missing modality is never silently zero-filled:
rows whose mask is 0 are ignored whatever they hold (NaN included), and each head uses the mask explicitly —
learned "missing" tokens plus mask features (early), masked averages (late), a masked softmax gate (gated), masked
inverse-variance weights (uncertainty), the LMF appended-1 unimodal terms (tensor).

Strategies: ``early`` (one classifier on [z_rna, z_prot, mask]); ``late`` (one classifier per modality,
probabilities averaged); ``gated`` (per-modality bootstrap-ensemble experts mixed by a per-cell gate network);
``uncertainty`` (heteroscedastic per-modality heads, inverse-variance fusion of their logits); ``tensor``
(low-rank multimodal fusion, Liu et al. 2018); ``rna`` / ``prot`` (single-modality baselines).

``forward`` returns a dict of tensors:

``log_probs``  (n, K) log class probabilities of the fused prediction;
``weights``    (n, 2) per-modality weights in the fused prediction (NaN where a head has none: early, tensor);
``expert_log_probs`` (n, 2, K) per-modality predictions, for heads that have per-modality experts;
``modality_var`` (n, 2) per-modality total predictive variance (uncertainty head only).

``loss(out, y, mask, corrupted, cells)`` is the training objective given a forward output; ``corrupted`` (n, 2
bool) marks modalities replaced by noise during augmentation, ``cells`` the labelled cell of each row (rows repeat
cells; ensemble heads use it for their bootstrap). Heads with ``uses_unlabelled`` also have a label-free
``unlabelled_loss`` on augmented unlabelled cells. ``predict`` is the inference entry point (MC dropout for the
uncertainty head).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODALITIES = ("rna", "prot")
FUSIONS = ("early", "late", "gated", "uncertainty", "tensor", "rna", "prot")
MULTIMODAL_FUSIONS = ("early", "late", "gated", "uncertainty", "tensor")
HEAD_KINDS = ("linear", "mlp")
_NEG = -1e9


def make_classifier(in_dim: int, n_classes: int, kind: str, hidden: int, dropout: float) -> nn.Sequential:
    """A linear (dropout → linear) or one-hidden-layer MLP classifier; dropout is what MC dropout samples."""
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )
    raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")


def _fill(z: torch.Tensor, present: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Rows with ``present`` = 0 replaced by ``fill`` (a learned token) or zeros; NaNs there never propagate."""
    keep = present[:, None] > 0
    other = torch.zeros_like(z) if fill is None else fill.expand_as(z)
    return torch.where(keep, z, other)


def _mix(expert_log_probs: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """log sum_m w_m p_m(k) from per-modality log-probabilities (n, 2, K) and log-weights (n, 2)."""
    return torch.logsumexp(expert_log_probs + log_weights[:, :, None], dim=1)


def _masked_log_weights(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(scores.masked_fill(mask <= 0, _NEG), dim=1)


def _nan_weights(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n, 2), float("nan"), dtype=like.dtype, device=like.device)


class FusionHead(nn.Module):
    """Base class: input scaling, shared training loss for per-modality experts, eval-mode prediction.

    Embeddings are L2-normalised, so coordinates are ~1/sqrt(d); inputs are multiplied by sqrt(d) for the
    classifiers to see unit-scale features.
    """

    fusion = ""

    def __init__(self, d_rna: int, d_prot: int, n_classes: int) -> None:
        super().__init__()
        self.d_rna, self.d_prot, self.n_classes = int(d_rna), int(d_prot), int(n_classes)
        self.scale = (math.sqrt(d_rna), math.sqrt(d_prot))

    def _inputs(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor):
        return _fill(z_rna, mask[:, 0]) * self.scale[0], _fill(z_prot, mask[:, 1]) * self.scale[1]

    def _expert_loss(self, out: dict, y: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each modality's expert on the cells where that modality is present and clean."""
        elp = out["expert_log_probs"]
        total = elp.new_zeros(())
        for m in range(2):
            use = (mask[:, m] > 0) & ~corrupted[:, m]
            if use.any():
                total = total + F.nll_loss(elp[use, m], y[use])
        return total

    def loss(self, out: dict, y: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor,
             cells: torch.Tensor | None = None) -> torch.Tensor:
        """Training objective; ``cells`` maps each row to its labelled cell (rows repeat cells)."""
        return F.nll_loss(out["log_probs"], y)

    def bootstrap(self, y: torch.Tensor, generator: torch.Generator) -> None:
        """Draw per-member bootstrap weights of the labelled cells (classes ``y``; heads with ensembles)."""

    def decay_parameters(self) -> list[nn.Parameter]:
        """Parameters under the L2 penalty: the classifiers' weight matrices (not biases, gates, variances)."""
        return [p for p in self.parameters() if p.ndim >= 2]

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups (a head may train some parts faster)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    uses_unlabelled = False

    def unlabelled_loss(self, clean: tuple[torch.Tensor, torch.Tensor], augmented: tuple[torch.Tensor, torch.Tensor],
                        mask: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """Label-free loss on augmented unlabelled cells (only heads with ``uses_unlabelled``).

        ``clean`` are the (z_rna, z_prot) before augmentation, ``augmented`` after; ``mask`` and ``corrupted``
        describe the augmented cells.
        """
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor, mc_samples: int = 1) -> dict:
        """Deterministic (eval-mode) prediction; the uncertainty head overrides this with MC dropout."""
        was = self.training
        self.eval()
        try:
            return self.forward(z_rna, z_prot, mask)
        finally:
            self.train(was)


class SingleModalityHead(FusionHead):
    """Classifier on one modality; cells without it get a uniform prediction (callers refuse them)."""

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, modality: str, kind: str = "linear",
                 hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.fusion = modality
        self.m = MODALITIES.index(modality)
        self.clf = make_classifier((d_rna, d_prot)[self.m], n_classes, kind, hidden, dropout)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        x = self._inputs(z_rna, z_prot, mask)[self.m]
        lp = torch.log_softmax(self.clf(x), dim=1)
        present = mask[:, self.m] > 0
        lp = torch.where(present[:, None], lp, torch.full_like(lp, -math.log(self.n_classes)))
        w = torch.zeros(len(x), 2, dtype=lp.dtype, device=lp.device)
        w[:, self.m] = present.to(lp.dtype)
        return {"log_probs": lp, "weights": w}

    def loss(self, out: dict, y: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor,
             cells: torch.Tensor | None = None) -> torch.Tensor:
        use = mask[:, self.m] > 0
        if not use.any():
            return out["log_probs"].sum() * 0.0
        return F.nll_loss(out["log_probs"][use], y[use])


class EarlyFusionHead(FusionHead):
    """One classifier on [RNA, protein, mask]; a missing modality is replaced by a learned token."""

    fusion = "early"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str = "linear", hidden: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        self.missing_rna = nn.Parameter(torch.zeros(d_rna))
        self.missing_prot = nn.Parameter(torch.zeros(d_prot))
        self.clf = make_classifier(d_rna + d_prot + 2, n_classes, kind, hidden, dropout)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        xr = _fill(z_rna * self.scale[0], mask[:, 0], self.missing_rna)
        xp = _fill(z_prot * self.scale[1], mask[:, 1], self.missing_prot)
        logits = self.clf(torch.cat([xr, xp, mask], dim=1))
        return {"log_probs": torch.log_softmax(logits, dim=1), "weights": _nan_weights(len(xr), logits)}


class _ExpertsMixin:
    """Per-modality expert classifiers shared by the late, gated and uncertainty heads."""

    def _make_experts(self, n_classes: int, kind: str, hidden: int, dropout: float) -> None:
        self.experts = nn.ModuleList(
            [make_classifier(d, n_classes, kind, hidden, dropout) for d in (self.d_rna, self.d_prot)]
        )

    def _expert_log_probs(self, xr: torch.Tensor, xp: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.log_softmax(self.experts[i](x), dim=1) for i, x in enumerate((xr, xp))], dim=1)


class LateFusionHead(_ExpertsMixin, FusionHead):
    """One classifier per modality trained on its own; class probabilities averaged over present modalities."""

    fusion = "late"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str = "linear", hidden: int = 64,
                 dropout: float = 0.1) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        self._make_experts(n_classes, kind, hidden, dropout)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        xr, xp = self._inputs(z_rna, z_prot, mask)
        elp = self._expert_log_probs(xr, xp)
        logw = _masked_log_weights(torch.zeros_like(mask), mask)
        return {"log_probs": _mix(elp, logw), "weights": logw.exp(), "expert_log_probs": elp}

    def loss(self, out: dict, y: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor,
             cells: torch.Tensor | None = None) -> torch.Tensor:
        return self._expert_loss(out, y, mask, corrupted)


class EnsembleClassifier(nn.Module):
    """``members`` independently initialised classifiers (as :func:`make_classifier`) in one batched pass.

    ``forward(x)`` maps (n, d) to member logits (members, n, K); dropout masks are independent per member.
    """

    def __init__(self, in_dim: int, n_classes: int, kind: str, hidden: int, dropout: float, members: int,
                 zero_last: bool = False) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")
        self.members, self.kind = int(members), kind
        self.dropout = nn.Dropout(dropout)
        dims = [in_dim, n_classes] if kind == "linear" else [in_dim, hidden, n_classes]
        self.w = nn.ParameterList()
        self.b = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            bound = 1.0 / math.sqrt(a)  # nn.Linear's default initialisation
            self.w.append(nn.Parameter(torch.empty(self.members, a, b).uniform_(-bound, bound)))
            self.b.append(nn.Parameter(torch.empty(self.members, 1, b).uniform_(-bound, bound)))
        if zero_last:  # members then differ only through their data (bootstrap), not their initialisation
            nn.init.zeros_(self.w[-1])
            nn.init.zeros_(self.b[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.members, -1, -1)
        if self.kind == "linear":
            h = self.dropout(h)
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.w) - 1:
                h = self.dropout(torch.relu(h))
        return h

    def decay_parameters(self) -> list[nn.Parameter]:
        return list(self.w)


_CALIBRATE_BLOCK = 4096  # labelled cells per block of out-of-bag predictions in calibrate()


class _BootstrapMixin:
    """Per-member bootstrap of the labelled cells: Poisson(1) in-bag counts; count 0 = out-of-bag (OOB).

    Members fit their in-bag cells; the out-of-bag cells give honest (not memorised) predictions, which train the
    parts that judge a modality's reliability (the gate, the variance branch).
    """

    members = 1
    _boot: torch.Tensor | None = None

    def bootstrap(self, y: torch.Tensor, generator: torch.Generator) -> None:
        counts = torch.poisson(torch.ones(self.members, len(y)), generator=generator)
        for c in torch.unique(y):  # stratified: every member keeps at least one cell of every class
            rows = torch.nonzero(y == c)[:, 0]
            empty = counts[:, rows].sum(1) == 0
            if empty.any():
                pick = rows[torch.randint(0, len(rows), (int(empty.sum()),), generator=generator)]
                counts[torch.nonzero(empty)[:, 0], pick] = 1.0
        self._boot = counts

    @torch.no_grad()
    def calibrate(self, z_rna: torch.Tensor, z_prot: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                  mc_samples: int = 1) -> None:
        """Fit the inverse temperature ``beta`` of the fused prediction on the labelled cells (same order as in
        training), from their out-of-bag predictions (members that did not see the cell), made the way
        :meth:`predict` makes them (``mc_samples``: its MC-dropout passes, where the head uses them). Fewer than 2
        cells with an out-of-bag prediction (e.g. one label per class: every bag keeps it): ``beta = 1``."""
        self.beta.fill_(1.0)
        if self._boot is None:
            return
        oob = (self._boot == 0).float()  # (members, n)
        has = oob.sum(0) > 0
        if int(has.sum()) < 2:
            return
        was = self.training
        self.eval()
        blocks = [slice(s, s + _CALIBRATE_BLOCK) for s in range(0, len(y), _CALIBRATE_BLOCK)]
        try:  # in blocks of cells: every cell's prediction is its own; memory stays bounded with many MC passes
            fused = torch.cat([self._oob_fused_log_probs(z_rna[b], z_prot[b], mask[b], oob[:, b], mc_samples)
                               for b in blocks])
        finally:
            self.train(was)
        self.beta.fill_(fit_inverse_temperature(fused[has], y[has]))

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


BETA_RANGE = (0.25, 4.0)  # bounds of a fitted inverse temperature (few cells: never extrapolate far)


def fit_inverse_temperature(logits: torch.Tensor, y: torch.Tensor, lo: float = BETA_RANGE[0],
                            hi: float = BETA_RANGE[1]) -> float:
    """The ``beta`` in ``[lo, hi]`` that minimises the NLL of ``softmax(beta * logits)`` for classes ``y``.

    The NLL is convex in ``beta``, so a log-spaced grid followed by a finer grid around its minimum finds it.
    """
    logits, y = logits.detach().double(), y.long()

    def nll(betas: torch.Tensor) -> torch.Tensor:  # one beta at a time: memory stays cells x classes
        return torch.stack([F.cross_entropy(b * logits, y) for b in betas])

    grid = torch.logspace(math.log10(lo), math.log10(hi), 61, dtype=torch.float64)
    i = int(nll(grid).argmin())
    fine = torch.linspace(float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)]), 41, dtype=torch.float64)
    return float(fine[int(nll(fine).argmin())])


def _oob_probs(member_lp: torch.Tensor, oob: torch.Tensor) -> torch.Tensor:
    """Per-row class probabilities averaged over the members for which the row is out-of-bag (all members
    for a row that is in every bag), detached; member_lp (members, n, K), oob (members, n)."""
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


class GatedFusionHead(_BootstrapMixin, FusionHead):
    """Per-modality experts (small bootstrap ensembles) mixed by per-cell weights from a gate.

    Gate weights = softmax(prior + detector(cell)), masked to the present modalities:

    - the detector: one small network per modality scoring how much its embedding looks like a real cell's,
      trained label-free on augmented cells (labelled and unlabelled training cells): all weight on the clean
      modality when the other was replaced by noise, equal weights (no opinion) on clean cells;
    - ``prior`` (2 numbers): which modality generalises better, fitted on the fused likelihood of the experts'
      OUT-OF-BAG predictions of the labelled cells (a modality that only memorised the few labels gains nothing),
      with a pull towards equal weights.

    Each expert is trained on its own in-bag cells; its prediction is the softmax of its members' mean logits.
    The fused prediction is ``softmax(beta * log(mixture))``: ``beta`` (1 while training) is fitted by
    :meth:`calibrate` after training on the mixture of the members' OUT-OF-BAG predictions of the labelled cells.
    A mixture of two experts that are each right on different cells is more often right than it is confident
    (ECE ~0.1 at 99% accuracy on pbmc10k without it); ``beta`` sharpens it to match cells it did not see.
    """

    fusion = "gated"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str = "linear", hidden: int = 64,
                 dropout: float = 0.1, members: int = 5, gate_hidden: int = 32) -> None:
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
        xr, xp = self._inputs(z_rna, z_prot, mask)
        logits = torch.stack([self.experts[i](x) for i, x in enumerate((xr, xp))], 2)  # (E, n, 2, K)
        elp = torch.log_softmax(logits.mean(0), -1)  # expert: softmax of the members' mean logits
        detector = self.detector(z_rna, z_prot, mask)
        logw = _masked_log_weights(detector + self.prior, mask)
        fused = torch.log_softmax(self.beta * _mix(elp, logw), -1)  # calibrated (beta = 1 while training)
        return {"log_probs": fused, "weights": logw.exp(), "expert_log_probs": elp,
                "member_log_probs": torch.log_softmax(logits, -1), "detector": detector}

    @staticmethod
    def _detector_loss(detector: torch.Tensor, mask: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """All weight on the clean modality when the other is noise; equal weights on clean two-modality cells."""
        logw = _masked_log_weights(detector, mask)
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
        member_lp = out["member_log_probs"]  # (E, n, 2, K)
        inbag, oob = self._bag(cells, len(y))
        total = member_lp.new_zeros(())
        for m in range(2):
            use = ((mask[:, m] > 0) & ~corrupted[:, m]).float()
            total = total + _weighted_mean(_member_nll(member_lp[:, :, m], y), inbag * use[None])
        oob_p = _expert_oob_probs(member_lp, oob)
        # the prior learns from the out-of-bag fused likelihood (detector held fixed) ...
        w = _masked_log_weights(out["detector"].detach() + self.prior, mask).exp()
        fused = _oob_mixture(oob_p, w)
        # with a pull towards equal weights (KL(uniform || softmax(prior))): a mixture likelihood alone drives the
        # weights to a vertex on small differences, losing what averaging two good experts gains
        lp = torch.log_softmax(self.prior, 0)
        prior_reg = self.prior_strength * (-0.5 * lp.sum() - math.log(2.0))
        # ... the detector from the augmentations only
        return total + F.nll_loss(fused, y) + prior_reg + self._detector_loss(out["detector"], mask, corrupted)

    def _oob_fused_log_probs(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor,
                             oob: torch.Tensor, mc_samples: int = 1) -> torch.Tensor:
        """Each expert's probabilities averaged over the members that did not see the cell, mixed by the gate
        (one deterministic pass, as :meth:`predict`; ``mc_samples`` is not used)."""
        out = self.forward(z_rna, z_prot, mask)
        return _oob_mixture(_expert_oob_probs(out["member_log_probs"], oob), out["weights"])

    uses_unlabelled = True

    def unlabelled_loss(self, clean, augmented, mask, corrupted):
        return self._detector_loss(self.detector(augmented[0], augmented[1], mask), mask, corrupted)

    def decay_parameters(self) -> list[nn.Parameter]:
        return [p for e in self.experts for p in e.decay_parameters()]


class UncertaintyFusionHead(_BootstrapMixin, FusionHead):
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
    weights = normalised 1/total, the product of the two Gaussian logit beliefs — and the fused variance
    1/sum(1/total) is propagated as logit noise into the class probabilities. Finally the fused log-probabilities
    are sharpened by ``beta`` (1 while training), which :meth:`calibrate` fits on the out-of-bag fused
    predictions of the labelled cells, as in the gated head.
    """

    fusion = "uncertainty"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str = "linear", hidden: int = 64,
                 dropout: float = 0.1, members: int = 5, noise_samples: int = 5) -> None:
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
        """log of the softmax averaged over ``n_samples`` Gaussian logit-noise draws; mu (..., n, 2, K),
        logvar (n, 2) -> (..., n, 2, K)."""
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
        return [p for e in self.mean_branch for p in e.decay_parameters()]

    uses_unlabelled = True

    def unlabelled_loss(self, clean, augmented, mask, corrupted):
        """Variance branch only (means held fixed), with the head's fused prediction on the clean cell as label:
        small where a modality reproduces it (the data manifold), large where it does not (noise)."""
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
        """Member logits of ``mc_samples`` MC-dropout passes (T, E, n, 2, K; one deterministic pass when
        ``mc_samples`` <= 1) and the log-variances (n, 2; the variance branch has no dropout)."""
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
        """Fuse MC-dropout logits ``mu`` (T, E, n, 2, K) of the members selected per cell by ``members`` (E, n;
        1 = use): their mean logits, with variance aleatoric + epistemic (the MC-dropout variance within each
        selected member, averaged over them and the classes). Returns (log_probs, log_weights, total, epistemic)."""
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
    def predict(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor, mc_samples: int = 20) -> dict:
        mu, logvar = self._mc_passes(z_rna, z_prot, mask, mc_samples)
        fused, logw, total, epistemic = self._mc_fuse(mu, logvar, mask, mu.new_ones(mu.shape[1:3]))
        # every member's noisy probabilities in every pass (one pass at a time: bounded memory)
        lp = torch.cat([self._noisy_log_probs(m, logvar, self.noise_samples) for m in mu])
        elp = torch.logsumexp(lp, dim=0) - math.log(len(lp))
        return {"log_probs": torch.log_softmax(self.beta * fused, -1), "weights": logw.exp(),
                "expert_log_probs": elp, "modality_var": total, "aleatoric_var": logvar.exp(),
                "epistemic_var": epistemic}

    def _oob_fused_log_probs(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor,
                             oob: torch.Tensor, mc_samples: int = 1) -> torch.Tensor:
        """The fused prediction of :meth:`predict` (same passes, same variances) from, for each cell, only the
        members that did not see it (``oob``, (E, n))."""
        mu, logvar = self._mc_passes(z_rna, z_prot, mask, mc_samples)
        return self._mc_fuse(mu, logvar, mask, oob)[0]

    def _fuse(self, mu: torch.Tensor, var: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse-variance (precision-weighted) fusion of the modalities' logit estimates.

        Each modality gives centred logits ``mu`` (n, 2, K) with variance ``var`` (n, 2); the fused logits are
        their precision-weighted mean, with variance 1 / sum(1/var) (the product of the Gaussian beliefs), turned
        into probabilities by averaging the softmax over logit-noise draws. A flat (uninformative) modality adds
        the same amount to every class and so cannot move the prediction. Returns (log_probs, log_weights).
        """
        logw = _masked_log_weights(-var.clamp_min(1e-8).log(), mask)
        w = logw.exp()
        centred = mu - mu.mean(-1, keepdim=True)
        fused_mu = (w[:, :, None] * centred).sum(1)  # (n, K)
        precision = (mask / var.clamp_min(1e-8)).sum(1)
        fused_logvar = (-precision.clamp_min(1e-8).log())[:, None]  # (n, 1): one "modality"
        lp = self._noisy_log_probs(fused_mu[:, None, :], fused_logvar, max(self.noise_samples, 20))[:, 0]
        return lp, logw


class TensorFusionHead(FusionHead):
    """Low-rank multimodal fusion (Liu et al. 2018, LMF): rank-r factorised outer product of [z_rna, 1], [z_prot, 1].

    h = sum_i w_i (z_rna' W_rna^(i)) * (z_prot' W_prot^(i)) + b, then a classifier on h. The appended 1s keep the
    unimodal terms, so a missing modality (mask 0, its vector set to 0 by design) leaves the other modality's
    unimodal term; training with modality dropout teaches that term to predict alone.
    """

    fusion = "tensor"

    def __init__(self, d_rna: int, d_prot: int, n_classes: int, *, kind: str = "linear", hidden: int = 64,
                 dropout: float = 0.1, rank: int = 8) -> None:
        super().__init__(d_rna, d_prot, n_classes)
        self.rank = int(rank)
        self.factor_rna = nn.Parameter(torch.empty(rank, d_rna + 1, hidden))
        self.factor_prot = nn.Parameter(torch.empty(rank, d_prot + 1, hidden))
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.zeros(hidden))
        for p in (self.factor_rna, self.factor_prot, self.rank_weights):
            nn.init.xavier_normal_(p)
        self.clf = make_classifier(hidden, n_classes, kind, hidden, dropout)

    def forward(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor) -> dict:
        xr, xp = self._inputs(z_rna, z_prot, mask)
        ones = xr.new_ones(len(xr), 1)
        fr = torch.einsum("nd,rdh->rnh", torch.cat([xr, ones], 1), self.factor_rna)
        fp = torch.einsum("nd,rdh->rnh", torch.cat([xp, ones], 1), self.factor_prot)
        h = torch.einsum("r,rnh->nh", self.rank_weights[0], fr * fp) + self.fusion_bias
        logits = self.clf(h)
        return {"log_probs": torch.log_softmax(logits, dim=1), "weights": _nan_weights(len(xr), logits)}


def build_head(fusion: str, d_rna: int, d_prot: int, n_classes: int, *, kind: str = "linear", hidden: int = 64,
               dropout: float = 0.1, tensor_rank: int = 8, members: int = 5) -> FusionHead:
    """Construct the head for ``fusion`` (one of :data:`FUSIONS`).

    Parameters
    ----------
    fusion
        early | late | gated | uncertainty | tensor (multimodal) or rna | prot (single-modality baselines).
    d_rna, d_prot
        Embedding dimensions.
    n_classes
        Number of classes.
    kind
        ``linear`` or ``mlp`` classifiers.
    hidden, dropout, tensor_rank
        MLP width (also the LMF fused width), dropout rate, LMF rank.
    members
        Bootstrap ensemble size of the gated and uncertainty heads' per-modality classifiers.
    """
    common = {"kind": kind, "hidden": hidden, "dropout": dropout}
    if fusion in MODALITIES:
        return SingleModalityHead(d_rna, d_prot, n_classes, modality=fusion, **common)
    if fusion == "early":
        return EarlyFusionHead(d_rna, d_prot, n_classes, **common)
    if fusion == "late":
        return LateFusionHead(d_rna, d_prot, n_classes, **common)
    if fusion == "gated":
        return GatedFusionHead(d_rna, d_prot, n_classes, members=members, **common)
    if fusion == "uncertainty":
        return UncertaintyFusionHead(d_rna, d_prot, n_classes, members=members, **common)
    if fusion == "tensor":
        return TensorFusionHead(d_rna, d_prot, n_classes, rank=tensor_rank, **common)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")


def random_unit_vectors(n: int, d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` vectors uniform on the unit sphere in R^d (the noise that replaces a corrupted modality)."""
    x = torch.randn(n, d, generator=generator)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def normalised_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy divided by log(K): 0 = certain, 1 = uniform."""
    k = log_probs.shape[-1]
    ent = -(log_probs.exp() * log_probs.clamp_min(-1e4)).sum(-1)
    return ent / math.log(k) if k > 1 else ent


def as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 torch view of an array."""
    return x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, np.float32))
