"""Held-out evaluation from a notebook: :func:`evaluate`, the metrics ``omicsclip evaluate`` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omicsclip.api._inputs import ConfigLike, resolve_config
from omicsclip.api.model import OmicsClipModel
from omicsclip.errors import InputError


def evaluate(model: OmicsClipModel | str | Path, store: str | Path | None = None, *, config: ConfigLike = None,
             out: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Score the model and the PCA, CCA and ridge baselines on the model's held-out test cells.

    Parameters
    ----------
    model
        The model (or its folder).
    store
        The paired store the model was trained on (default: the one it recorded, see
        :attr:`OmicsClipModel.store`); its cells must all be in the model's split.
    config
        Settings (``evaluate`` and ``query`` sections); see :func:`omicsclip.api.train_model`.
    out
        Also write ``metrics.json`` here (what ``omicsclip evaluate`` writes).
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    dict
        ``methods`` (``omicsclip``, ``cca``, ``ridge``, ``pca`` -> FOSCTTM, recall@1/10/50, match score,
        cell-type match, few-label accuracy, protein Pearson and RMSE; ``None`` where not applicable),
        ``n_test_cells``, ``validation`` (omicsclip on validation cells), ``protein_pearson_per_protein``, ...
    """
    from omicsclip.api.model import load_model
    from omicsclip.evaluation.evaluate import evaluate as _evaluate
    from omicsclip.evaluation.evaluate import run_evaluate
    from omicsclip.index.engine import QuerySettings

    model = model if isinstance(model, OmicsClipModel) else load_model(model)
    if store is None:
        store = model.store
        if store is None or not Path(store).exists():
            raise InputError(f"{model.path}: its training store {store} is gone; pass store=")
    model_dir = model.path
    cfg = resolve_config(config)
    if out is not None:
        return run_evaluate(store, model_dir, out, evaluate_cfg=cfg["evaluate"], query_cfg=cfg["query"],
                            overwrite=overwrite)
    ev, q = cfg["evaluate"], QuerySettings.from_section(cfg["query"])
    result = _evaluate(store, model_dir, fewlabel_fraction=float(ev["fewlabel_fraction"]), n_pcs=int(ev["n_pcs"]),
                       label_key=str(ev["label_key"]), impute_k=q.impute_k, impute_temperature=q.temperature,
                       impute_from=q.transfer_from)
    return result
