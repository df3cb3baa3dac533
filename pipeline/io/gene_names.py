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
from collections.abc import Sequence

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
