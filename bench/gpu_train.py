"""Training throughput on one device: synthetic cells generated on the device, the full per-step pipeline.

Each step is what ``omicsclip train`` does per batch with device-resident data: an index gather of the batch's
cells from CSR counts on the device, binomial count thinning, library-size normalisation + log1p + scaling, the
projection of the scaled genes on the RNA input axes (by default as ``configs/default.yaml``: 30 principal axes
plus the protein genes, here random axes and random genes, computed from the non-zeros like training does) and
the depth features, CLR of the proteins, the dual encoder forward under bf16 autocast, the symmetric InfoNCE loss
(chunked logits for large batches), backward and an AdamW step. ``--n-pcs 0`` feeds the scaled genes themselves.
Reported: cells/s (median over timed steps) and peak device memory, and two baselines measured in the same run:
the data pipeline alone and the model step alone (inputs prepared in advance), as ratios.

Imports only torch and the torch-only modules ``omicsclip.model.encoders``, ``omicsclip.model.loss``, ``omicsclip.model.batchops``.

    python bench/gpu_train.py                  # 1,000,000 cells x 2,000 genes x 200 proteins; batches 16,384, 65,536
    python bench/gpu_train.py --small          # tiny sizes: runs on a CPU in seconds
    python bench/gpu_train.py --batch 32768 --steps 50
    python bench/gpu_train.py --n-pcs 0 --feature-dropout 0.1   # all genes as the RNA input, with dropout

Writes JSON to ``$OUT/gpu_train.json`` when ``$OUT`` is set, else ``bench/results/gpu_train.json``
(``gpu_train_small.json`` with ``--small``), or to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

MODEL_SRC = Path(__file__).resolve().parents[1] / "pipeline" / "model"


def _torch_only_modules(*names: str) -> list:
    """``omicsclip.model.<name>`` for each name. These modules import only torch and each other, so the script runs
    on a GPU machine with torch alone: where omicsclip is not installed they are imported from this checkout's
    ``pipeline/model`` as a bare package (its ``__init__``, which needs anndata and more, is not run)."""
    import importlib
    import importlib.util
    import types

    if importlib.util.find_spec("omicsclip") is None:
        root, model = types.ModuleType("omicsclip"), types.ModuleType("omicsclip.model")
        root.__path__, model.__path__ = [], [str(MODEL_SRC)]
        root.model = model
        sys.modules.update({"omicsclip": root, "omicsclip.model": model})
    return [importlib.import_module(f"omicsclip.model.{name}") for name in names]


_batchops, _encoders, _loss = _torch_only_modules("batchops", "encoders", "loss")
Augmentation, CountTransform = _batchops.Augmentation, _batchops.CountTransform
gather_rows, model_inputs = _batchops.gather_rows, _batchops.model_inputs
DualEncoder, ClipLoss = _encoders.DualEncoder, _loss.ClipLoss


def synthetic_cells(n: int, genes: int, proteins: int, device: torch.device, seed: int = 0,
                    chunk: int = 65_536) -> dict[str, torch.Tensor]:
    """Poisson counts around heavy-tailed gene means and log-normal library sizes, as CSR on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    gene_mean = torch.exp(torch.randn(genes, generator=g, device=device) * 1.5 - 2.0)  # ~15-25% non-zero
    prot_mean = torch.exp(torch.randn(proteins, generator=g, device=device) + 3.0)
    values, indices, row_nnz, others, prots = [], [], [], [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        lib = torch.exp(torch.randn(m, 1, generator=g, device=device) * 0.5)
        counts = torch.poisson(gene_mean * lib, generator=g)
        r, c = counts.nonzero(as_tuple=True)
        values.append(counts[r, c].to(torch.float16))
        indices.append(c.to(torch.int32))
        row_nnz.append(torch.bincount(r, minlength=m))
        others.append(torch.poisson(lib.squeeze(1) * 1000.0, generator=g))
        prots.append(torch.poisson(prot_mean * lib, generator=g).to(torch.float16))
        del counts, r, c
    nnz = torch.cat(row_nnz)
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(nnz, 0)
    return {"indptr": indptr, "indices": torch.cat(indices), "values": torch.cat(values),
            "other": torch.cat(others), "prot": torch.cat(prots)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, steps: int, warmup: int, device: torch.device) -> list[float]:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        fn(warmup + i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def n_protein_genes(args, genes: int, proteins: int) -> int:
    """Protein genes of the default preprocessing: ``--protein-genes`` per protein, at most 256
    (``omicsclip.model.preprocess.MAX_PROTEIN_GENES``; not imported: this script imports torch-only modules), at most all
    genes."""
    return 0 if args.n_pcs == 0 else min(args.protein_genes * proteins, 256, genes)


def input_axes(genes: int, n_pcs: int, n_genes: int, device: torch.device) -> torch.Tensor | None:
    """RNA input axes like a fitted ``PreprocessState.rna_projection``: ``n_pcs`` orthonormal rows (random here),
    then one indicator row per protein gene (random distinct genes); ``None`` for ``n_pcs == 0``."""
    if n_pcs == 0:
        return None
    g = torch.Generator().manual_seed(2)
    pcs = torch.linalg.qr(torch.randn(genes, n_pcs, generator=g)).Q.T
    rows = torch.zeros(n_genes, genes)
    rows[torch.arange(n_genes), torch.randperm(genes, generator=g)[:n_genes]] = 1.0
    return torch.cat([pcs, rows]).to(device)


def run_batch(data: dict[str, torch.Tensor], n: int, genes: int, proteins: int, batch: int, args,
              device: torch.device) -> dict:
    """Measure one batch size: full step, data pipeline alone, model step alone."""
    torch.manual_seed(0)
    transform = CountTransform(n_genes=genes, target_sum=1e4, max_value=10.0,
                               rna_mean=torch.full((genes,), 0.5, device=device),
                               rna_std=torch.ones(genes, device=device),
                               prot_mean=torch.zeros(proteins, device=device),
                               prot_std=torch.ones(proteins, device=device),
                               rna_proj=input_axes(genes, args.n_pcs, n_protein_genes(args, genes, proteins), device),
                               n_proteins=proteins, depth=None if args.n_pcs == 0 else (7.0, 1.0, 8.0, 1.0))
    model = DualEncoder(transform.rna_dim, transform.prot_dim, rna_hidden=args.rna_hidden,
                        prot_hidden=args.prot_hidden, embed_dim=args.embed_dim, dropout=0.2, input_dropout=0.1,
                        members=args.members, temperature=args.temperature, learnable_temperature=False,
                        temperature_min=0.01, temperature_max=1.0).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    chunk = args.chunk if batch > args.chunk else 0
    loss_fn = ClipLoss(chunk_size=chunk, members=args.members)
    aug = Augmentation(thinning=args.thinning, feature_dropout=args.feature_dropout)
    gen = torch.Generator(device=device).manual_seed(1)
    perm = torch.randperm(n, device=device, generator=gen)
    bf16 = device.type == "cuda" or args.bf16
    steps_per_epoch = n // batch

    def inputs(i: int):
        s = i % steps_per_epoch
        raw = gather_rows(data["indptr"], data["indices"], data["values"], data["other"], data["prot"],
                          perm[s * batch : (s + 1) * batch])
        return model_inputs(raw, transform, aug, gen)

    def model_step(x_rna, x_prot):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x_rna, x_prot)
        loss = loss_fn(**out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    full = _timed(lambda i: model_step(*inputs(i)), args.steps, args.warmup, device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    pipe = _timed(inputs, args.steps, args.warmup, device)
    fixed = inputs(0)
    model_only = _timed(lambda i: model_step(*fixed), args.steps, args.warmup, device)
    med = {k: statistics.median(v) for k, v in (("full", full), ("pipeline", pipe), ("model", model_only))}
    res = {
        "batch": batch, "logit_chunk": chunk, "bf16": bf16, "steps": args.steps,
        "cells_per_s": batch / med["full"], "step_ms": 1e3 * med["full"],
        "pipeline_cells_per_s": batch / med["pipeline"], "model_cells_per_s": batch / med["model"],
        "pipeline_share_of_step": med["pipeline"] / med["full"],
        "full_vs_model_only": med["model"] / med["full"],
        "peak_memory_gib": None if peak is None else peak / 2**30,
    }
    print(f"batch {batch:>6}: {res['cells_per_s']:>12,.0f} cells/s  step {res['step_ms']:.1f} ms  "
          f"pipeline {res['pipeline_cells_per_s']:,.0f} cells/s  model {res['model_cells_per_s']:,.0f} cells/s  "
          f"peak {res['peak_memory_gib'] if peak is not None else float('nan'):.2f} GiB", flush=True)
    model = opt = None  # release device memory before the next batch size
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run)")
    p.add_argument("--cells", type=int, default=1_000_000)
    p.add_argument("--genes", type=int, default=2_000)
    p.add_argument("--proteins", type=int, default=200)
    p.add_argument("--batch", type=int, nargs="+", default=[16_384, 65_536])
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--chunk", type=int, default=16_384, help="logit chunk rows when batch exceeds it")
    p.add_argument("--rna-hidden", type=int, nargs="+", default=[512, 256])
    p.add_argument("--prot-hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (fixed)")
    p.add_argument("--members", type=int, default=5,
                   help="ensemble members per encoder (5 = configs/default.yaml; 1 = a single encoder pair)")
    p.add_argument("--thinning", type=float, default=0.5, help="count thinning (1.0 = off)")
    p.add_argument("--n-pcs", type=int, default=30, help="RNA input axes (0 = the scaled genes themselves)")
    p.add_argument("--protein-genes", type=int, default=10, help="protein genes per protein (at most 256 in all)")
    p.add_argument("--feature-dropout", type=float, default=0.0, help="RNA feature dropout (default config: 0)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CPU too (always on for CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.small:
        args.cells, args.genes, args.proteins = 4_000, 200, 20
        args.batch = [256, 1024]
        args.steps, args.warmup, args.chunk = min(args.steps, 3), 1, 512
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as in training with bf16: fp32 loss matmuls in TF32
    t0 = time.perf_counter()
    data = synthetic_cells(args.cells, args.genes, args.proteins, device)
    _sync(device)
    nnz = int(data["values"].numel())
    print(f"{args.cells:,} cells x {args.genes:,} genes ({nnz / args.cells / args.genes:.1%} non-zero) x "
          f"{args.proteins} proteins generated on {device} in {time.perf_counter() - t0:.1f} s", flush=True)
    results = [run_batch(data, args.cells, args.genes, args.proteins, b, args, device) for b in args.batch]
    report = {
        "benchmark": "gpu_train", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        platform.processor() or "cpu", "torch": torch.__version__, "cells": args.cells, "genes": args.genes,
        "proteins": args.proteins, "density": nnz / args.cells / args.genes, "small": args.small,
        "model": {"rna_hidden": args.rna_hidden, "prot_hidden": args.prot_hidden, "embed_dim": args.embed_dim,
                  "members": args.members},
        "rna_input": {"n_pcs": args.n_pcs, "protein_genes": n_protein_genes(args, args.genes, args.proteins),
                      "depth": args.n_pcs > 0, "feature_dropout": args.feature_dropout},
        "thinning": args.thinning, "target_cells_per_s": 1_000_000, "results": results,
    }
    out = args.out
    if out is None:
        name = "gpu_train_small.json" if args.small else "gpu_train.json"
        out = Path(os.environ["OUT"]) / name if os.environ.get("OUT") else \
            Path(__file__).resolve().parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
