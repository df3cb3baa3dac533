"""Few-label heads on the shared embedding: fusion heads, their training, calibration, files and prediction.

Modules: :mod:`~omicsclip.heads.base` (the head interface, building blocks), :mod:`~omicsclip.heads.fusion` (the
heads, :func:`build_head`), :mod:`~omicsclip.heads.ensemble` (the gated and uncertainty heads),
:mod:`~omicsclip.heads.calibration`, :mod:`~omicsclip.heads.inputs` (embeddings files),
:mod:`~omicsclip.heads.labels`, :mod:`~omicsclip.heads.fit` (training), :mod:`~omicsclip.heads.tuning` (light
encoder fine-tuning), :mod:`~omicsclip.heads.headio` (head folders), :mod:`~omicsclip.heads.predict` and
:mod:`~omicsclip.heads.run` (the ``finetune`` command).

Layering: this package imports :mod:`omicsclip.errors`, :mod:`omicsclip.config`, :mod:`omicsclip.conventions`,
:mod:`omicsclip.io` and :mod:`omicsclip.model` only; never the index, evaluation, report or CLI.
"""

from __future__ import annotations

from omicsclip.heads.base import (
    FUSIONS,
    HEAD_KINDS,
    MULTIMODAL_FUSIONS,
    EnsembleClassifier,
    FusionHead,
    make_classifier,
    normalised_entropy,
    random_unit_vectors,
)
from omicsclip.heads.calibration import (
    BETA_RANGE,
    calibrate_out_of_bag,
    classification_metrics,
    expected_calibration_error,
    fit_inverse_temperature,
    reliability_bins,
)
from omicsclip.heads.ensemble import GatedFusionHead, UncertaintyFusionHead
from omicsclip.heads.fit import HeadParams, LastLayerTuner, augment, fit_head, fit_head_with_encoders
from omicsclip.heads.fusion import (
    EarlyFusionHead,
    LateFusionHead,
    SingleModalityHead,
    TensorFusionHead,
    build_head,
)
from omicsclip.heads.headio import HEAD_FORMAT, HEAD_FORMAT_VERSION, check_fingerprint, load_head, save_head
from omicsclip.heads.inputs import Embedding, presence_mask, read_embedding
from omicsclip.heads.labels import label_array, sample_per_class, unlabelled_pool
from omicsclip.heads.predict import iter_predictions, predict_cells, predict_head, prediction_frame
from omicsclip.heads.run import finetune_embedding, fit_embedding_head
from omicsclip.heads.tuning import apply_encoder_layers, fit_with_store, penultimate_features

__all__ = [
    "BETA_RANGE",
    "FUSIONS",
    "HEAD_FORMAT",
    "HEAD_FORMAT_VERSION",
    "HEAD_KINDS",
    "MULTIMODAL_FUSIONS",
    "EarlyFusionHead",
    "Embedding",
    "EnsembleClassifier",
    "FusionHead",
    "GatedFusionHead",
    "HeadParams",
    "LastLayerTuner",
    "LateFusionHead",
    "SingleModalityHead",
    "TensorFusionHead",
    "UncertaintyFusionHead",
    "apply_encoder_layers",
    "augment",
    "build_head",
    "calibrate_out_of_bag",
    "check_fingerprint",
    "classification_metrics",
    "expected_calibration_error",
    "finetune_embedding",
    "fit_embedding_head",
    "fit_head",
    "fit_head_with_encoders",
    "fit_inverse_temperature",
    "fit_with_store",
    "iter_predictions",
    "label_array",
    "load_head",
    "make_classifier",
    "normalised_entropy",
    "penultimate_features",
    "predict_cells",
    "predict_head",
    "prediction_frame",
    "presence_mask",
    "random_unit_vectors",
    "read_embedding",
    "reliability_bins",
    "sample_per_class",
    "save_head",
    "unlabelled_pool",
]
