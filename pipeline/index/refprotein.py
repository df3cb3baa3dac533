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

_CLR_CHUNK = 65_536  # reference cells per CLR step


def _read_counts(store: Path) -> tuple[pd.Index, list[str], np.ndarray]:
    """Return barcodes, protein names and protein counts of a store or input (NaN: unmeasured, pooled stores)."""
    from omicsclip.io.formats import detect_format

    if detect_format([store]) == "zarr":  # a paired store: read through iter_store, which masks pooled panels
        from omicsclip.io.store import iter_store, store_info

        info = store_info(store)
        counts = np.empty((len(info["obs"]), len(info["proteins"])), np.float32)  # filled: no list + concatenate
        for _, prot, rows in iter_store(store, 50_000):
            counts[rows] = prot
        return pd.Index(info["obs"].index.astype(str)), [str(p) for p in info["proteins"].index], counts
    from omicsclip.io.readers import open_input

    with open_input([store], require="any", modality="prot") as src:
        if src.proteins is None:
            raise InputError(f"{store}: no protein counts to store with the index")
        parts = [np.asarray(c.prot, np.float32) for c in src.iter_chunks(50_000)]
        return pd.Index(src.barcodes).astype(str), [str(n) for n in src.proteins], np.concatenate(parts)


def reference_protein(store: Path, ids: pd.Index, model_proteins: Sequence[str] | None, *,
                      out: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Return the CLR protein of cells ``ids`` from a paired store (or any input), on the model's protein panel.

    Parameters
    ----------
    store
        The paired store (or any input) holding the reference cells' protein counts.
    ids
        The reference cell ids, in index order.
    model_proteins
        The model's proteins (the stored columns); ``None``: the store's.
    out
        Write the CLR protein to this ``.npy`` file and return it memory-mapped (read-only), so it is not held
        in memory while the indices are built; ``None``: return it in memory.

    Returns
    -------
    tuple
        ``(n x P float32 CLR protein, NaN where the cell's panel lacked the protein; protein names)``.
    """
    from omicsclip.model.preprocess import clr

    barcodes, names, counts = _read_counts(Path(store))
    pos = barcodes.get_indexer(ids)
    if (pos < 0).any():
        missing = ids[pos < 0]
        raise InputError(f"{store}: {len(missing)} embedded cells are not in this store "
                         f"(e.g. {', '.join(map(str, missing[:3]))})")
    col = np.arange(len(names))
    if model_proteins is not None:
        col = pd.Index(names).get_indexer(list(model_proteins))
        if (col < 0).any():
            raise InputError(f"{store}: lacks the model's proteins "
                             f"{', '.join(p for p, c in zip(model_proteins, col, strict=True) if c < 0)}")
        names = [str(p) for p in model_proteins]
    # by row chunks: the CLR's float64 temporaries stay small beside the counts and the result (atlas scale)
    shape = (len(pos), len(col))
    result = np.empty(shape, np.float32) if out is None else np.lib.format.open_memmap(out, "w+", np.float32, shape)
    for start in range(0, len(pos), _CLR_CHUNK):
        rows = pos[start:start + _CLR_CHUNK]
        # outside a cell's panel (pooled store): NaN, unmeasured rather than zero; NaN-aware CLR centred over
        # each cell's measured proteins
        result[start:start + len(rows)] = clr(counts[np.ix_(rows, col)])
    if out is None:
        return result, names
    result.flush()
    del result
    return np.load(out, mmap_mode="r"), names
