# ruff: noqa: D100, E402, B018  (a notebook script: bare expressions display, imports sit in their cells)
# %% [markdown]
# # omicsclip from Python: embeddings, cross-modal query and few-label annotation
#
# This notebook goes from a MuData (RNA + surface protein of the same cells, CITE-seq) to a shared embedding,
# a UMAP with scanpy, a cross-modal query (RNA-only cells get neighbours, imputed protein and labels) and a
# few-label cell-type head, without the command line or a file to manage. It runs top to bottom on built-in
# synthetic data; the last section does the same on a public 10x dataset when you have downloaded it.
#
# `docs/tutorial.ipynb` is generated from `docs/tutorial.py` and executed by the test suite
# (`tests/api/test_tutorial.py`, with `OMICSCLIP_TUTORIAL_SMALL=1`: a tiny model on a few hundred cells).

# %%
# %matplotlib inline
import os
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import mudata as md
import numpy as np
import scanpy as sc

import omicsclip as oc

SMALL = os.environ.get("OMICSCLIP_TUTORIAL_SMALL") == "1"  # the test suite's quick run
WORK = Path(os.environ.get("OMICSCLIP_TUTORIAL_DIR", "omicsclip_tutorial"))
WORK.mkdir(parents=True, exist_ok=True)
sc.settings.verbosity = 0
plt.rcParams["figure.dpi"] = 80
# a tiny model for the quick run; the defaults (configs/default.yaml) otherwise, with fewer epochs
CONFIG = (["preprocess.n_hvg=100", "model.rna_hidden=[32]", "model.prot_hidden=[16]", "model.embed_dim=8",
           "model.members=1", "train.batch_size=64", "train.epochs=4", "train.warmup_steps=4",
           "train.device=cpu", "finetune.epochs=40", "finetune.ensemble=2"]
          if SMALL else {"train": {"epochs": 60}})

# %% [markdown]
# ## 1. Data: a MuData with `rna` and `prot` modalities
#
# Synthetic CITE-seq counts (`omicsclip synth` makes the same as a file). Raw counts are what omicsclip reads:
# if your AnnData holds normalised values in `X`, pass `layer="counts"` to any function below.
# The last 20% of the cells play "new cells" that the model never sees.

# %%
from omicsclip.io import make_synthetic

cells = make_synthetic(n_cells=600 if SMALL else 5000, n_genes=200 if SMALL else 1000,
                       n_proteins=10 if SMALL else 20, n_types=5 if SMALL else 8, seed=0)
rna = ad.AnnData(X=cells.rna, obs=cells.obs.copy(), var=cells.genes.copy())
prot = ad.AnnData(X=cells.prot, obs=cells.obs.copy(), var=cells.proteins.copy())
n_ref = int(0.8 * cells.n_cells)
mdata = md.MuData({"rna": rna[:n_ref].copy(), "prot": prot[:n_ref].copy()})
mdata.obs["cell_type"] = rna.obs["cell_type"].to_numpy()[:n_ref]
new = md.MuData({"rna": rna[n_ref:].copy(), "prot": prot[n_ref:].copy()})
new.obs["cell_type"] = rna.obs["cell_type"].to_numpy()[n_ref:]
mdata

# %% [markdown]
# ## 2. Train the dual encoder
#
# `oc.train_model` writes the training store (`<out>_store.zarr`) and the model folder `out` — the same folder
# `omicsclip train` writes, so the CLI (`omicsclip embed`, `index`, `evaluate`) can use it too.
# `config` takes a YAML path, a nested dict, or `section.key=value` strings.

# %%
model = oc.train_model(mdata, WORK / "model", config=CONFIG, overwrite=True)
model

# %%
oc.pl.training_curves(model)

# %% [markdown]
# ## 3. Embeddings and a UMAP with scanpy
#
# `model.embed` writes `obsm["X_omicsclip_rna"]`, `["X_omicsclip_prot"]` and `["X_omicsclip_joint"]` (scanpy's
# `key_added` convention) and returns the arrays.

# %%
emb = model.embed(mdata)
{k: v.shape for k, v in emb.items()}

