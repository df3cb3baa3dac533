"""Gene sets shared across datasets: ``preprocess.genes`` and ``omicsclip train --genes-from``.

A reference meant to map other labs' cells must be trained on genes those cells have. ``preprocess.genes`` names
them (a list, or a file with one gene per line); ``--genes-from`` reads the gene names of one or more inputs or
stores (no counts are loaded) and keeps the genes of the training store that every one of them has.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from omicsclip.errors import InputError
from omicsclip.io.gene_names import mismatch_hint

log = logging.getLogger(__name__)


def gene_names_of(path: str | Path, *, fmt: str = "auto") -> list[str]:
    """Return the gene names of an input (any format ``omicsclip ingest`` reads) or of a paired store.

    Only names are read, not counts. Duplicate names are suffixed the way AnnData does, as ingest would with
    ``--make-unique``.
    """
    return _gene_names(path, fmt)[0]


def _gene_names(path: str | Path, fmt: str = "auto") -> tuple[list[str], int]:
    """:func:`gene_names_of`, and how many of the names are repeats that were suffixed."""
    from omicsclip.io.readers import open_input

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: not found (--genes-from)")
    with open_input([path], fmt, require="any", pairing="intersect", make_unique=True,
                    allow_normalized=True) as src:
        if src.genes is None or len(src.genes) == 0:
            raise InputError(f"{path}: has no RNA genes to take a gene set from")
        return [str(g) for g in src.genes], int(src.info.get("rna_names_suffixed", 0))


def read_gene_list(path: str | Path) -> list[str]:
    """Read a gene list file: one gene per line; blank lines and ``#`` comments are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"preprocess.genes: cannot read gene list {path} ({exc.__class__.__name__})") from None
    genes = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    genes = [g for g in genes if g]
    if not genes:
        raise InputError(f"preprocess.genes: gene list {path} is empty")
    return genes


def resolve_genes(spec: str | Sequence[str] | None, store_genes: Sequence[str],
                  genes_from: Sequence[str | Path] = ()) -> list[str] | None:
    """Return the genes the model may use, in store order, or ``None`` for all of the store's genes.

    Parameters
    ----------
    spec
        ``preprocess.genes``: a list of genes, a path to a gene list file, or empty (no restriction).
    store_genes
        The training store's genes.
    genes_from
        Inputs or stores whose genes the model must share (``--genes-from``).

    Raises
    ------
    InputError
        An empty result, or a gene list whose genes are mostly not in the store (a likely mix-up of gene IDs and
        symbols).
    """
    store_genes = [str(g) for g in store_genes]
    keep = set(store_genes)
    restricted = False
    if isinstance(spec, str | Path) and str(spec):
        spec = read_gene_list(spec)
    if spec:
        wanted = {str(g) for g in spec}
        found = wanted & keep
        if len(found) < 0.5 * len(wanted):
            hint = mismatch_hint(store_genes, wanted) or "; are they the same kind of gene name?"
            raise InputError(f"preprocess.genes: only {len(found)} of its {len(wanted)} genes are in the training "
                             f"store (e.g. {', '.join(sorted(wanted - keep)[:3])}){hint}")
        if len(found) < len(wanted):
            log.warning("preprocess.genes: %d of its %d genes are not in the training store",
                        len(wanted) - len(found), len(wanted))
        keep, restricted = found, True
    for path in genes_from:
        listed, suffixed = _gene_names(path)
        names = set(listed)
        before = len(keep)
        keep &= names
        restricted = True
        hint = mismatch_hint(store_genes, names)
        if not keep:
            so_far = " and the genes kept so far" if before < len(store_genes) else ""
            raise InputError(f"--genes-from {path}: shares no gene with the training store{so_far}"
                             + (hint or f" (its genes: e.g. {', '.join(listed[:3])})"))
        log.log(logging.WARNING if hint else logging.INFO, "--genes-from %s: %d genes%s, %d of %d shared%s", path,
                len(names) - suffixed, f" (and {suffixed} repeated name(s), suffixed -1, -2, ... as "
                "ingest --make-unique does)" if suffixed else "", len(keep), before, hint)
    if not restricted:
        return None
    return [g for g in store_genes if g in keep]
