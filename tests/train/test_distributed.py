"""Data parallel on CPU (gloo): 2 processes give the loss and gradients of one process on the whole batch."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from omicsclip.model.loss import ClipLoss

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

N, D, WORLD = 24, 8, 2


def _global_inputs():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    return a, b, torch.tensor(math.log(1 / 0.07), dtype=torch.float64)


CHUNKS = (0, 5)  # plain, and chunked with an uneven last chunk (12 local rows)
MEMBERS = (1, 2)  # a single encoder pair, and an ensemble (its plain path batches the members)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for chunk, members in [(c, m) for c in CHUNKS for m in MEMBERS]:
            a, b, ls = _global_inputs()
            n = N // WORLD
            a_l = a[rank * n : (rank + 1) * n].clone().requires_grad_()
            b_l = b[rank * n : (rank + 1) * n].clone().requires_grad_()
            ls = ls.clone().requires_grad_()
            loss = ClipLoss(chunk_size=chunk, world_size=WORLD, rank=rank, members=members)(a_l, b_l, ls)
            loss.backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            gls = ls.grad.clone()
            dist.all_reduce(gls)
            torch.save({"loss": total, "ga": a_l.grad, "gb": b_l.grad, "gls": gls},
                       f"{out_dir}/rank{rank}_chunk{chunk}_m{members}.pt")
        dist.barrier()  # every rank is done with its collectives before any rank tears the group down
    finally:
        dist.destroy_process_group()
    # Skip interpreter finalisation: gloo worker threads that still hold autograd-owned tensors can abort the
    # process while Python tears down (torch issue "terminate called without an active exception", see
    # pytorch/pytorch#179291). The results are saved and the group destroyed; exit 0 is what spawn checks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_process_gloo_matches_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    a, b, ls = _global_inputs()
    a.requires_grad_()
    b.requires_grad_()
    ls.requires_grad_()
    n = N // WORLD
    for chunk, members in [(c, m) for c in CHUNKS for m in MEMBERS]:
        loss = ClipLoss(members=members)(a, b, ls)
        ga, gb, gls = torch.autograd.grad(loss, (a, b, ls))
        for rank in range(WORLD):
            r = torch.load(tmp_path / f"rank{rank}_chunk{chunk}_m{members}.pt", weights_only=True)
            assert torch.allclose(r["loss"], loss.detach(), atol=1e-12)  # sum of rank shares = global loss
            assert torch.allclose(r["ga"], ga[rank * n : (rank + 1) * n], atol=1e-12)
            assert torch.allclose(r["gb"], gb[rank * n : (rank + 1) * n], atol=1e-12)
            assert torch.allclose(r["gls"], gls, atol=1e-12)


def _omicsclip() -> str:
    return shutil.which("omicsclip") or str(Path(sys.executable).parent / "omicsclip")


def test_torchrun_ddp_training_matches_single_process(tmp_path):
    """DDP with 2 ranks (each half of every batch) trains the same weights as one process on whole batches."""
    from conftest import TINY, tiny_store
    from safetensors.torch import load_file

    from omicsclip.config import load_config
    from omicsclip.train.run import train_model

    store = tiny_store(tmp_path / "cells.zarr")
    cfg = TINY + ["train.epochs=2", "train.eval_every=2", "train.thinning=1.0", "train.feature_dropout=0.0",
                  "model.dropout=0.0", "model.input_dropout=0.0", "preprocess.n_hvg=0"]
    single = train_model(store, tmp_path / "single", load_config(None, cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", _omicsclip(),
           "train", str(store), "--out", str(tmp_path / "ddp"), *[x for s in cfg for x in ("--set", s)]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    w1, w2 = load_file(str(single / "model.safetensors")), load_file(str(tmp_path / "ddp" / "model.safetensors"))
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=2e-5, rtol=1e-4)
    import json

    meta = json.loads((tmp_path / "ddp" / "model.json").read_text())
    assert meta["training"]["world_size"] == 2


def test_torchrun_sigterm_checkpoints_all_ranks_then_resume_matches_uninterrupted(tmp_path):
    """SIGTERM to torchrun (what SLURM sends before preemption) reaches both ranks; they agree to stop at the same
    step (their collective check runs every SIGNAL_CHECK_EVERY steps), save a checkpoint and exit non-zero with
    the resume hint; --resume then ends with exactly the weights of an uninterrupted DDP run."""
    import signal
    import time

    from conftest import TINY, tiny_store

    from omicsclip.io.hashing import sha256_file
    from omicsclip.train.checkpoint import load_checkpoint
    from omicsclip.train.trainer import SIGNAL_CHECK_EVERY

    store = tiny_store(tmp_path / "cells.zarr")
    cfg = TINY + ["train.epochs=40", "train.checkpoint_every=100000", "train.patience=1000", "preprocess.n_hvg=0"]
    sets = [x for s in cfg for x in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", _omicsclip(),
                "train", str(store), "--out", str(out), *extra, *sets]

    ref = subprocess.run(torchrun(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=400)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "m"
    log = tmp_path / "m.partial" / "train_log.jsonl"
    proc = subprocess.Popen(torchrun(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not (log.exists() and log.read_text().strip()):
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "the run finished before it could be interrupted"
    assert "rerun with --resume" in err
    assert not out.exists()
    step = load_checkpoint(tmp_path / "m.partial" / "checkpoints" / "last.pt")["global_step"]
    assert 0 < step < 40 * 3
    assert step % SIGNAL_CHECK_EVERY == 0
    r = subprocess.run(torchrun(out, "--resume"), env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sha256_file(out / "model.safetensors") == sha256_file(tmp_path / "ref" / "model.safetensors")
