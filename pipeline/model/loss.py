"""Symmetric InfoNCE (CLIP loss) with chunked logits and all-gather across ranks (torch only).

For RNA embeddings ``a`` and protein embeddings ``b`` of the same ``N`` cells (row ``i`` of each is a pair) and a
logit scale ``s = 1/T``::

    L = 1/(2N) * sum_i [ logsumexp_j(s a_i.b_j) - s a_i.b_i ]  +  1/(2N) * sum_j [ logsumexp_i(s a_i.b_j) - s a_j.b_j ]

Both halves are "row cross-entropies" of queries against keys (RNA->protein and protein->RNA), which is what
:func:`row_cross_entropy` computes. With several ranks each rank holds a shard of the rows: it gathers all keys
(with gradient, so every rank sees the global batch as negatives) and computes the row terms of its own queries;
the rank terms sum to ``L``. For an ensemble of ``K`` members (features = K unit-norm blocks side by side, scaled
by ``1/sqrt(K)``, see :mod:`omicsclip.model.encoders`) the loss is the mean of the members' losses, each member on its own
block. The chunked version never materialises the ``N x N`` logits: a custom autograd
function keeps only each row's logsumexp and recomputes one ``chunk x N`` block at a time in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gather_features(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``x`` from all ranks (rank order) with gradient flowing back to every rank's shard.

    Parameters
    ----------
    x
        This rank's rows.
    world_size
        Number of ranks; ``1`` returns ``x`` itself.

    The backward pass of ``torch.distributed.nn.functional.all_gather`` sums the gradients that all ranks
    computed for each shard, so the shard's gradient is that of the sum of all ranks' losses.
    """
    if world_size <= 1:
        return x
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    if torch.is_grad_enabled():
        for part in parts:  # its backward (reduce_scatter) needs contiguous gradients; views of blocks give others
            if part.requires_grad:
                part.register_hook(lambda g: g.contiguous())
    return torch.cat(parts, dim=0)


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast) -> float32; float32/float64 unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _member_blocks(x: torch.Tensor, members: int) -> torch.Tensor:
    """Split ``x`` into its ``members`` feature blocks, each rescaled to unit norm: (members, rows, d)."""
    if members == 1:
        return x[None]
    n, width = x.shape
    if width % members:
        raise ValueError(f"features of width {width} cannot hold {members} equal member blocks")
    return x.reshape(n, members, width // members).transpose(0, 1) * members**0.5


def _targets(n: int, offset: int, device: torch.device) -> torch.Tensor:
    return torch.arange(offset, offset + n, device=device)


def row_cross_entropy_plain(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Compute ``sum_i [logsumexp_j(s q_i.k_j) - s q_i.k_{offset+i}]`` from the full logits (the reference).

    Parameters
    ----------
    q, k, scale, offset
        As in :func:`row_cross_entropy`.

    Returns
    -------
    torch.Tensor
        The summed row cross-entropy (a scalar).
    """
    logits = scale * (q @ k.t())
    return F.cross_entropy(logits, _targets(q.shape[0], offset, q.device), reduction="sum")


class _ChunkedRowCE(torch.autograd.Function):
    """Same value and gradients as :func:`row_cross_entropy_plain`, in ``chunk x N`` blocks.

    With ``u = s * q`` the logits are ``u @ k.T``; the backward pass recomputes one block, turns it into
    ``softmax - onehot`` in place, and gets ``dL/ds = sum_i <dL/du_i, q_i>`` from ``dL/du`` without another pass
    over the block.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, offset: int, chunk: int):
        n = q.shape[0]
        u = q * scale
        lse = torch.empty(n, dtype=q.dtype, device=q.device)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            lse[start:stop] = torch.logsumexp(u[start:stop] @ k.t(), dim=1)
        pos = (u * k[offset : offset + n]).sum(dim=1)
        ctx.save_for_backward(q, k, scale, lse)
        ctx.offset, ctx.chunk = offset, chunk
        return (lse - pos).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, scale, lse = ctx.saved_tensors
        offset, chunk = ctx.offset, ctx.chunk
        n = q.shape[0]
        u = q * scale
        grad_u = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            g = (u[start:stop] @ k.t()).sub_(lse[start:stop, None]).exp_()  # softmax over keys
            rows = torch.arange(stop - start, device=q.device)
            g[rows, offset + start + rows] -= 1.0
            grad_u[start:stop] = g @ k
            grad_k += g.t() @ u[start:stop]
        grad_u *= grad_out
        grad_k *= grad_out
        grad_s = (grad_u * q).sum().reshape(scale.shape) if ctx.needs_input_grad[2] else None
        grad_q = grad_u * scale if ctx.needs_input_grad[0] else None
        return grad_q, grad_k if ctx.needs_input_grad[1] else None, grad_s, None, None


def _batched_row_cross_entropy(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, offset: int) -> torch.Tensor:
    """:func:`row_cross_entropy_plain` summed over a leading member dimension: q (M, n, d), k (M, N, d)."""
    members, n, _ = q.shape
    logits = scale * torch.bmm(q, k.transpose(1, 2))
    return F.cross_entropy(logits.reshape(members * n, -1), _targets(n, offset, q.device).repeat(members),
                           reduction="sum")


class _SymmetricCE(torch.autograd.Function):
    """Both halves of the loss of one process from one logit matrix per member: a (M, n, d), b (M, n, d).

    With all rows on one process the protein->RNA logits are the transpose of the RNA->protein ones, so one
    product gives both cross-entropies (rows and columns), and the gradient of the logits,
    ``softmax_rows + softmax_cols - 2I``, is formed once in the forward pass: the backward pass is two products.
    Same value and gradients as the two :func:`_batched_row_cross_entropy` calls.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor):
        logits = torch.bmm(a, b.transpose(1, 2)).mul_(scale)
        out = _SymmetricCE._shifted_by_scale(logits, scale) if logits.device.type == "cpu" else None
        if out is None:
            out = _SymmetricCE._shifted_by_max(logits)
        lse, grad = out
        total = lse - 2.0 * logits.diagonal(dim1=1, dim2=2).sum()
        grad.diagonal(dim1=1, dim2=2).sub_(2.0)
        ctx.save_for_backward(a, b, scale, grad)
        return total

    @staticmethod
    def _shifted_by_scale(logits: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Row and column logsumexps (summed) and softmaxes (added) from one exp of ``logits - scale``.

        Unit-norm features keep the logits within ``[-scale, scale]``, so one shift suits every row and column;
        ``None`` (use :meth:`_shifted_by_max`) when a sum under- or overflows (large scales, other features).
        """
        e = logits.sub(scale).exp_()
        s_r, s_c = e.sum(dim=2, keepdim=True), e.sum(dim=1, keepdim=True)
        lo, hi = torch.minimum(s_r.min(), s_c.min()), torch.maximum(s_r.max(), s_c.max())
        if not (bool(lo > 1e-30) and bool(torch.isfinite(hi))):
            return None
        members, n, _ = logits.shape
        lse = s_r.log().sum() + s_c.log().sum() + 2 * members * n * scale
        return lse, e.mul_(s_r.reciprocal() + s_c.reciprocal())

    @staticmethod
    def _shifted_by_max(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`_shifted_by_scale`, each row and column shifted by its own maximum (always safe)."""
        m_r, m_c = logits.amax(dim=2, keepdim=True), logits.amax(dim=1, keepdim=True)
        p_r, p_c = (logits - m_r).exp_(), (logits - m_c).exp_()
        s_r, s_c = p_r.sum(dim=2, keepdim=True), p_c.sum(dim=1, keepdim=True)
        lse = (m_r + s_r.log()).sum() + (m_c + s_c.log()).sum()
        return lse, p_r.div_(s_r).add_(p_c.div_(s_c))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        a, b, scale, grad = ctx.saved_tensors
        g_a = torch.bmm(grad, b)  # d total / d (scale * a)
        grad_s = (g_a * a).sum().mul_(grad_out).reshape(scale.shape) if ctx.needs_input_grad[2] else None
        k = grad_out * scale
        grad_a = g_a.mul_(k) if ctx.needs_input_grad[0] else None
        grad_b = torch.bmm(grad.transpose(1, 2), a).mul_(k) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, grad_s


def symmetric_cross_entropy(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``sum_m [row_CE(a_m, b_m) + row_CE(b_m, a_m)]`` for members' features a, b (M, n, d) on one process.

    Parameters
    ----------
    a, b
        Paired queries and keys of every member (row ``i`` of ``a[m]`` pairs with row ``i`` of ``b[m]``).
    scale
        Scalar tensor multiplying the dot products.

    Returns
    -------
    torch.Tensor
        The summed cross-entropies of both directions (a scalar); the plain reference is
        :func:`row_cross_entropy_plain` per member and direction.
    """
    return _SymmetricCE.apply(a, b, scale)


def row_cross_entropy(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, offset: int = 0,
                      chunk_size: int = 0) -> torch.Tensor:
    """``sum_i [logsumexp_j(s q_i.k_j) - s q_i.k_{offset+i}]``; chunked when ``0 < chunk_size < len(q)``.

    Parameters
    ----------
    q
        Queries (n x d); query ``i``'s positive key is ``k[offset + i]``.
    k
        Keys (N x d).
    scale
        Scalar tensor multiplying the dot products (``1 / temperature``).
    offset
        Position of the first query's positive among the keys (the shard offset of this rank).
    chunk_size
        Rows of logits computed at a time; ``0`` computes them all at once.
    """
    if chunk_size and chunk_size < q.shape[0]:
        return _ChunkedRowCE.apply(q, k, scale, offset, int(chunk_size))
    return row_cross_entropy_plain(q, k, scale, offset)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over the (global) batch.

    Parameters
    ----------
    chunk_size
        Rows of logits computed at a time (0 = all); chunked and plain give the same loss and gradients.
    world_size, rank
        Data-parallel layout: this rank's features are rows ``rank*n .. (rank+1)*n`` of the global batch.
    members
        Ensemble members: the features are ``members`` blocks side by side; the loss is the mean of the blocks'
        losses (each block rescaled to unit norm).

    Notes
    -----
    With ``world_size > 1`` the returned value is this rank's share ``L_r`` of the global loss
    (``sum_r L_r = L``) and the gradient of every shard is that of ``L``. Under DDP, which averages parameter
    gradients over ranks, back-propagate ``world_size * L_r`` to obtain the gradient of ``L``.
    """

    def __init__(self, chunk_size: int = 0, world_size: int = 1, rank: int = 0, members: int = 1) -> None:
        super().__init__()
        if members < 1:
            raise ValueError("members must be >= 1")
        self.members = int(members)
        self.chunk_size = int(chunk_size)
        self.world_size = int(world_size)
        self.rank = int(rank)

    def forward(self, rna_features: torch.Tensor, prot_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        """Compute this rank's share of the symmetric InfoNCE loss (the whole loss on one process).

        Parameters
        ----------
        rna_features, prot_features
            This rank's L2-normalised embeddings (rows paired), as :meth:`DualEncoder.forward` returns them.
        logit_scale
            ``log(1 / temperature)`` (a scalar tensor).

        Returns
        -------
        torch.Tensor
            The loss (a scalar).
        """
        a, b = _full_precision(rna_features), _full_precision(prot_features)
        n_local = a.shape[0]
        a_all = gather_features(a, self.world_size)
        b_all = gather_features(b, self.world_size)
        n = a_all.shape[0]
        offset = self.rank * n_local
        s = _full_precision(logit_scale).exp()
        qa, qb, ka, kb = (_member_blocks(x, self.members) for x in (a, b, a_all, b_all))
        chunked = bool(self.chunk_size) and self.chunk_size < n_local
        if self.world_size == 1 and not chunked:  # one logit matrix per member gives both directions
            total = symmetric_cross_entropy(qa, qb, s)
        elif self.members > 1 and not chunked:  # all members' logits in one batched product per direction
            total = (_batched_row_cross_entropy(qa, kb, s, offset)
                     + _batched_row_cross_entropy(qb, ka, s, offset))
        else:
            total = a.new_zeros(())
            for m in range(self.members):
                total = total + (row_cross_entropy(qa[m], kb[m], s, offset, self.chunk_size)
                                 + row_cross_entropy(qb[m], ka[m], s, offset, self.chunk_size))
        return total / (2 * n * self.members)
