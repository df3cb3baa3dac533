"""The dual encoder and everything it needs at inference: preprocessing, the model files, embeddings.

Layering: this package imports only :mod:`omicsclip.errors`, :mod:`omicsclip.config`, :mod:`omicsclip.conventions`
and :mod:`omicsclip.io`; :mod:`~omicsclip.model.encoders`, :mod:`~omicsclip.model.loss` and
:mod:`~omicsclip.model.batchops` import nothing but torch (``bench/gpu_train.py`` loads them on their own).
"""

from __future__ import annotations

from omicsclip.model.alignment import FeatureReport, align_proteins, align_rna
from omicsclip.model.batchops import (
    Augmentation,
    CountTransform,
    RawBatch,
    gather_rows,
    model_inputs,
    thin_counts,
)
from omicsclip.model.device import resolve_device
from omicsclip.model.embed import UNSEEN, Embeddings, embed_store, open_embeddings
from omicsclip.model.encoders import (
    DualEncoder,
    MemberLayerNorm,
    MemberLinear,
    MLPEncoder,
    build_model,
    normalize_members,
)
from omicsclip.model.geneselect import MAX_PROTEIN_GENES, select_hvg, select_protein_genes
from omicsclip.model.loss import ClipLoss, gather_features, row_cross_entropy
from omicsclip.model.modelio import (
    TrainedModel,
    joint_embedding,
    load_model,
    read_meta,
    store_fingerprint,
    write_model_files,
)
from omicsclip.model.preprocess import (
    PreprocessState,
    TorchPreprocessor,
    clr,
    fit_preprocessing,
    library_size,
    log_normalize,
    principal_axes,
)

__all__ = [
    "MAX_PROTEIN_GENES",
    "UNSEEN",
    "Augmentation",
    "ClipLoss",
    "CountTransform",
    "DualEncoder",
    "Embeddings",
    "FeatureReport",
    "MLPEncoder",
    "MemberLayerNorm",
    "MemberLinear",
    "PreprocessState",
    "RawBatch",
    "TorchPreprocessor",
    "TrainedModel",
    "align_proteins",
    "align_rna",
    "build_model",
    "clr",
    "embed_store",
    "fit_preprocessing",
    "gather_features",
    "gather_rows",
    "joint_embedding",
    "library_size",
    "load_model",
    "log_normalize",
    "model_inputs",
    "normalize_members",
    "open_embeddings",
    "principal_axes",
    "read_meta",
    "resolve_device",
    "row_cross_entropy",
    "select_hvg",
    "select_protein_genes",
    "store_fingerprint",
    "thin_counts",
    "write_model_files",
]
