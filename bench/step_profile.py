"""Where one CPU training step goes: milliseconds per component, default config, real data, one thread.

Builds the training job exactly as ``omicsclip train`` does (``omicsclip.train.run.train_model`` with the default
config; the trainer is captured just before its loop starts), then replays training steps with a timer around each
component:

- ``gather``: the batch's rows from the device-resident CSR (``DeviceCells.gather``);
- ``thin``: binomial count thinning of the raw counts (``omicsclip.model.batchops.thin_batch``);
- ``transform``: normalisation, log1p, scaling/clipping, PC projection, protein CLR (``transform_batch``);
- ``forward``: both encoders; ``loss``: the ensemble InfoNCE; ``backward`` (with zero_grad); ``optimizer``: the
  AdamW step.

Times are CPU time of the (single) training thread (``time.thread_time``), so that other processes on a busy
machine do not count. Both the optimised step and the plain reference implementations (``torch.binomial`` thinning, the dense
cells x genes transform, ``nn.Dropout``, two cross-entropies, the per-parameter AdamW loop) are timed, in
alternating rounds of the same process, so that load from other processes hits both alike.

Run::

    .venv/bin/python bench/step_profile.py [--data pbmc10k_protein_v3] [--steps 200] [--threads 1] [--compile]

``--compile`` adds a third variant: the optimised step with the model under ``torch.compile`` (inductor, which
fuses the per-element work between the GEMMs); its compilation is done before the timed rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("OMICSCLIP_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"
COMPONENTS = ("gather", "thin", "transform", "forward", "loss", "backward", "optimizer")


class _Captured(Exception):
    def __init__(self, trainer) -> None:
        super().__init__("captured")
        self.trainer = trainer


def build_trainer(store: Path, out: Path, threads: int):
    """The trainer of a default-config run on ``store`` (1 thread, CPU), captured before its first step."""
    import torch

    from omicsclip.config import load_config
    from omicsclip.train import run, trainer

    def capture(self):
        raise _Captured(self)

    cfg = load_config(None, [f"train.num_threads={threads}", "train.device=cpu"])
    orig = trainer.Trainer.fit
    trainer.Trainer.fit = capture
    try:
        run.train_model(store, out, cfg)
    except _Captured as c:
        tr = c.trainer
    finally:
        trainer.Trainer.fit = orig
    torch.set_num_threads(threads)
    tr.model.train()
    return tr


def _plain_dropout_copy(tr):
    """A copy of the trainer's model with ``nn.Dropout`` in place of the 15-bit-draw ``MaskDropout``."""
    import copy

    from torch import nn

    from omicsclip.model.encoders import MaskDropout

    model = copy.deepcopy(tr.model).train()
    for enc in (model.rna, model.prot):
        for i, layer in enumerate(enc.body):
            if isinstance(layer, MaskDropout):
                enc.body[i] = nn.Dropout(layer.p)
    return model


def _reference_parts(tr):
    """Plain reference versions of the model (``nn.Dropout``), loss (two cross-entropies) and optimiser (loop)."""
    import torch

    from omicsclip.model.loss import _batched_row_cross_entropy, _member_blocks
    from omicsclip.train.trainer import _param_groups

    model = _plain_dropout_copy(tr)
    members = model.members

    def loss(rna_features, prot_features, logit_scale):
        qa, qb = _member_blocks(rna_features, members), _member_blocks(prot_features, members)
        s = logit_scale.exp()
        total = _batched_row_cross_entropy(qa, qb, s, 0) + _batched_row_cross_entropy(qb, qa, s, 0)
        return total / (2 * rna_features.shape[0] * members)

    opt = torch.optim.AdamW(_param_groups(model, tr.s.weight_decay), lr=tr.s.lr, foreach=False)
    return model, loss, opt


def _compiled_parts(tr):
    """The optimised model under ``torch.compile`` (inductor; ``nn.Dropout``, as the 15-bit draws do not trace)."""
    import torch

    from omicsclip.train.trainer import _param_groups

    model = _plain_dropout_copy(tr)
    opt = torch.optim.AdamW(_param_groups(model, tr.s.weight_decay), lr=tr.s.lr, fused=True)  # as the trainer
    return torch.compile(model), tr.loss_fn, opt


