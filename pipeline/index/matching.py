"""Match a query input's features to the model's by name, before any cell is read.

Missing genes and proteins enter the model as the training mean and extra ones are ignored; these checks refuse an
input that lacks too much of the model's genes or panel (of the training dataset it covers best, for a model pooled
from several: :func:`omicsclip.model.alignment.refuse_lacking`, as the embedding itself does) and report (once, up
front) what was matched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from omicsclip.errors import InputError
from omicsclip.model.alignment import refuse_lacking

log = logging.getLogger(__name__)


def match_report(names: Sequence[str], model_names: Sequence[str]) -> dict[str, Any]:
    """Report how input features relate to the model's: shared, missing, extra and whether the order differs.

    Parameters
    ----------
    names
        The input's feature names, in column order.
    model_names
        The model's feature names, in its column order.

    Returns
    -------
    dict
        ``n_input``, ``n_model``, ``n_shared``, ``n_missing``, ``n_extra``, ``missing_fraction``, ``reordered``
        and up to ten ``missing_examples`` / ``extra_examples``.
    """
    names = [str(n) for n in names]
    model_names = [str(n) for n in model_names]
    have = set(names)
    want = set(model_names)
    missing = [n for n in model_names if n not in have]
    extra = [n for n in names if n not in want]
    shared_in_input = [n for n in names if n in want]
    shared_in_model = [n for n in model_names if n in have]
    return {
        "n_input": len(names), "n_model": len(model_names), "n_shared": len(shared_in_model),
        "n_missing": len(missing), "n_extra": len(extra),
        "missing_fraction": len(missing) / max(len(model_names), 1),
        "reordered": shared_in_input != shared_in_model,
        "missing_examples": missing[:10], "extra_examples": extra[:10],
    }


def check_features(genes: Sequence[str] | None, proteins: Sequence[str] | None, model: Any,
                   *, source: str = "query input") -> dict[str, Any]:
    """Match the input's features to the model's by name; refuse before any work is done.

    Parameters
    ----------
    genes, proteins
        The input's gene and protein names (``None`` for an absent modality).
    model
        A trained model (``genes``, ``proteins`` and its preprocessing ``state``).
    source
        How to name the input in messages.

    Returns
    -------
    dict
        :func:`match_report` per present modality (``rna``, ``prot``); ``missing_fraction`` is of the closest
        training dataset's genes / panel for a model pooled from several.

    Raises
    ------
    InputError
        More than the model's ``max_missing_gene_fraction`` of its genes or ``max_missing_protein_fraction`` of its
        proteins missing (of the closest training dataset's, for a pooled model), or no protein shared.
    """
    out: dict[str, Any] = {}
    state = model.state
    if genes is not None:
        rep = match_report(genes, model.genes)
        out["rna"] = _checked(rep, genes, model.genes, state, "genes", source)
    if proteins is not None:
        rep = match_report(proteins, model.proteins)
        if rep["n_shared"] == 0:
            raise InputError(f"{source}: shares no protein with the model (model: "
                             f"{', '.join(model.proteins[:5])}...; input: {', '.join(map(str, proteins[:5]))}...)")
        out["prot"] = _checked(rep, proteins, model.proteins, state, "proteins", source)
    return out


def _checked(rep: dict[str, Any], names: Sequence[str], model_names: Sequence[str], state: Any, what: str,
             source: str) -> dict[str, Any]:
    """Refuse, or log, what ``rep`` (:func:`match_report`) found.

    Its ``missing_fraction`` becomes the fraction of the genes / panel of the training dataset the input covers best
    (a model pooled from several), the fraction the embedding itself holds the input to.
    """
    have = {str(n) for n in names}
    missing = [n for n in model_names if n not in have]
    lacking, panel, _ = refuse_lacking(missing, state, what, f"{source}:", names)
    rep["missing_fraction"] = lacking
    if missing and lacking == 0:
        log.info("%s %s vs model: %d of %d, a training dataset's %s complete; %d extra (ignored)", source, what,
                 rep["n_shared"], rep["n_model"], "gene set" if what == "genes" else "panel", rep["n_extra"])
    else:
        log.log(logging.WARNING if missing else logging.INFO,
                "%s %s vs model: %d of %d missing (%.0f%%%s; the training mean), %d extra (ignored)%s", source, what,
                rep["n_missing"], rep["n_model"], 100 * lacking, panel, rep["n_extra"],
                f", order {'differs (matched by name)' if rep['reordered'] else 'same'}" if what == "genes" else "")
    return rep
