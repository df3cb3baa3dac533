"""The reference protein stored with an index: CLR protein of the reference cells, NaN where it was not measured.

A reference pooled from datasets with different antibody panels (:mod:`omicsclip.io.panels`) did not measure
every protein in every cell: those entries are NaN, the CLR of a cell is centred over its measured proteins only,
and imputation (:func:`omicsclip.index.impute.impute`) averages each protein over the neighbours that have it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from omicsclip.errors import InputError


def _present(store: Path, pos: np.ndarray) -> np.ndarray | None:
    """Measured-protein mask of store cells ``pos`` (store proteins as columns), ``None`` when all were measured."""
    from omicsclip.io.formats import detect_format

    if detect_format([store]) != "zarr":  # only a paired store records panels
        return None
    from omicsclip.io.panels import store_present
    from omicsclip.io.store import store_info

    return store_present(store_info(store), pos)


def reference_protein(store: Path, ids: pd.Index, model_proteins: Sequence[str] | None
                      ) -> tuple[np.ndarray, list[str]]:
    """Return the CLR protein of cells ``ids`` from a paired store (or any input), on the model's protein panel.

    Parameters
    ----------
    store
        The paired store (or any input) holding the reference cells' protein counts.
    ids
        The reference cell ids, in index order.
    model_proteins
        The model's proteins (the stored columns); ``None``: the store's.

    Returns
    -------
    tuple
        ``(n x P float32 CLR protein, NaN where the cell's panel lacked the protein; protein names)``.
    """
    from omicsclip.io.readers import open_input
    from omicsclip.model.preprocess import clr

    with open_input([store], require="any", modality="prot") as src:
        if src.proteins is None:
            raise InputError(f"{store}: no protein counts to store with the index")
        pos = src.barcodes.get_indexer(ids)
        if (pos < 0).any():
            missing = ids[pos < 0]
            raise InputError(f"{store}: {len(missing)} embedded cells are not in this store "
                             f"(e.g. {', '.join(map(str, missing[:3]))})")
        parts = [np.asarray(c.prot, np.float32) for c in src.iter_chunks(50_000)]
        names = [str(n) for n in src.proteins]
    counts = np.concatenate(parts)[pos]
    present = _present(Path(store), pos)
    if present is not None:
        counts[~present] = np.nan  # outside the cell's panel: unmeasured, not zero
    if model_proteins is not None:
        col = pd.Index(names).get_indexer(list(model_proteins))
        if (col < 0).any():
            raise InputError(f"{store}: lacks the model's proteins "
                             f"{', '.join(p for p, c in zip(model_proteins, col, strict=True) if c < 0)}")
        counts, names = counts[:, col], [str(p) for p in model_proteins]
    return clr(counts), names  # NaN-aware: each cell's CLR is centred over its measured proteins