# %%
view = ad.AnnData(obs=mdata.obs[["cell_type"]].copy(), obsm={"X_omicsclip_joint": emb["joint"]})
sc.pp.neighbors(view, use_rep="X_omicsclip_joint")
sc.tl.umap(view, random_state=0)
sc.pl.umap(view, color="cell_type", title="joint omicsclip embedding", show=False)

# %% [markdown]
# ## 4. Cross-modal query: new cells measured by RNA alone
#
# The reference index holds one FAISS index per modality plus the reference protein and labels. A query of
# RNA-only cells returns an AnnData: imputed protein (CLR) in `X`, its per-cell `confidence`, the transferred
# `cell_type` in `obs`, and every neighbour in `uns["neighbours"]`.

# %%
ref = oc.build_index(mdata, model, label_key="cell_type")
new_rna = new.mod["rna"].copy()  # RNA only
result = ref.query(new_rna)
result

# %%
result.obs[["cell_type", "cell_type_vote_fraction", "confidence"]].head()

# %%
truth = new.obs["cell_type"].astype(str).to_numpy()
print(f"label transfer from RNA alone: {np.mean(result.obs['cell_type'].to_numpy() == truth):.1%} correct")
result.uns["neighbours"].head()

# %%
oc.pl.imputed_vs_measured(result, new)

# %% [markdown]
# ## 5. Few-label annotation
#
# A light head on the frozen embeddings, fitted on 10 labelled cells per type; `gated` fusion weighs each
# modality per cell and copes with a missing one. `head.predict` writes `obs["omicsclip_label"]` and friends.

# %%
head = oc.fit_head(mdata, model, labels_key="cell_type", labels_per_class=10, fusion="gated", config=CONFIG)
pred = head.predict(new)
print(f"10 labels per type, both modalities: {np.mean(pred['label'].to_numpy() == truth):.1%} correct")
new.obs[["cell_type", "omicsclip_label", "omicsclip_probability", "omicsclip_weight_rna"]].head()

# %%
pred_rna = head.predict(new_rna)  # RNA only: predicted from the modality the cells have
print(f"RNA only: {np.mean(pred_rna['label'].to_numpy() == truth):.1%} correct")

# %% [markdown]
# ## 6. Held-out metrics next to the baselines
#
# `oc.evaluate` scores the model's held-out test cells against PCA, CCA and ridge (what `omicsclip evaluate`
# writes to `metrics.json`).

# %%
metrics = oc.evaluate(model)
oc.pl.metrics(metrics)

# %% [markdown]
# ## 7. A public dataset
#
# Download the 10x PBMC 10k CITE-seq filtered matrix (`pbmc10k_protein_v3_filtered_feature_bc_matrix.h5`, see
# `data/README.md`) next to this notebook, or point `OMICSCLIP_TUTORIAL_DATA` at it (an `.h5mu` works too).
# `scanpy.read_10x_h5(..., gex_only=False)` keeps the antibody-capture features; omicsclip recognises them by
# `var["feature_types"]`. The cells below are skipped when the file is absent.

# %%
public = Path(os.environ.get("OMICSCLIP_TUTORIAL_DATA", "pbmc10k_protein_v3_filtered_feature_bc_matrix.h5"))
if not public.exists():
    print(f"{public} not found: skipping the public-data section")
    pbmc = None
elif public.suffix == ".h5mu":
    pbmc = md.read_h5mu(public)
else:
    pbmc = sc.read_10x_h5(public, gex_only=False)
    pbmc.var_names_make_unique()
pbmc

# %%
if pbmc is not None:
    pbmc_model = oc.train_model(pbmc, WORK / "pbmc_model", config=CONFIG, overwrite=True)
    pbmc_emb = pbmc_model.embed(pbmc)
    pbmc_view = ad.AnnData(obs=pbmc.obs[[]].copy(), obsm={"X_omicsclip_joint": pbmc_emb["joint"]})
    sc.pp.neighbors(pbmc_view, use_rep="X_omicsclip_joint")
    sc.tl.leiden(pbmc_view, flavor="igraph", n_iterations=2)
    sc.tl.umap(pbmc_view)
    sc.pl.umap(pbmc_view, color="leiden", show=False)
