"""Protein (antibody target) names: one canonical name per target, whatever the CITE-seq panel called it.

Panels name one target differently (``PD-1``, ``PD1 (CD279)``, ``CD279_TotalSeqB``, ``pd-1``), so another lab's
cells would not match a model by name. :func:`harmonise_protein_names` maps names to canonical ones with the
alias table shipped as package data (``data/protein_aliases.tsv``: ``alias``, ``canonical``), which a user
mapping file overrides (:func:`read_alias_file`); :func:`match_protein_names` renames a query's proteins to a
model's names by the same canonical key (models trained before harmonisation keep their panel's names).

Canonical is the CD number where the target has one (the HCDM designation, which the TotalSeq catalogue puts
first: ``CD279`` for "CD279 (PD-1)"), else the name panels use (``HLA-DR``, ``TIGIT``, ``TCRab``): CD numbers are
unambiguous and stable, common names collide or drift (``PD1``/``PD-1``, ``B7-H1``/``PD-L1``). CD8 is ``CD8a``
(the chain the usual clones bind, and 10x panels' name).

Names are compared by :func:`name_key`: prefixes and suffixes (``ADT_``, ``CITE-``, ``_TotalSeqB``) stripped,
lower case, Greek letters as Latin initials, separators (``- _ . , / :``, space) ignored except between two
digits (``CD45.1`` is not ``CD451``, a suffixed duplicate ``CD4-1`` not ``CD41``). ``Name (Alias)`` is looked up
whole, then by both parts (parts that disagree leave it unknown). Unknown names, isotype controls among them,
are kept exactly as given: nothing is invented.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from omicsclip.errors import InputError
from omicsclip.io.features import name_list

log = logging.getLogger(__name__)

ALIAS_TABLE = "protein_aliases.tsv"
ORIGINAL_COLUMN = "original_name"  # protein var column holding the names as the input gave them
Aliases = str | Path | Mapping[str, str] | None

_PREFIX = re.compile(r"^(?:adt|cite|ab|totalseq[-_ ]?[a-d]?)[-_.: ]+", re.I)
_SUFFIX = re.compile(r"[-_. ]+(?:totalseq[-_ ]?[a-d](?:\d{4})?|adt|cite)$", re.I)
_GREEK = str.maketrans({"α": "a", "β": "b", "γ": "g", "δ": "d", "ε": "e", "κ": "k"})
_GREEK_WORDS = re.compile(r"alpha|beta|gamma|delta|epsilon|kappa")
_SEPARATORS = re.compile(r"(?<!\d)[-_.,/: ]+|[-_.,/: ]+(?!\d)")
_PAIR = re.compile(r"^\s*(.+?)\s*\(\s*([^()]+?)\s*\)\s*$")


def strip_affixes(name: str) -> str:
    """Return ``name`` without the technology prefixes and suffixes (``ADT_``, ``_TotalSeqB``, ...)."""
    s = str(name).strip()
    while True:
        t = _SUFFIX.sub("", _PREFIX.sub("", s))
        if not t or t == s:
            return s
        s = t


def name_key(name: str) -> str:
    """Return the lookup key of a protein name: affixes stripped, lower case, separators ignored."""
    s = strip_affixes(name).translate(_GREEK).lower()
    return _SEPARATORS.sub("", _GREEK_WORDS.sub(lambda m: m.group(0)[0], s))


def _add(table: dict[str, str], name: str, canonical: str, source: str, where: str) -> None:
    key = name_key(name)
    if not key or not canonical.strip():
        raise InputError(f"{source}: {where}: empty name or canonical name")
    old = table.get(key)
    if old is not None and old != canonical:
        raise InputError(f"{source}: {where}: {name!r} maps to both {old!r} and {canonical!r}")
    table[key] = canonical


def _build(pairs: Sequence[tuple[str, str, str]], source: str) -> dict[str, str]:
    """Key -> canonical from ``(alias, canonical, where)`` rows; every canonical name maps to itself."""
    table: dict[str, str] = {}
    for alias, canonical, where in pairs:
        _add(table, canonical, canonical, source, where)
        _add(table, alias, canonical, source, where)
    return table


def _rows(text: str, source: str) -> list[tuple[str, str, str]]:
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    if not lines:
        raise InputError(f"{source}: no mappings (expected two columns: name, canonical)")
    delim = "\t" if "\t" in lines[0][1] else ","
    out = []
    for i, line in lines:
        row = [c.strip() for c in next(csv.reader(io.StringIO(line), delimiter=delim))]
        if len(row) != 2 or not all(row):
            raise InputError(f"{source}: line {i}: expected two non-empty columns (name, canonical), "
                             f"got {len(row)}: {line.strip()[:60]!r}")
        if i == lines[0][0] and row[1].lower() == "canonical":
            continue  # header
        if i == lines[0][0] and row[0].lower() in ("name", "alias", "names", "aliases"):  # a header, misspelt
            raise InputError(f"{source}: line {i} looks like a header, but its second column is {row[1]!r}: name "
                             "it 'canonical' (or leave the header out)")
        out.append((row[0], row[1], f"line {i}"))
    return out


@functools.lru_cache(maxsize=1)
def _builtin() -> tuple[tuple[str, str], ...]:
    text = files("omicsclip").joinpath("data", ALIAS_TABLE).read_text(encoding="utf-8")
    return tuple(_build(_rows(text, ALIAS_TABLE), ALIAS_TABLE).items())


def builtin_aliases() -> dict[str, str]:
    """Return the shipped alias table as ``{key: canonical}`` (see :func:`name_key`)."""
    return dict(_builtin())


def read_alias_file(path: str | Path) -> list[tuple[str, str]]:
    """Read a user mapping of protein names to canonical names.

    Parameters
    ----------
    path
        A TSV/CSV file with two columns (name, canonical; an optional header whose second column is
        ``canonical``; ``#`` comments), or a YAML file holding one mapping ``name: canonical``.

    Returns
    -------
    list of tuple
        ``(name, canonical)`` pairs in file order; a missing or malformed file is an :class:`InputError`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: protein alias file not found (ingest.protein_aliases)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the protein alias file ({exc})") from None
    if path.suffix.lower() not in (".yaml", ".yml"):
        return [(a, c) for a, c, _ in _rows(text, str(path))]
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(v, str | int | float) and not isinstance(v, bool) for v in data.values()):
        raise InputError(f"{path}: expected one YAML mapping of protein names to canonical names "
                         "(e.g. 'PD-1: CD279')")
    return [(str(k), str(v)) for k, v in data.items()]


