"""Match a query input's features to the model's by name, before any cell is read.

Missing genes are zero-filled and extra ones ignored by the model's preprocessing; these checks refuse an input
that lacks too much of the model's panel and report (once, up front) what was matched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from omicsclip.errors import InputError

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
        A trained model (``genes``, ``proteins`` and ``config``).
    source
        How to name the input in messages.

    Returns
    -------
    dict
        :func:`match_report` per present modality (``rna``, ``prot``).

    Raises
    ------
    InputError
        More than the model's ``max_missing_gene_fraction`` of its genes or ``max_missing_protein_fraction`` of its
        proteins missing, or no protein shared.
    """
    out: dict[str, Any] = {}
    if genes is not None:
        rep = match_report(genes, model.genes)
        limit = float(model.config["preprocess"]["max_missing_gene_fraction"])
        if rep["missing_fraction"] > limit:
            raise InputError(
                f"{source}: lacks {rep['n_missing']} of the model's {rep['n_model']} genes "
                f"({rep['missing_fraction']:.0%} > max_missing_gene_fraction={limit:g}); "
                f"e.g. {', '.join(rep['missing_examples'][:3])}"
            )
        level = logging.WARNING if rep["n_missing"] else logging.INFO
        log.log(level, "%s genes vs model: %d of %d missing (zero-filled), %d extra (ignored), order %s", source,
                rep["n_missing"], rep["n_model"], rep["n_extra"],
                "differs (matched by name)" if rep["reordered"] else "same")
        out["rna"] = rep
    if proteins is not None:
        rep = match_report(proteins, model.proteins)
        if rep["n_shared"] == 0:
            raise InputError(f"{source}: shares no protein with the model (model: "
                             f"{', '.join(model.proteins[:5])}...; input: {', '.join(map(str, proteins[:5]))}...)")
        limit = float(model.state.max_missing_protein_fraction)  # the state: old model.json configs lack the key
        if rep["missing_fraction"] > limit:
            raise InputError(
                f"{source}: lacks {rep['n_missing']} of the model's {rep['n_model']} proteins "
                f"({rep['missing_fraction']:.0%} > max_missing_protein_fraction={limit:g}); "
                f"e.g. {', '.join(rep['missing_examples'][:3])}"
            )
        level = logging.WARNING if rep["n_missing"] else logging.INFO
        log.log(level, "%s proteins vs model: %d of %d missing (zero-filled), %d extra (ignored)", source,
                rep["n_missing"], rep["n_model"], rep["n_extra"])
        out["prot"] = rep
    return out
