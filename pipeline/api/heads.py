"""Few-label cell-type heads from a notebook: :func:`fit_head`, :func:`load_head` and :class:`Head`.

A head is fitted in memory by :func:`omicsclip.heads.run.fit_embedding_head` (what ``omicsclip finetune`` runs
before saving) on the embeddings of the given cells, held in memory (an :class:`omicsclip.model.embed.Embeddings`);
it is saved by :func:`omicsclip.heads.headio.save_head` (the ``finetune`` writer) and predicts with
:func:`omicsclip.heads.predict.iter_predictions`, the loop of ``omicsclip predict``. Nothing is written to disk
unless asked (``out=`` or :meth:`Head.save`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from omicsclip.api._inputs import ConfigLike, opened, resolve_config, write_obs
from omicsclip.api.model import OmicsClipModel, embed_cells, load_model
from omicsclip.conventions import EMBEDDING_KEYS
from omicsclip.model.embed import Embeddings

log = logging.getLogger(__name__)

#: obs columns written by :meth:`Head.predict`, from the ``omicsclip predict`` table.
PREDICTION_COLUMNS = ("label", "probability", "uncertainty", "weight_rna", "weight_prot", "uncertainty_rna",
                      "uncertainty_prot", "has_rna", "has_prot")


class Head:
    """A fitted cell-type head (in memory, or a head folder) and the model whose embeddings it classifies.

    Get one from :func:`fit_head` or :func:`load_head`; label cells with :meth:`predict`.

    Attributes
    ----------
    head
        The :class:`omicsclip.heads.base.FusionHead` (eval mode).
    meta
        ``head.json``: classes, fusion, parameters, held-out metrics, model fingerprint.
    model
        The :class:`~omicsclip.api.model.OmicsClipModel` (with the head's fine-tuned encoder layers, if any).
    path
        The head folder it was loaded from or last saved to; ``None`` for a head only in memory.
    """

    def __init__(self, head: Any, meta: dict[str, Any], extra: dict[str, Any], model: OmicsClipModel,
                 path: Path | None = None) -> None:
        from omicsclip.heads.headio import check_fingerprint
        from omicsclip.heads.tuning import apply_encoder_layers

        check_fingerprint(meta, model.fingerprint, head_dir=path if path is not None else "<in memory>")
        if extra:  # fine-tuned encoder layers change the encoders: on a copy, never the caller's model
            model = load_model(model.path, device=str(model.trained.device))
            apply_encoder_layers(model.trained, extra, source=str(path) if path is not None else "head")
        self.head, self.meta, self._extra = head.eval(), meta, extra
        self.model = model
        self.path = None if path is None else Path(path)

    @property
    def classes(self) -> list[str]:
        """Class names, in the head's order."""
        return list(self.meta["classes"])

    @property
    def fusion(self) -> str:
        """The fusion (``early``, ``late``, ``gated``, ``uncertainty``, ``tensor``, ``rna``, ``prot``)."""
        return str(self.head.fusion)

    @property
    def metrics(self) -> dict[str, Any]:
        """Accuracy, macro-F1 and ECE on labelled held-out (``test``) cells, when there were any."""
        return dict(self.meta.get("metrics") or {})

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the head folder (what ``omicsclip finetune`` writes and ``omicsclip predict --head`` reads).

        Parameters
        ----------
        path
            The head folder to create.
        overwrite
            Replace an existing folder.

        Returns
        -------
        Path
            ``path``.
        """
        from omicsclip.heads.headio import save_head

        save_head(path, self.head, self.meta, extra_tensors=self._extra, overwrite=overwrite)
        self.path = Path(path)
        return self.path

    def predict(self, data: Any, *, key_added: str | None = "omicsclip", modality: str | None = None,
                config: ConfigLike = None, **options: Any) -> pd.DataFrame:
        """Label cells; write the predictions to ``obs`` and return them.

        Parameters
        ----------
        data
            Cells with RNA, protein or both: a MuData, an AnnData, an ``(rna, prot)`` pair or path(s) of any
            ingest format. A cell is predicted from the modalities it has (non-zero counts).
        key_added
            obs column prefix: writes ``<key_added>_label``, ``_probability``, ``_uncertainty``,
            ``_weight_rna``, ``_weight_prot``, ``_uncertainty_rna``, ``_uncertainty_prot``, ``_has_rna``,
            ``_has_prot`` (matched by barcode). ``None`` writes nothing.
        modality
            What a single-modality input holds (``rna`` or ``prot``; default: detect).
        config
            Reader settings and ``query.chunk_cells``; see :func:`omicsclip.api.train_model`.
        **options
            Reader options, e.g. ``layer="counts"``.

        Returns
        -------
        pandas.DataFrame
            One row per cell (index = barcodes), the columns of ``omicsclip predict``: ``label``,
            ``probability``, ``weight_rna``, ``weight_prot``, ``uncertainty``, ``uncertainty_rna``,
            ``uncertainty_prot``, ``has_rna``, ``has_prot``, ``prot_missing_fraction``.
        """
        from omicsclip.heads.predict import iter_predictions

        cfg = resolve_config(config)
        with opened(data, ingest=cfg["ingest"], require="any", modality=modality,
                    model_proteins=self.model.trained.proteins, **options) as src:
            frames = list(iter_predictions(src, self.model.trained, self.head, self.meta,
                                           chunk_cells=int(cfg["query"]["chunk_cells"]), head_name=str(self.path or "<in memory>")))
        df = pd.concat(frames, ignore_index=True).set_index("barcode")
        df.index = df.index.astype(str)
        if key_added is not None:
            write_obs(data, df[list(PREDICTION_COLUMNS)].add_prefix(f"{key_added}_"))
        return df

    def __repr__(self) -> str:
        where = "in memory" if self.path is None else repr(str(self.path))
        return f"Head({where}, fusion={self.fusion}, classes={self.classes})"


def fit_head(data: Any, model: OmicsClipModel | str | Path, *, labels_key: str | None = None,
             fusion: str | None = None, labels_per_class: int | None = None,
             ignore_labels: Sequence[str] | None = None, seed: int | None = None, config: ConfigLike = None,
             out: str | Path | None = None, overwrite: bool = False, **options: Any) -> Head:
    """Fit a few-label cell-type head on the embeddings of labelled cells.

    Cells of the model's ``train`` split are used for fitting when the data are (partly) the training cells;
    labelled ``test`` cells then give held-out accuracy, macro-F1 and ECE (:attr:`Head.metrics`). Other data
    are fitted on all labelled cells.

    Parameters
    ----------
    data
        Cells with both modalities and labels in ``obs``: a MuData, an AnnData with protein in ``obsm``, an
        ``(rna, prot)`` pair or path(s) of any ingest format.
    model
        The model (or its folder).
    labels_key
        obs column with the labels (default: ``evaluate.label_key``); empty/NaN/NA values are unlabelled.
    fusion
        ``early`` | ``late`` | ``gated`` | ``uncertainty`` | ``tensor`` | ``rna`` | ``prot`` (default:
        ``finetune.fusion``).
    labels_per_class
        Use this many randomly drawn labelled training cells per class (few-label annotation).
    ignore_labels
        Label values treated as unlabelled (default: ``evaluate.ignore_labels``).
    seed
        Seed of the label draw and the head (default: ``finetune.seed``).
    config
        Settings (``finetune``, ``evaluate``, reader sections); see :func:`omicsclip.api.train_model`.
    out
        The head folder to write (what ``omicsclip finetune`` writes); default: the head stays in memory
        (:meth:`Head.save` writes it later).
    overwrite
        Replace an existing ``out``.
    **options
        Reader options, e.g. ``layer="counts"``.

    Returns
    -------
    Head
        The fitted head.
    """
    from omicsclip.heads.run import fit_embedding_head
    from omicsclip.model.embed import PROT_MISSING_COLUMN, UNSEEN

    model = model if isinstance(model, OmicsClipModel) else load_model(model)
    cfg = resolve_config(config)
    if fusion is not None:
        cfg["finetune"]["fusion"] = fusion
    ev = cfg["evaluate"]
    if out is not None:
        from omicsclip.io.atomic import check_writable

        check_writable(Path(out), overwrite=overwrite)
    barcodes, emb, extra = embed_cells(model, data, config=cfg, require="both", **options)
    obs = extra["obs"].copy()
    obs.index = barcodes
    obs["split"] = model.split.reindex(barcodes).fillna(UNSEEN).to_numpy()
    # a degraded protein panel weighs as it does through `omicsclip embed` + `finetune`
    obs[PROT_MISSING_COLUMN] = extra["prot_missing_fraction"]
    embeddings = Embeddings(path=Path(f"<in-memory {type(data).__name__}>"), obs=obs,
                           uns={"omicsclip": {"model_fingerprint": model.fingerprint}},
                           modalities=list(emb), _obsm={EMBEDDING_KEYS[m]: a for m, a in emb.items()})
    tuned = bool(cfg["finetune"]["finetune_encoder"])
    head, meta, tensors = fit_embedding_head(
        embeddings, label_key=labels_key or ev["label_key"], section=cfg["finetune"],
        labels_per_class=labels_per_class,
        ignore_labels=list(ignore_labels if ignore_labels is not None else ev["ignore_labels"]),
        seed=seed, store=model.store if tuned else None, model=model.path if tuned else None)
    fitted = Head(head, meta, tensors, model)
    if out is not None:
        fitted.save(out, overwrite=overwrite)
    return fitted


def load_head(path: str | Path, model: OmicsClipModel | str | Path) -> Head:
    """Open a head folder (``omicsclip finetune`` or :func:`fit_head` output).

    Parameters
    ----------
    path
        The head folder.
    model
        The model whose embeddings the head was trained on (or its folder); another model is refused.

    Returns
    -------
    Head
        The head, ready to :meth:`~Head.predict`.
    """
    from omicsclip.heads.headio import load_head as read_head

    model = model if isinstance(model, OmicsClipModel) else load_model(model)
    head, meta, extra = read_head(path)
    return Head(head, meta, extra, model, Path(path))
