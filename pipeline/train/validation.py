"""Validation during training: eval-mode embeddings, retrieval scores of true partners, early stopping."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from omicsclip.errors import InputError
from omicsclip.model.encoders import DualEncoder


def retrieval_scores(a: torch.Tensor, b: torch.Tensor, k: int = 10, chunk: int = 2048) -> tuple[float, float]:
    """Compute (recall@k, FOSCTTM) of true partners, averaged over both directions (cosine similarity).

    Ties count half for FOSCTTM and pessimistically for recall, like :mod:`omicsclip.evaluation.metrics`.

    Parameters
    ----------
    a, b
        Embeddings of the same cells (row ``i`` of ``a`` pairs with row ``i`` of ``b``).
    k
        Recall cut-off.
    chunk
        Query rows per similarity block.
    """
    n = a.shape[0]
    if n < 2:
        return float("nan"), float("nan")
    a, b = nn.functional.normalize(a.float(), dim=1), nn.functional.normalize(b.float(), dim=1)
    hits, fos = 0.0, 0.0
    for q, c in ((a, b), (b, a)):
        for start in range(0, n, chunk):
            sims = q[start : start + chunk] @ c.t()
            rows = torch.arange(sims.shape[0], device=sims.device)
            true = sims[rows, start + rows][:, None]
            closer = (sims > true).sum(1).double()
            ties = (sims == true).sum(1).double() - 1
            hits += float(((closer + ties) < k).sum())
            fos += float(((closer + 0.5 * ties) / (n - 1)).sum())
    return hits / (2 * n), fos / (2 * n)


def grouped_retrieval_scores(a: torch.Tensor, b: torch.Tensor, groups: dict[str, torch.Tensor] | None,
                             k: int = 10) -> tuple[float, float, dict[str, float]]:
    """(recall@k, FOSCTTM) with each cell's partner ranked among its own group's cells, and each group's FOSCTTM.

    The overall scores are means over the cells of every group with at least two cells (each group weighs by
    its cell count, so the largest dataset weighs most; the workflow's temperature selection instead averages the
    datasets' metrics unweighted), so they read as :func:`retrieval_scores` of one group would; recall@k counts
    only groups of more than ``k`` cells (within a smaller one every partner is among the first ``k``: NaN when
    no group is larger). For a reference pooled from
    several labs this is what each lab's own held-out score measures: ranked against all validation cells, a
    cell of another lab that sits closer than the true partner would count as an error, although a shared space
    should put similar cells of different labs close (``train.val_within``).

    Parameters
    ----------
    a, b
        Embeddings of the same cells (row ``i`` of ``a`` pairs with row ``i`` of ``b``).
    groups
        Group name -> row indices into ``a``/``b``; ``None`` = all rows in one group (no per-group scores).
    k
        Recall cut-off.
    """
    if groups is None:
        recall, fos = retrieval_scores(a, b, k=k)
        return recall, fos, {}
    by_group: dict[str, float] = {}
    total, recall_total, recall_sum, fos_sum = 0, 0, 0.0, 0.0
    for name, rows in groups.items():
        n = rows.numel()
        if n < 2:
            continue
        recall, fos = retrieval_scores(a[rows], b[rows], k=k)
        by_group[name] = fos
        total += n
        fos_sum += fos * n
        if n > k:
            recall_total += n
            recall_sum += recall * n
    recall = recall_sum / recall_total if recall_total else float("nan")
    return recall, (fos_sum / total if total else float("nan")), by_group


class EarlyStopping:
    """Track the best validation score, its weights, and the evaluations without improvement.

    Parameters
    ----------
    patience
        Evaluations without improvement before :attr:`should_stop`.
    monitor
        ``foscttm`` (lower is better) or ``recall_at_10`` (higher is better).
    """

    def __init__(self, patience: int, monitor: str) -> None:
        if monitor not in ("foscttm", "recall_at_10"):
            raise InputError(f"train.monitor: expected foscttm or recall_at_10, got {monitor!r}")
        self.patience = patience
        self.monitor = monitor
        self.best: float | None = None
        self.best_epoch = -1
        self.bad = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def update(self, recall: float, fos: float, epoch: int, model: nn.Module) -> bool:
        """Record one evaluation; return whether it improved on the best.

        Parameters
        ----------
        recall, fos
            Validation recall@10 and FOSCTTM.
        epoch
            The epoch evaluated.
        model
            Its weights are kept when the score improved.
        """
        score = fos if self.monitor == "foscttm" else -recall
        if self.best is None or score < self.best:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            self.best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether ``patience`` evaluations in a row did not improve."""
        return self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Return the tracker's state (for checkpoints)."""
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad, "best_state": self.best_state}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.best, self.best_epoch, self.bad = d["best"], d["best_epoch"], d["bad"]
        self.best_state = d["best_state"]


@torch.no_grad()
def embed_inputs(model: DualEncoder, x_rna: torch.Tensor, x_prot: torch.Tensor, *, bf16: bool,
                 batch: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed preprocessed inputs in eval mode (float32, on the inputs' device).

    Parameters
    ----------
    model
        The dual encoder (its train/eval mode is restored afterwards).
    x_rna, x_prot
        Preprocessed inputs of the same cells.
    bf16
        Run under bf16 autocast.
    batch
        Cells per forward pass.
    """
    was_training = model.training
    model.eval()
    out_a, out_b = [], []
    with torch.autocast(device_type=x_rna.device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, x_rna.shape[0], batch):
            out_a.append(model.encode_rna(x_rna[start : start + batch]).float())
            out_b.append(model.encode_prot(x_prot[start : start + batch]).float())
    model.train(was_training)
    return torch.cat(out_a), torch.cat(out_b)
