"""Gene names across labs: the genome prefix some references put on every gene (``hg19_CD3E``).

Cell Ranger references built for several genomes (a human-mouse "barnyard" reference, or data re-counted
against one built that way) prefix every gene with its genome (``hg19_CD3E``, ``GRCh38_CD3E``,
``mm10___Cd3e``). Another lab's plain ``CD3E`` then matches nothing, and a model or a shared gene list sees no
gene in common. When *every* gene of an input carries the same genome prefix, the prefix says nothing about any
one gene and is removed; the input's own names stay in the gene frame's ``original_name``. An input mixing
genomes (a barnyard experiment) is left as it is: which species to keep is the user's choice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

ENSEMBL_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(?:\.\d+)?$")  # ENSG00000..., ENSMUSG00000... (optional version)
# genome builds Cell Ranger and common pipelines name their references after, then the separator(s) they add
GENOME_PREFIX = re.compile(r"^((?:hg|mm)\d{2}|GRCh\d{2}|GRCm\d{2}|GRCz\d{2}|dm\d|ce\d{2})(?:[._-]+)", re.IGNORECASE)


def genome_prefix(name: str) -> str | None:
    """Return the genome prefix of one gene name, separator included (``"hg19_"``), or ``None``."""
    m = GENOME_PREFIX.match(name)
    return m.group(0) if m and len(name) > m.end() else None


def strip_genome_prefix(names: Sequence[str]) -> tuple[list[str], str | None]:
    """Remove a genome prefix shared by every name.

    Parameters
    ----------
    names
        Gene names of one input.

    Returns
    -------
    (names, prefix)
        The names without the prefix and the prefix removed, or the names unchanged and ``None`` when not every
        name carries the same prefix (no prefix, or several genomes).
    """
    names = [str(n) for n in names]
    if not names:
        return names, None
    first = genome_prefix(names[0])
    if first is None or any(not n.startswith(first) or len(n) == len(first) for n in names):
        return names, None
    return [n[len(first):] for n in names], first


def _ids_share(names: set[str]) -> float:
    return sum(bool(ENSEMBL_ID.match(n)) for n in names) / max(len(names), 1)


def mismatch_hint(ours: Iterable[str], theirs: Iterable[str]) -> str:
    """Say why two gene sets that should overlap barely do, or return ``""``.

    Two cases are recognised, each from the names alone: one side names genes by Ensembl ID and the other by
    symbol; and names that match only when case is ignored (mouse ``Cd3e`` against human ``CD3E``, or one
    dataset upper-cased). The text starts with ``"; "`` so it can end an error message.
    """
    a, b = {str(n) for n in ours}, {str(n) for n in theirs}
    if not a or not b:
        return ""
    ids_a, ids_b = _ids_share(a), _ids_share(b)
    if max(ids_a, ids_b) > 0.5 and min(ids_a, ids_b) < 0.1:
        return ("; one side names genes by Ensembl ID (e.g. "
                f"{next(n for n in sorted(a if ids_a > ids_b else b) if ENSEMBL_ID.match(n))}), the other by "
                "symbol: give both the same kind of gene name (e.g. set an AnnData's var_names to its symbols)")
    exact = len(a & b)
    folded_a = {n.casefold() for n in a}
    folded = [n for n in sorted(b) if n.casefold() in folded_a and n not in a]
    if len(folded) > max(10, 2 * exact):
        lower = {n.casefold(): n for n in a}
        return (f"; {len(folded)} more match when case is ignored (e.g. {lower[folded[0].casefold()]} / "
                f"{folded[0]}): mouse and human symbols, or one dataset's names re-cased; map both to one "
                "species' symbols first")
    return ""
