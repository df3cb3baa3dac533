"""The notebook API: train, embed, index, query, annotate and plot with what a notebook holds.

Every function takes a MuData (``rna`` + ``prot``), an AnnData with protein counts in ``obsm``, an
``(rna, prot)`` pair of AnnData (in memory, backed or dask) or path(s) of any ingest format, and writes results
back the scanpy way (``obsm`` keys, ``obs`` columns). The CLI commands run the same library functions::

    import omicsclip as oc

    model = oc.train_model(mdata, "models/pbmc", config={"train": {"epochs": 50}})
    model.embed(mdata)                                   # obsm X_omicsclip_rna / _prot / _joint
    ref = oc.build_index(mdata, model)
    result = ref.query(adata_rna_only)                   # imputed protein in X, labels in obs
    head = oc.fit_head(mdata, model, labels_key="cell_type", fusion="gated", labels_per_class=10)
    head.predict(adata_new)                              # obs omicsclip_label, omicsclip_probability, ...
    oc.pl.training_curves(model)

Layering: this package may import every library stage; only the CLI and ``omicsclip/__init__`` import it.
"""

from __future__ import annotations

from omicsclip.api import pl
from omicsclip.api._inputs import open_data, resolve_config
from omicsclip.api.heads import Head, fit_head, load_head
from omicsclip.api.metrics import evaluate
from omicsclip.api.model import OmicsClipModel, default_store, load_model, train_model, write_training_store
from omicsclip.api.reference import Reference, build_index, load_index

__all__ = [
    "Head",
    "OmicsClipModel",
    "Reference",
    "build_index",
    "default_store",
    "evaluate",
    "fit_head",
    "load_head",
    "load_index",
    "load_model",
    "open_data",
    "pl",
    "resolve_config",
    "train_model",
    "write_training_store",
]
