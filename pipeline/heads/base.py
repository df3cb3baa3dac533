"""What every few-label head shares: the :class:`FusionHead` interface, classifier blocks and tensor helpers.

Every head takes the per-modality embeddings ``z_rna`` (n x d_rna) and ``z_prot`` (n x d_prot) and an explicit
presence ``mask`` (n x 2 float, columns rna, prot; 1 = present). A missing modality is never silently zero-filled:
rows whose mask is 0 are ignored whatever they hold (NaN included), and each head uses the mask explicitly. A mask
value between 0 and 1 is a present modality of reduced reliability (a protein embedding from a panel lacking some
of the model's proteins: :func:`omicsclip.heads.inputs.reliability_mask`); the heads that weigh modalities
multiply that modality's weight by it (:func:`masked_log_weights`), so 1 behaves exactly as present and the limit
0 as absent.

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
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Every head, by the name ``finetune.fusion`` gives it.
FUSIONS = ("early", "late", "gated", "uncertainty", "tensor", "rna", "prot")
#: The heads that combine both modalities (the others are the single-modality baselines).
MULTIMODAL_FUSIONS = ("early", "late", "gated", "uncertainty", "tensor")
#: Classifier kinds (``finetune.head``).
HEAD_KINDS = ("linear", "mlp")
_NEG = -1e9


def make_classifier(in_dim: int, n_classes: int, kind: str, hidden: int, dropout: float) -> nn.Sequential:
    """Build a linear (dropout → linear) or one-hidden-layer MLP classifier; dropout is what MC dropout samples.

    Parameters
    ----------
    in_dim, n_classes
        Input features and classes.
    kind
        ``linear`` or ``mlp``.
    hidden, dropout
        MLP width and dropout rate.
    """
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_classes))
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )
    raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")


class EnsembleClassifier(nn.Module):
    """``members`` independently initialised classifiers (as :func:`make_classifier`) in one batched pass.

    ``forward(x)`` maps (n, d) to member logits (members, n, K); dropout masks are independent per member.

    Parameters
    ----------
    in_dim, n_classes, kind, hidden, dropout
        As :func:`make_classifier`.
    members
        Number of classifiers.
    zero_last
        Start the last layer at zero, so members differ only through their data (bootstrap).
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
        """Return the member logits (members, n, K) of ``x`` (n, d)."""
        h = x.unsqueeze(0).expand(self.members, -1, -1)
        if self.kind == "linear":
            h = self.dropout(h)
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.w) - 1:
                h = self.dropout(torch.relu(h))
        return h

    def decay_parameters(self) -> list[nn.Parameter]:
        """Return the weight matrices (under the L2 penalty)."""
        return list(self.w)


def fill_absent(z: torch.Tensor, present: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Replace rows with ``present`` = 0 by ``fill`` (a learned token) or zeros; NaNs there never propagate."""
    keep = present[:, None] > 0
    other = torch.zeros_like(z) if fill is None else fill.expand_as(z)
    return torch.where(keep, z, other)


def mix_experts(expert_log_probs: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Return log sum_m w_m p_m(k) from per-modality log-probabilities (n, 2, K) and log-weights (n, 2)."""
    return torch.logsumexp(expert_log_probs + log_weights[:, :, None], dim=1)


def masked_log_weights(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the log-softmax of per-modality ``scores + log(mask)`` (n, 2) over the present modalities only.

    A mask of 1 leaves a score as it is and 0 removes the modality, as a hard mask does; a soft mask ``r`` in
    (0, 1) (a modality of reduced reliability) multiplies that modality's weight by ``r`` before renormalising.
    """
    present = mask > 0
    log_mask = torch.log(torch.where(present, mask, torch.ones_like(mask)))
    return torch.log_softmax(torch.where(present, scores + log_mask, torch.full_like(scores, _NEG)), dim=1)


def nan_weights(n: int, like: torch.Tensor) -> torch.Tensor:
    """Return (n, 2) NaN modality weights, for heads that have none (early, tensor)."""
    return torch.full((n, 2), float("nan"), dtype=like.dtype, device=like.device)


class FusionHead(nn.Module):
    """Base class: input scaling, shared training loss for per-modality experts, eval-mode prediction.

    Embeddings are L2-normalised, so coordinates are ~1/sqrt(d); inputs are multiplied by sqrt(d) for the
    classifiers to see unit-scale features.

    Parameters
    ----------
    d_rna, d_prot
        Embedding dimensions.
    n_classes
        Number of classes.
    """

    fusion = ""
    uses_unlabelled = False

    def __init__(self, d_rna: int, d_prot: int, n_classes: int) -> None:
        super().__init__()
        self.d_rna, self.d_prot, self.n_classes = int(d_rna), int(d_prot), int(n_classes)
        self.scale = (math.sqrt(d_rna), math.sqrt(d_prot))

    def _inputs(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor):
        return fill_absent(z_rna, mask[:, 0]) * self.scale[0], fill_absent(z_prot, mask[:, 1]) * self.scale[1]

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
        """Return the training objective; ``cells`` maps each row to its labelled cell (rows repeat cells)."""
        return F.nll_loss(out["log_probs"], y)

    def bootstrap(self, y: torch.Tensor, generator: torch.Generator) -> None:
        """Draw per-member bootstrap weights of the labelled cells (classes ``y``; heads with ensembles)."""

    def decay_parameters(self) -> list[nn.Parameter]:
        """Return the parameters under the L2 penalty: the classifiers' weight matrices (not biases, gates)."""
        return [p for p in self.parameters() if p.ndim >= 2]

    def param_groups(self, lr: float) -> list[dict]:
        """Return the optimiser parameter groups (a head may train some parts faster)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def unlabelled_loss(self, clean: tuple[torch.Tensor, torch.Tensor], augmented: tuple[torch.Tensor, torch.Tensor],
                        mask: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """Return the label-free loss on augmented unlabelled cells (only heads with ``uses_unlabelled``).

        ``clean`` are the (z_rna, z_prot) before augmentation, ``augmented`` after; ``mask`` and ``corrupted``
        describe the augmented cells.
        """
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, z_rna: torch.Tensor, z_prot: torch.Tensor, mask: torch.Tensor, mc_samples: int) -> dict:
        """Predict in eval mode, deterministically (``mc_samples`` is unused; the uncertainty head samples)."""
        was = self.training
        self.eval()
        try:
            return self.forward(z_rna, z_prot, mask)
        finally:
            self.train(was)


def random_unit_vectors(n: int, d: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``n`` vectors uniform on the unit sphere in R^d (the noise that replaces a corrupted modality)."""
    x = torch.randn(n, d, generator=generator)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def normalised_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Return the predictive entropy divided by log(K): 0 = certain, 1 = uniform."""
    k = log_probs.shape[-1]
    ent = -(log_probs.exp() * log_probs.clamp_min(-1e4)).sum(-1)
    return ent / math.log(k) if k > 1 else ent


def as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Return a float32 torch view of an array."""
    return x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, np.float32))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny-tensor work (head training and prediction) on one CPU thread, restoring the count after.

    More threads only add synchronisation: on a busy 2-core machine a head trained ~20x slower with 2 threads
    than with 1.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
