"""Checks of saved state before it is used: JSON descriptions by key, and weights files against an architecture.

Every refusal is an :class:`omicsclip.errors.InputError` of one line that names the file and the key, e.g.
``model/model.json: preprocessing.rna_mean has 295 values for 300 genes``. :class:`Fields` reads typed values of
one JSON object; :func:`check_preprocessing` validates a saved preprocessing state (``model.json`` ->
``preprocessing``) against itself and the architecture; :func:`weight_shapes` reads the tensor shapes of a
``.safetensors`` file without loading it, and :func:`shape_mismatch` compares them with a module built on the
``meta`` device (:func:`meta_shapes`), so an architecture that does not fit its weights is refused in one line
before any memory is allocated for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omicsclip.errors import InputError

MAX_LAYERS = 64  # hidden layers of an encoder or head: a description with more is refused (not built)
MAX_MEMBERS = 4096  # ensemble members


def one_line(text: Any, limit: int = 160) -> str:
    """``text`` as at most ``limit`` characters of one line (control characters escaped, whitespace collapsed).

    Parameters
    ----------
    text
        Any value (an exception message, a name from a file); converted with ``str``.
    limit
        Longest result (longer text ends with ``...``).
    """
    s = " ".join(str(text).split())
    s = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def show(value: Any, limit: int = 40) -> str:
    """Return a short one-line ``repr`` of a value read from a file, for a refusal message."""
    return one_line(repr(value), limit)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class Fields:
    """Typed reads of the keys of one JSON object; each refusal names the file and the (dotted) key.

    Parameters
    ----------
    path
        The file the object was read from (named in refusals).
    obj
        The object.
    prefix
        Dotted path of ``obj`` inside the file (``"preprocessing."``), or ``""`` for the top level.
    lead
        Text between the file and the key in refusals (e.g. ``"invalid head description: "``).
    """

    def __init__(self, path: str | Path, obj: Any, prefix: str = "", lead: str = "") -> None:
        self.path = Path(path)
        self.prefix = prefix
        self.lead = lead
        if not isinstance(obj, Mapping):
            where = prefix.rstrip(".") or "the file"
            raise InputError(f"{self.path}: {lead}{where} must be an object, not {show(obj)}")
        self.obj = obj

    def fail(self, key: str, problem: str) -> InputError:
        """Return an :class:`InputError` ``<file>: <prefix><key> <problem>`` (to raise)."""
        return InputError(f"{self.path}: {self.lead}{self.prefix}{key} {problem}")

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (and not ``null``)."""
        return self.obj.get(key) is not None

    def raw(self, key: str) -> Any:
        """Return the value of a required ``key``, any type."""
        if key not in self.obj:
            raise self.fail(key, "is missing")
        return self.obj[key]

    def sub(self, key: str) -> Fields:
        """Return the nested object at ``key``."""
        value = self.raw(key)
        if not isinstance(value, Mapping):
            raise self.fail(key, f"must be an object, not {show(value)}")
        return Fields(self.path, value, f"{self.prefix}{key}.", self.lead)

    def text(self, key: str, choices: tuple[str, ...] | None = None) -> str:
        """Return a non-empty string, optionally one of ``choices``."""
        value = self.raw(key)
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, not {show(value)}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"is {show(value)}, expected one of {', '.join(choices)}")
        return value

    def flag(self, key: str) -> bool:
        """Return a boolean."""
        value = self.raw(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {show(value)}")
        return value

    def integer(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        """Return an integer in ``[lo, hi]``."""
        value = self.raw(key)
        if not _is_int(value):
            raise self.fail(key, f"must be an integer, not {show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(key, f"is {show(value)}, expected {_range(lo, hi)}")
        return int(value)

    def number(self, key: str, lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
               open_hi: bool = False) -> float:
        """Return a finite number in ``[lo, hi]`` (``open_lo``/``open_hi``: the bound itself excluded)."""
        value = self.raw(key)
        if not _is_num(value) or not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, not {show(value)}")
        if ((lo is not None and (value < lo or (open_lo and value == lo)))
                or (hi is not None and (value > hi or (open_hi and value == hi)))):
            raise self.fail(key, f"is {show(value)}, expected {_range(lo, hi, open_lo, open_hi)}")
        return float(value)

    def names(self, key: str, *, unique: bool = True, empty: bool = True) -> list[str]:
        """Return a list of non-empty strings (unique unless ``unique=False``)."""
        value = self.raw(key)
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of names, not {show(value)}")
        for i, v in enumerate(value):
            if not isinstance(v, str) or not v:
                raise self.fail(f"{key}[{i}]", f"must be a non-empty string, not {show(v)}")
        if not empty and not value:
            raise self.fail(key, "is empty")
        if unique and len(set(value)) != len(value):
            seen: set[str] = set()
            dup = next(v for v in value if v in seen or seen.add(v))
            raise self.fail(key, f"lists {show(dup)} more than once")
        return list(value)

    def numbers(self, key: str, length: int | None = None, what: str = "", *, positive: bool = False) -> list[float]:
        """Return a list of finite numbers (of ``length`` ``what``, e.g. ``"genes"``; ``positive``: each > 0)."""
        value = self.raw(key)
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of numbers, not {show(value)}")
        if length is not None and len(value) != length:
            raise self.fail(key, f"has {len(value)} values for {length} {what}".rstrip())
        for i, v in enumerate(value):
            if not _is_num(v) or not math.isfinite(v) or (positive and v <= 0):
                kind = "a positive" if positive else "a finite"
                raise self.fail(f"{key}[{i}]", f"must be {kind} number, not {show(v)}")
        return [float(v) for v in value]

    def ints(self, key: str, lo: int = 1, hi: int | None = None, max_len: int = MAX_LAYERS) -> list[int]:
        """Return a list of at most ``max_len`` integers in ``[lo, hi]``."""
        value = self.raw(key)
        if not isinstance(value, list) or len(value) > max_len:
            raise self.fail(key, f"must be a list of at most {max_len} integers, not {show(value)}")
        for i, v in enumerate(value):
            if not _is_int(v) or v < lo or (hi is not None and v > hi):
                raise self.fail(f"{key}[{i}]", f"is {show(v)}, expected an integer {_range(lo, hi)}")
        return [int(v) for v in value]


def _range(lo: float | None, hi: float | None, open_lo: bool = False, open_hi: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    if lo is not None:
        return f"{'>' if open_lo else '>='} {lo:g}"
    return f"{'<' if open_hi else '<='} {hi:g}"


def check_preprocessing(path: str | Path, pre: Any) -> tuple[int, int]:
    """Validate a saved preprocessing state (``model.json`` -> ``preprocessing``) by key.

    Every field that is present is checked by name (a field this function does not know is left to
    :meth:`omicsclip.model.preprocess.PreprocessState.from_dict`): name lists unique, per-feature statistics as
    long as their feature lists and finite (standard deviations positive), principal axes one row of ``genes``
    values each, protein genes among the genes, depth statistics four finite numbers.

    Parameters
    ----------
    path
        The ``model.json`` (named in refusals).
    pre
        The ``preprocessing`` object.

    Returns
    -------
    tuple of int
        The widths of the RNA and protein model inputs the state produces (to compare with the architecture).

    Raises
    ------
    InputError
        One line naming the file and the key.
    """
    f = Fields(path, pre, "preprocessing.")
    genes = f.names("genes", empty=False)
    f.names("all_genes")
    proteins = f.names("proteins", empty=False)
    f.number("target_sum", 0, open_lo=True)
    f.number("max_value", 0, open_lo=True)
    f.number("max_missing_gene_fraction", 0, 1)
    for key in pre:  # and any other limit of its kind (max_missing_protein_fraction), by name
        if isinstance(key, str) and key.startswith("max_missing_") and key.endswith("_fraction"):
            f.number(key, 0, 1)
    for key, feats, what in (("rna_mean", genes, "genes"), ("rna_std", genes, "genes"),
                             ("prot_mean", proteins, "proteins"), ("prot_std", proteins, "proteins")):
        f.raw(key)  # required (null: not scaled)
        if f.has(key):
            f.numbers(key, len(feats), what, positive=key.endswith("_std"))
    rna_width = len(genes)
    if f.has("rna_pcs"):
        rows = f.raw("rna_pcs")
        if not isinstance(rows, list) or not rows:
            raise f.fail("rna_pcs", f"must be a non-empty list of rows, not {show(rows)}")
        for i, row in enumerate(rows):
            if not isinstance(row, list):
                raise f.fail(f"rna_pcs[{i}]", f"must be a list of {len(genes)} numbers, not {show(row)}")
            Fields(path, {f"rna_pcs[{i}]": row}, "preprocessing.").numbers(f"rna_pcs[{i}]", len(genes), "genes")
        rna_width = len(rows)
        if f.has("protein_genes"):
            picked = f.names("protein_genes")
            outside = [g for g in picked if g not in set(genes)]
            if outside:
                raise f.fail("protein_genes", f"lists {show(outside[0])}, which is not one of the genes")
            rna_width += len(picked)
    depth = 0
    if f.has("depth"):
        d = f.numbers("depth", 4, "statistics (rna mean, rna std, protein mean, protein std)")
        if d[1] <= 0 or d[3] <= 0:
            raise f.fail("depth", f"standard deviations must be positive, not {show(d)}")
        depth = 1
    return rna_width + depth, len(proteins) + depth


def check_model_config(path: str | Path, config: Any) -> None:
    """Validate the ``config`` of a ``model.json``: what building the encoders and using the model reads.

    Parameters
    ----------
    path
        The ``model.json`` (named in refusals).
    config
        Its ``config`` object (``model``, ``train`` and ``preprocess`` sections).
    """
    c = Fields(path, config, "config.")
    m = c.sub("model")
    m.ints("rna_hidden")
    m.ints("prot_hidden")
    m.integer("embed_dim", 1)
    m.integer("members", 1, MAX_MEMBERS)
    m.number("dropout", 0, 1, open_hi=True)
    m.number("input_dropout", 0, 1, open_hi=True)
    t = c.sub("train")
    lo = t.number("temperature_min", 0, open_lo=True)
    hi = t.number("temperature_max", lo)
    t.number("temperature", lo, hi)
    t.flag("learnable_temperature")
    t.integer("seed")
    c.sub("preprocess").number("max_missing_gene_fraction", 0, 1)


def weight_shapes(path: str | Path, *, what: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors of a ``.safetensors`` file (header only: nothing is loaded).

    Parameters
    ----------
    path
        The file.
    what
        The advice of the refusal, e.g. ``"re-run omicsclip train"``.

    Raises
    ------
    InputError
        The file is not a readable safetensors file (truncated, garbage).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(int(n) for n in fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types (and OSError, ValueError)
        raise InputError(f"{path}: not a readable safetensors file ({one_line(exc, 100)}); {what}") from None


def meta_shapes(build: Callable[[], Any]) -> dict[str, tuple[int, ...]]:
    """Return the state-dict shapes of the module ``build()`` returns, built on the ``meta`` device (no memory).

    Exceptions of ``build`` propagate (the caller names the description that failed).
    """
    import torch

    with torch.device("meta"):
        module = build()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def shape_mismatch(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """``None`` when ``found`` (a file's tensors) fits ``expected`` (the architecture's), else a summary.

    The summary reads ``3 missing, 2 unexpected, 1 shape mismatch, e.g. rna.proj.weight [64,300] vs [32,300]``
    (the example's first shape is the file's, the second the architecture's).
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or shapes):
        return None

    def dims(s: tuple[int, ...]) -> str:
        return "[" + ",".join(map(str, s)) + "]"

    counts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected",
              f"{len(shapes)} shape mismatch{'es' if len(shapes) != 1 else ''}"]
    if shapes:
        eg = f"{one_line(shapes[0], 60)} {dims(found[shapes[0]])} vs {dims(expected[shapes[0]])}"
    elif missing:
        eg = f"missing {one_line(missing[0], 60)}"
    else:
        eg = f"unexpected {one_line(unexpected[0], 60)}"
    return f"{', '.join(counts)}, e.g. {eg}"
