"""torch.distributed plumbing for ``torchrun`` launches (NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """The place of this process in the job (``world_size == 1``: a plain single process).

    Attributes
    ----------
    rank, world_size, local_rank
        As torchrun sets them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether several processes take part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Return whether the torchrun environment variables describe a job of several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment (no-op for a single process).

    Parameters
    ----------
    device
        This process's device: the backend is NCCL for CUDA devices and gloo otherwise.
    """
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    log.info("distributed: rank %d of %d (%s)", info.rank, info.world_size, dist.get_backend())
    return info


def shutdown(info: DistInfo, *, clean: bool = True) -> None:
    """Leave the process group if this module joined one.

    After a clean run all ranks meet at a barrier first: a rank that tears its gloo/NCCL group down while a peer
    is still inside a collective makes that peer abort (SIGABRT) instead of exiting cleanly. After an error
    (``clean=False``) the peers may never arrive, so the group is torn down at once.
    """
    if info.enabled and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Return the sum of ``x`` over ranks (a copy; ``x`` itself is unchanged)."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Return whether ``flag`` is true on any rank (used to stop all ranks at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Gather ``[obj of rank 0, obj of rank 1, ...]`` (in-process pickling between our own ranks only)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for a single process)."""
    if info.enabled:
        dist.barrier()