def alias_table(aliases: Aliases = None) -> dict[str, str]:
    """Return ``{key: canonical}``: the shipped table, overridden by a user mapping.

    ``aliases``: ``None``/``""`` (the shipped table only), a mapping file (:func:`read_alias_file`) or a
    mapping ``{name: canonical}``; its names win over the shipped table's. Keys are :func:`name_key`'s.
    """
    return _tables(aliases)[0]


def _tables(aliases: Aliases) -> tuple[dict[str, str], str, list[tuple[str, str]]]:
    """:func:`alias_table`, with the user mapping's source and pairs (read once) for :func:`_unused`."""
    table = builtin_aliases()
    source, pairs = _user_pairs(aliases)
    if pairs:
        table.update(_build([(a, c, f"entry {a!r}") for a, c in pairs], source))
    return table, source, pairs


def _user_pairs(aliases: Aliases) -> tuple[str, list[tuple[str, str]]]:
    """Return a user mapping's source (for messages) and its ``(name, canonical)`` pairs (none without one)."""
    if aliases is None or (isinstance(aliases, str) and not aliases.strip()):
        return "", []
    if isinstance(aliases, Mapping):
        return "protein aliases", [(str(k), str(v)) for k, v in aliases.items()]
    return str(aliases), read_alias_file(aliases)


def _part_keys(name: str) -> list[str]:
    """Return the keys of both parts of a ``Name (Alias)`` name, or ``[]`` for any other name."""
    m = _PAIR.match(strip_affixes(name))
    return [name_key(part) for part in m.groups()] if m else []


def _unused(names: Sequence[str], source: str, pairs: list[tuple[str, str]]) -> list[str]:
    """Return the names of the user mapping's entries (``pairs``) that name none of ``names`` (a misspelt alias?).

    An entry is used when one of ``names`` is looked up by its name's key (:func:`name_key`; ``Name (Alias)``
    by either part). Entries mapping a name to itself are left out. A warning when no entry is used (the wrong
    file?).
    """
    seen = {k for n in names for k in (name_key(str(n)), *_part_keys(str(n)))}
    unused = [a for a, c in pairs if name_key(a) != name_key(c) and name_key(a) not in seen]
    if unused and len(unused) == sum(name_key(a) != name_key(c) for a, c in pairs):
        log.warning("none of the %d entries of the user alias file %s names a protein of this input (e.g. %s): "
                    "is it the file for this panel?", len(unused), source, name_list(unused, 3))
    return unused


def canonical_name(name: str, table: Mapping[str, str]) -> str | None:
    """Return the canonical name of ``name`` in ``table`` (:func:`alias_table`), or ``None`` when unknown."""
    hit = table.get(name_key(name))
    parts = [] if hit is not None else _part_keys(name)
    if not parts:
        return hit
    found = {c for c in (table.get(k) for k in parts) if c is not None}
    return found.pop() if len(found) == 1 else None


