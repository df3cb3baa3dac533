"""Synthetic embeddings with known answers for the heads' tests, and the default head hyper-parameters."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from omicsclip.config import load_config
from omicsclip.heads import HeadParams, predict_head, random_unit_vectors
from omicsclip.heads import build_head as _build_head

#: The validated default ``finetune:`` section (configs/default.yaml): the one source of the defaults.
FINETUNE = load_config(None)["finetune"]
DEFAULTS = HeadParams.from_section(FINETUNE)
MC = FINETUNE["mc_samples"]
#: The default config's architecture, as :func:`omicsclip.heads.build_head` takes it.
ARCH = {"kind": FINETUNE["head"], "hidden": FINETUNE["hidden"], "dropout": FINETUNE["dropout"],
        "tensor_rank": FINETUNE["tensor_rank"], "members": FINETUNE["ensemble"]}

D = 16
FAST = {"epochs": 80}
#: Small head dimensions for the modules' unit tests.
D_RNA, D_PROT, K = 6, 5, 4


def build_head(fusion, d_rna, d_prot, n_classes, **overrides):
    """:func:`omicsclip.heads.build_head` with the default config's architecture, ``overrides`` applied."""
    return _build_head(fusion, d_rna, d_prot, n_classes, **{**ARCH, **overrides})


def unit_inputs(n: int = 12, seed: int = 0):
    """``n`` random unit RNA (D_RNA) and protein (D_PROT) embeddings as tensors."""
    g = torch.Generator().manual_seed(seed)
    return random_unit_vectors(n, D_RNA, g), random_unit_vectors(n, D_PROT, g)


def params(**overrides) -> HeadParams:
    """The default hyper-parameters with ``overrides``."""
    return replace(DEFAULTS, **overrides)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def cone(k: int, rng: np.random.Generator) -> np.ndarray:
    """Class centroids inside a cone, like contrastive embeddings (which do not fill the sphere)."""
    mean = unit(rng.normal(size=(1, D)))
    return unit(mean + 0.5 * unit(rng.normal(size=(k, D))))


_G = np.random.default_rng(0)
RNA_C, PROT_C = cone(4, _G), cone(4, _G)


def factors(n: int, seed: int, noise: float = 0.15):
    """RNA shows factor a (2 levels), protein factor b: labels of (a, b) need both modalities."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    return (unit(RNA_C[a] + noise * rng.normal(size=(n, D))), unit(PROT_C[b] + noise * rng.normal(size=(n, D))),
            a, b)


def typed(n: int, seed: int, *, prot_noise: bool = False, noise: float = 0.12):
    """4 cell types seen by both modalities; ``prot_noise``: protein is pure noise (random unit vectors)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, n)
    zr = unit(RNA_C[t] + noise * rng.normal(size=(n, D)))
    zp = unit(rng.normal(size=(n, D))) if prot_noise else unit(PROT_C[t] + noise * rng.normal(size=(n, D)))
    return zr, zp, t


def accuracy(head, zr, zp, y, mask=None) -> float:
    return float((predict_head(head, zr, zp, mask=mask, mc_samples=5, seed=0)["probs"].argmax(1) == y).mean())



def write_embedding(path, n: int = 300, seed: int = 0, fingerprint: str | None = "fp-test"):
    """A small `omicsclip embed`-like AnnData zarr: 4 types, obs split/cell_type (with unlabelled cells)."""
    import anndata as ad

    zr, zp, t = typed(n, seed)
    rng = np.random.default_rng(seed)
    labels = np.array(["T", "B", "NK", "Mono"], dtype=object)[t]
    labels[rng.random(n) < 0.1] = "unknown"
    labels[rng.random(n) < 0.05] = ""
    split = rng.choice(["train", "val", "test"], size=n, p=[0.6, 0.1, 0.3])
    a = ad.AnnData(obs=pd.DataFrame({"cell_type": labels, "split": split},
                                    index=[f"c{i}" for i in range(n)]))
    a.obsm["X_omicsclip_rna"], a.obsm["X_omicsclip_prot"] = zr, zp
    a.obsm["X_omicsclip_joint"] = unit(zr + zp)
    if fingerprint:
        a.uns["omicsclip"] = {"model_fingerprint": fingerprint}
    a.write_zarr(path)
    return path