def profile(tr, steps: int, *, reference: bool, compiled=None) -> dict[str, float]:
    """Median milliseconds per component over ``steps`` training steps (after 5 warm-up steps)."""
    from omicsclip.model import batchops

    if compiled is not None:
        model, loss_fn, opt = compiled
    else:
        model, loss_fn, opt = _reference_parts(tr) if reference else (tr.model, tr.loss_fn, tr.opt)
    times: dict[str, list[float]] = {c: [] for c in COMPONENTS}
    aug = tr.aug if tr.aug.active else None
    warmup, done, epoch = 5, 0, 0
    while done < steps + warmup:
        it = tr.source.epoch(epoch)
        epoch += 1
        while done < steps + warmup:
            t = [time.thread_time()]
            batch = next(it, None)
            if batch is None:
                break
            t.append(time.thread_time())
            val, other, prot = batchops.thin_batch(batch, aug, tr.gen, reference=reference)
            t.append(time.thread_time())
            x_rna, x_prot = batchops.transform_batch(batch, val, other, prot, tr.pre, aug, tr.gen,
                                                     reference=reference)
            t.append(time.thread_time())
            out = model(x_rna, x_prot)
            t.append(time.thread_time())
            loss = loss_fn(**out)
            t.append(time.thread_time())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t.append(time.thread_time())
            opt.step()
            t.append(time.thread_time())
            done += 1
            if done > warmup:
                for name, a, b in zip(COMPONENTS, t[:-1], t[1:], strict=True):
                    times[name].append((b - a) * 1e3)
    res = {c: statistics.median(v) for c, v in times.items()}
    res["total"] = statistics.median([sum(s) for s in zip(*times.values(), strict=True)])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="pbmc10k_protein_v3", help="folder name under the shared data")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4, help="alternating reference/optimised rounds")
    ap.add_argument("--compile", action="store_true",
                    help="also time the optimised step with the model under torch.compile (a third variant)")
    ap.add_argument("--out", type=Path, default=RESULTS / "step_profile.json")
    args = ap.parse_args()

    from omicsclip.io.ingest import ingest

    h5ad = SHARED / args.data / f"{args.data}.h5ad"
    if not h5ad.exists():
        sys.exit(f"bench/step_profile.py: {h5ad} not found")
    with tempfile.TemporaryDirectory(prefix="omicsclip-bench-step-") as d:
        tmp = Path(d)
        ingest([h5ad], tmp / "store.zarr", fmt="h5ad", make_unique=True, progress=False)
        tr = build_trainer(tmp / "store.zarr", tmp / "model", args.threads)
        batch = next(tr.source.epoch(0))
        shape = {"batch_size": tr.s.batch_size, "members": tr.model.members, "rna_input": tr.pre.rna_dim,
                 "genes": tr.pre.n_genes, "batch_nonzeros": int(batch.val.numel())}
        # alternate the two so that load from other processes hits both alike
        runs: dict[str, list[dict[str, float]]] = {"reference": [], "optimised": []}
        compiled = None
        if args.compile:
            runs["compiled"] = []
            compiled = _compiled_parts(tr)
            profile(tr, 10, reference=False, compiled=compiled)  # the compilation itself, untimed
        for _ in range(args.rounds):
            runs["reference"].append(profile(tr, args.steps // args.rounds, reference=True))
            runs["optimised"].append(profile(tr, args.steps // args.rounds, reference=False))
            if compiled is not None:
                runs["compiled"].append(profile(tr, args.steps // args.rounds, reference=False, compiled=compiled))
    result = {"data": args.data, "threads": args.threads, "steps": args.steps, **shape,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "ms_per_step": {k: {c: statistics.median(r[c] for r in v) for c in (*COMPONENTS, "total")}
                              for k, v in runs.items()}}
    ms = result["ms_per_step"]
    print(f"{'component':<10} " + " ".join(f"{k:>10}" for k in ms) + "  (CPU ms per step, median)")
    for c in (*COMPONENTS, "total"):
        print(f"{c:<10} " + " ".join(f"{v[c]:>10.2f}" for v in ms.values()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