@dataclass
class ProteinNameReport:
    """What happened to a panel's protein names.

    Attributes
    ----------
    mapped
        Input name -> new name, for the names that changed.
    unknown
        Names kept as given: unknown to the alias table (:func:`harmonise_protein_names`), or matching no
        reference protein (:func:`match_protein_names`).
    collisions
        Input name -> the name it would have had, taken by another input column; kept under its own name.
    unused_aliases
        Entries of the user mapping (by name) that named no input column (a misspelt alias?), from
        :func:`harmonise_protein_names`.
    """

    mapped: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    collisions: dict[str, str] = field(default_factory=dict)
    unused_aliases: list[str] = field(default_factory=list)

    def to_uns(self) -> dict[str, Any]:
        """Return the report for a store's ``uns`` (parallel lists: names may hold ``/``, unfit as keys)."""
        return {"mapped_from": list(self.mapped), "mapped_to": list(self.mapped.values()),
                "unknown": list(self.unknown), "collisions": list(self.collisions),
                "collisions_canonical": list(self.collisions.values()), "unused_aliases": list(self.unused_aliases)}

    def describe(self, what: str = "protein names") -> str:
        """Return a one-line summary, e.g. ``protein names: 2 mapped (PD-1 -> CD279, ...), 1 unknown kept``."""
        pairs = [f"{a} -> {b}" for a, b in self.mapped.items()]
        line = f"{what}: {len(self.mapped)} mapped ({name_list(pairs, 6) or 'none'})"
        line += f", {len(self.unknown)} unknown kept as given ({name_list(self.unknown, 6) or 'none'})"
        if self.collisions:
            line += (f", {len(self.collisions)} kept under their own names because another column took their "
                     f"name ({name_list([f'{a} ~ {b}' for a, b in self.collisions.items()], 6)})")
        if self.unused_aliases:
            line += (f", {len(self.unused_aliases)} entries of the user alias file named no column "
                     f"({name_list(self.unused_aliases, 6)})")
        return line


def _reported(report: ProteinNameReport) -> ProteinNameReport:
    if report.collisions:
        log.warning("proteins %s map to names another column already has; kept under their own names",
                    name_list([f"{a} (~ {b})" for a, b in report.collisions.items()]))
    return report


def harmonise_protein_names(names: Sequence[str], aliases: Aliases = None
                            ) -> tuple[list[str], ProteinNameReport]:
    """Map a panel's protein names to canonical names.

    Parameters
    ----------
    names
        The input's protein names, in column order (unique).
    aliases
        A user mapping (file or ``{name: canonical}``) overriding the shipped table; see :func:`alias_table`.

    Returns
    -------
    names : list of str
        The new names, unique, in the same order. When several columns map to one canonical name, the column
        already named so keeps it (else the first); the others keep their input names (a warning names them):
        no column is dropped or merged.
    report : ProteinNameReport
        What was mapped, what was unknown, which columns collided.
    """
    table, source, pairs = _tables(aliases)
    names = [str(n) for n in names]
    canon = [canonical_name(n, table) for n in names]
    target = [n if c is None else c for n, c in zip(names, canon, strict=True)]
    owner: dict[str, int] = {t: i for i, (n, t) in enumerate(zip(names, target, strict=True)) if n == t}
    for i, t in enumerate(target):
        owner.setdefault(t, i)
    out = [t if owner[t] == i else n for i, (n, t) in enumerate(zip(names, target, strict=True))]
    while True:  # a user mapping onto another column's input name: the renamed one gives way
        counts = Counter(out)
        clash = [i for i, o in enumerate(out) if counts[o] > 1 and o != names[i]]
        if not clash:
            break
        for i in clash:
            out[i] = names[i]
    return out, _reported(ProteinNameReport(
        mapped={n: o for n, o in zip(names, out, strict=True) if n != o},
        unknown=[n for n, c in zip(names, canon, strict=True) if c is None],
        collisions={n: t for n, o, t in zip(names, out, target, strict=True) if o == n != t},
        unused_aliases=_unused(names, source, pairs)))


def match_protein_names(names: Sequence[str], reference: Sequence[str], aliases: Aliases = None
                        ) -> tuple[list[str], ProteinNameReport]:
    """Rename an input's proteins to a reference's (a model's) names where both have the same canonical name.

    Names the reference has exactly are kept; the others are renamed to the reference protein with the same
    canonical name (:func:`canonical_name`; unknown names compare as given), once per reference protein.

    Parameters
    ----------
    names, reference
        The input's protein names (unique, column order); the names to match, e.g. a model's proteins.
    aliases
        A user mapping overriding the shipped table (:func:`alias_table`).

    Returns
    -------
    names : list of str
        The input's names, renamed where they match, unique, in the same order.
    report : ProteinNameReport
        ``mapped`` (renamed), ``unknown`` (input proteins the reference lacks) and ``collisions`` (inputs whose
        reference protein another column already matched).
    """
    table = alias_table(aliases)  # unused entries are not reported: the names were harmonised when read
    names, ref = [str(n) for n in names], [str(r) for r in reference]
    by_canon: dict[str, str] = {}
    for r in ref:
        by_canon.setdefault(canonical_name(r, table) or r, r)
    taken = set(names) & set(ref)
    out, collisions = list(names), {}
    for i, n in enumerate(names):
        r = None if n in taken else by_canon.get(canonical_name(n, table) or n)
        if r is not None and r in taken:
            collisions[n] = r
        elif r is not None:
            out[i] = r
            taken.add(r)
    return out, _reported(ProteinNameReport(mapped={n: o for n, o in zip(names, out, strict=True) if n != o},
                                            unknown=[o for o in out if o not in set(ref)], collisions=collisions))
