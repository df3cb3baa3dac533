"""Fuzzed inputs for every ingest reader (issue #12): ``omicsclip ingest`` exits 0 with the input's counts in the
store, or 2 with one line and nothing left behind.

Each test draws a small paired data set (shapes from 0, value dtypes from int to NaN, names with duplicates,
control characters, unicode and great length), writes it in one input format, optionally damages it (truncation
at a random offset, overwritten bytes, random content, a missing part, barcodes that differ between the files)
and runs the CLI in-process (:func:`fuzzing.invoke`). The cases are counted per format through
:func:`fuzzing.check_contract` (``bench/fuzz.py`` runs them under the long profile).
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fuzzing import check_contract, invoke, listing
from hypothesis import given, reject
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

KINDS = ("int", "uint", "float", "frac", "negative", "nan", "inf", "bool", "zero")
CORRUPTIONS = ("none", "none", "none", "none", "truncate", "flip", "random", "drop")  # half of the cases intact
ISOTYPE = ["(?i)isotype", "(?i)^igg", "(?i)^mouse[_-]?igg", "(?i)^rat[_-]?igg", "(?i)ctrl"]  # configs/default.yaml
HTO = ["(?i)^hto[_-]?\\d", "(?i)hashtag"]

# ---- drawn data --------------------------------------------------------------------------------------------
_HOSTILE = st.one_of(
    st.text(max_size=6),  # any code point: control characters, unicode, NUL
    st.text(st.sampled_from(list(',\t"\'\\ \r\n\x00\x0b\x1c\x85\u2028#%;')), max_size=4),
    st.just(""),
    st.builds(lambda k, t: "L" * k + t, st.integers(100, 400), st.text(max_size=3)),
    st.sampled_from(["NA", "nan", "NaN", "inf", "-1", "1e5", "IgG1_ctrl", "HTO_1", "__rowname__", "_index"]),
)


@st.composite
def names(draw, prefix: str, n: int, modes: tuple[str, ...] = ("plain", "plain", "hostile", "duplicate")
          ) -> list[str]:
    """``n`` names: plain, with hostile ones mixed in, or with a duplicate."""
    out = [f"{prefix}{i}" for i in range(n)]
    mode = draw(st.sampled_from(modes))
    if mode == "hostile" and n:
        for i in draw(st.sets(st.integers(0, n - 1), min_size=1)):
            out[i] = draw(_HOSTILE)
    elif mode == "duplicate" and n >= 2:
        i, j = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
        out[j] = out[i]
    return out


def values(draw, kind: str, shape: tuple[int, int]) -> np.ndarray:
    """A count matrix of ``kind`` (valid: int, uint, float, bool, zero; invalid: frac, negative, nan, inf)."""
    base = draw(arrays(np.int64, shape, elements=st.integers(0, 40)))
    if kind == "uint":
        return base.astype(np.uint16)
    if kind == "bool":
        return base > 10
    if kind == "zero":
        return np.zeros(shape, np.int32)
    if kind == "int":
        return base.astype(np.int32)
    m = base.astype(np.float64)
    if base.size and kind != "float":
        i, j = draw(st.integers(0, shape[0] - 1)), draw(st.integers(0, shape[1] - 1))
        m[i, j] = {"frac": m[i, j] + 0.25, "negative": -1.0 - m[i, j], "nan": np.nan,
                   "inf": draw(st.sampled_from([np.inf, -np.inf]))}[kind]
    return m


@dataclass
class Case:
    """Paired counts as drawn; ``prot_barcodes`` may differ from ``barcodes`` (pairing by barcode)."""

    rna: np.ndarray
    prot: np.ndarray
    barcodes: list[str]
    genes: list[str]
    proteins: list[str]
    prot_barcodes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prot_barcodes = self.prot_barcodes or list(self.barcodes)


@st.composite
def cite_cases(draw) -> Case:
    """Half the cases are counts an input may hold (shapes from 1, integer values, unique names)."""
    lo, kinds, modes = 0, KINDS, ("plain", "plain", "hostile", "duplicate")
    if draw(st.booleans()):
        lo, kinds, modes = 1, ("int", "uint", "float"), ("plain", "plain", "hostile")
    n = draw(st.integers(lo, 6))
    g, p = draw(st.integers(lo, 5)), draw(st.integers(lo, 4))
    kind_r, kind_p = draw(st.sampled_from(kinds)), draw(st.sampled_from(kinds))
    return Case(values(draw, kind_r, (n, g)), values(draw, kind_p, (n, p)), draw(names("AAAC-", n, modes)),
                draw(names("GENE", g, modes)), draw(names("CD", p, modes)))


def no_nul(c: Case) -> Case:
    """HDF5 strings end at NUL: names as such files can hold them."""
    fix = lambda xs: [x.replace("\x00", "") for x in xs]  # noqa: E731
    return replace(c, barcodes=fix(c.barcodes), genes=fix(c.genes), proteins=fix(c.proteins),
                   prot_barcodes=fix(c.prot_barcodes))


def misalign(data, c: Case) -> tuple[Case, str]:
    """Protein cells in another order (still paired), or a barcode that only one file has."""
    how = data.draw(st.sampled_from(["same", "same", "shuffle", "rename"]))
    n = len(c.barcodes)
    if how == "shuffle" and n > 1:
        order = data.draw(st.permutations(range(n)))
        return replace(c, prot=c.prot[list(order)], prot_barcodes=[c.barcodes[i] for i in order]), how
    if how == "rename" and n:
        i = data.draw(st.integers(0, n - 1))
        pb = list(c.barcodes)
        pb[i] = pb[i] + "-other"
        return replace(c, prot_barcodes=pb), how
    return c, "same"


# ---- damage ------------------------------------------------------------------------------------------------
def files_under(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        out += sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return out


def damage(data, how: str, paths: list[Path], drop) -> None:
    """Apply ``how`` to one of the input files; ``drop(data)`` removes a required part (format-specific)."""
    files = files_under(paths)
    if how == "drop":
        drop(data)
        return
    f = data.draw(st.sampled_from(files))
    raw = bytearray(f.read_bytes())
    if how == "truncate":
        f.write_bytes(bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))]))
    elif how == "flip" and raw:
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        f.write_bytes(bytes(raw))
    elif how == "random":
        f.write_bytes(data.draw(st.binary(max_size=300)))


def drop_hdf5(data, path: Path, keys: list[str]) -> None:
    with h5py.File(path, "a") as f:
        present = [k for k in keys if k in f]
        if present:
            del f[data.draw(st.sampled_from(present))]


# ---- running and checking ----------------------------------------------------------------------------------
def expected(c: Case, *, intersect: bool, make_unique: bool, allow_normalized: bool):
    """(barcodes, genes, proteins, rna, prot) the store must hold, or None when the input must be refused."""
    from anndata.utils import make_index_unique

    from omicsclip.io.features import match_names

    pos = {b: i for i, b in enumerate(c.prot_barcodes)}
    cells = [i for i, b in enumerate(c.barcodes) if b in pos]
    if len(cells) != len(c.barcodes) and not intersect:
        return None
    drop = match_names(c.proteins, ISOTYPE) | match_names(c.proteins, HTO)
    keep = np.flatnonzero(~drop)
    rna = c.rna[cells].astype(np.float64)
    prot = c.prot[[pos[c.barcodes[i]] for i in cells]][:, keep].astype(np.float64)
    genes, proteins = pd.Index(c.genes), pd.Index(c.proteins).take(keep)
    dup = genes.has_duplicates or proteins.has_duplicates
    if make_unique:
        genes, proteins = make_index_unique(genes), make_index_unique(proteins)
    values_ok = all(np.all(np.isfinite(m)) and np.all(m >= 0) and (allow_normalized or np.all(m == np.rint(m)))
                    for m in (rna, prot))
    if (not cells or not len(genes) or not len(proteins) or (dup and not make_unique) or not values_ok
            or rna.sum() == 0 or prot.sum() == 0 or pd.Index(c.barcodes).has_duplicates
            or pd.Index(c.prot_barcodes).has_duplicates or np.abs(np.r_[rna.ravel(), prot.ravel()]).max() >= 2**24):
        return None
    return [c.barcodes[i] for i in cells], list(genes), list(proteins), rna, prot


def run_case(entry: str, folder: Path, inputs: list[Path], c: Case, *, damaged: bool, flags: list[str],
             names_exact: bool = True) -> int:
    """Run ``omicsclip ingest``, check the contract, and on exit 0 check the store."""
    from omicsclip.io.store import read_store, store_info

    out = folder / "s.zarr"
    before = listing(folder)
    old = tempfile.tempdir
    tempfile.tempdir = str(folder / "tmp")  # readers' temporary files must go too: they are under ``folder``
    try:
        result = invoke(["ingest", *inputs, "--out", out, *flags])
    finally:
        tempfile.tempdir = old
    code = check_contract(entry, result, folder, before, [out])
    want = expected(c, intersect="intersect" in flags, make_unique="--make-unique" in flags,
                    allow_normalized="--allow-normalized" in flags)
    if code == 2:
        assert damaged or want is None, f"{entry}: valid input refused: {result.stderr}"
        return code
    assert listing(folder / "tmp") == set(), f"{entry}: temporary files left: {listing(folder / 'tmp')}"
    d, info = read_store(out), store_info(out)
    n = len(d.obs)
    assert n > 0
    assert d.rna.shape == (n, len(d.genes))
    assert d.prot.shape == (n, len(d.proteins))
    assert len(info["obs"]) == n
    for m in (d.rna.data, d.prot):
        assert np.all(np.isfinite(m))
        assert np.all(m >= 0)
        assert "--allow-normalized" in flags or np.all(m == np.rint(m))
    if damaged:
        return code
    assert want is not None, f"{entry}: invalid input accepted: {c}"
    barcodes, genes, proteins, rna, prot = want
    if names_exact:
        assert d.barcodes == barcodes
        assert d.gene_names == genes
        assert d.protein_names == proteins
    np.testing.assert_array_equal(d.rna.toarray(), rna.astype(np.float32))
    np.testing.assert_array_equal(d.prot, prot.astype(np.float32))
    return code


def draw_flags(data, *extra: str) -> list[str]:
    flags = []
    for flag in ("--allow-normalized", "--make-unique", *extra):
        if data.draw(st.booleans()):
            flags.append(flag)
    if data.draw(st.booleans()):
        flags += ["--pairing", "intersect"]
    return flags


@pytest.fixture
def case_dir(tmp_path, monkeypatch):
    """A fresh folder per Hypothesis example (``tmp_path`` is shared by all examples of a test)."""
    from omicsclip.io import formats

    monkeypatch.setattr(formats, "PROBE_SECONDS", 3.0)  # a damaged HDF5 file that hangs the library: 3 s, not 30
    made = []

    def make() -> Path:
        d = Path(tempfile.mkdtemp(dir=tmp_path))
        (d / "tmp").mkdir()
        made.append(d)
        return d

    yield make
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def cleanup(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# ---- CSV / TSV ---------------------------------------------------------------------------------------------
def _cell(v) -> str:
    if isinstance(v, np.bool_ | bool):
        return str(bool(v))
    if isinstance(v, np.floating) and float(v).is_integer():
        return str(int(v)) if np.isfinite(v) else str(v)
    return str(v)


def write_table(path: Path, rows: list[str], cols: list[str], m: np.ndarray, *, genes_in_rows: bool) -> None:
    import csv
    import io

    if genes_in_rows:
        rows, cols, m = cols, rows, m.T
    sep = "\t" if ".tsv" in path.name else ","
    buf = io.StringIO(newline="")
    w = csv.writer(buf, delimiter=sep, lineterminator="\n")
    w.writerow(["barcode" if not genes_in_rows else "feature", *cols])
    for name, row in zip(rows, m, strict=True):
        w.writerow([name, *(_cell(v) for v in row)])
    raw = buf.getvalue().encode("utf-8")
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


@pytest.mark.fuzz
@given(c=cite_cases(), data=st.data())
def test_fuzz_csv(case_dir, c, data):
    d = case_dir()
    c, _how = misalign(data, c)
    ext = data.draw(st.sampled_from([".csv", ".tsv", ".csv.gz", ".txt"]))
    genes_in_rows = data.draw(st.booleans())
    rna, prot = d / f"rna{ext}", d / f"prot{ext}"
    write_table(rna, c.barcodes, c.genes, c.rna, genes_in_rows=genes_in_rows)
    write_table(prot, c.prot_barcodes, c.proteins, c.prot, genes_in_rows=genes_in_rows)
    how = data.draw(st.sampled_from(CORRUPTIONS))

    def drop(data) -> None:  # a table without one of its lines (header or a row)
        f = data.draw(st.sampled_from([rna, prot]))
        raw = f.read_bytes()
        text = (gzip.decompress(raw) if f.name.endswith(".gz") else raw).decode().split("\n")
        del text[data.draw(st.integers(0, len(text) - 1))]
        out = "\n".join(text).encode()
        f.write_bytes(gzip.compress(out) if f.name.endswith(".gz") else out)

    damage(data, how, [rna, prot], drop) if how != "none" else None
    flags = draw_flags(data) + (["--genes-in-rows"] if genes_in_rows else [])
    # NUL is not text; a .txt table's separator is guessed from the header, which names with both can mislead
    header = c.genes + c.proteins if not genes_in_rows else c.barcodes + c.prot_barcodes
    exact = not any("\x00" in x for x in c.barcodes + c.prot_barcodes + c.genes + c.proteins) and (
        ext != ".txt" or not any("," in x or "\t" in x for x in header))
    run_case("ingest:csv", d, [rna, prot], c, damaged=how != "none" or not exact, flags=flags)
    cleanup(d)


# ---- Cell Ranger matrix folder ------------------------------------------------------------------------------
def write_mtx(folder: Path, c: Case, *, gz: bool, shuffle: bool, which: str = "both", data=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"rna": (c.rna, c.genes, "Gene Expression"), "prot": (c.prot, c.proteins, "Antibody Capture")}
    use = ["rna", "prot"] if which == "both" else [which]
    m = np.hstack([parts[k][0].astype(np.float64) for k in use]) if use else np.zeros((len(c.barcodes), 0))
    feats = [(n, t) for k in use for n, t in zip(parts[k][1], [parts[k][2]] * len(parts[k][1]), strict=True)]
    barcodes = c.barcodes if which != "prot" else c.prot_barcodes
    coo = sp.coo_matrix(m)
    r, k, v = coo.col, coo.row, coo.data  # features x barcodes: feature = column of m, barcode = row
    order = np.arange(len(v))
    if shuffle and len(v) > 1:
        order = np.array(data.draw(st.permutations(range(len(v)))))
    lines = ["%%MatrixMarket matrix coordinate " + ("integer" if m.dtype.kind in "iub" else "real") + " general",
             f"{len(feats)} {len(barcodes)} {len(v)}"]
    lines += [f"{r[i] + 1} {k[i] + 1} {_cell(np.float64(v[i]))}" for i in order]
    files = {"matrix.mtx": "\n".join(lines) + "\n",
             "features.tsv": "".join(f"ID{i}\t{n}\t{t}\n" for i, (n, t) in enumerate(feats)),
             "barcodes.tsv": "".join(f"{b}\n" for b in barcodes)}
    for name, text in files.items():
        raw = text.encode("utf-8")
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder


def tsv_safe(xs: list[str]) -> bool:
    """Names a Cell Ranger TSV holds unchanged (no tab, newline or NUL; not blank)."""
    return all(x.strip() and not any(ch in x for ch in "\t\n\r\x00") for x in xs)


@pytest.mark.fuzz
@given(c=cite_cases(), data=st.data())
def test_fuzz_10x_mtx(case_dir, c, data):
    d = case_dir()
    gz, shuffle, pair = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
    if pair:  # GEO style: one folder per modality
        c, _how = misalign(data, c)
        inputs = [write_mtx(d / "rna", c, gz=gz, shuffle=shuffle, which="rna", data=data),
                  write_mtx(d / "adt", c, gz=gz, shuffle=shuffle, which="prot", data=data)]
    else:
        inputs = [write_mtx(d / "filtered_feature_bc_matrix", c, gz=gz, shuffle=shuffle, data=data)]
    how = data.draw(st.sampled_from(CORRUPTIONS))
    damage(data, how, inputs, lambda data: data.draw(st.sampled_from(files_under(inputs))).unlink())
    exact = tsv_safe(c.barcodes + c.prot_barcodes + c.genes + c.proteins)
    run_case("ingest:10x-mtx", d, inputs, c, damaged=how != "none" or not exact, flags=draw_flags(data))
    cleanup(d)


# ---- Cell Ranger .h5 ---------------------------------------------------------------------------------------
def _bytes(xs: list[str]) -> np.ndarray:
    return np.array([x.encode("utf-8") for x in xs], dtype=object).astype("S") if xs else np.array([], "S1")


def write_10x_h5(path: Path, c: Case, dtype, types: list[str] | None = None) -> Path:
    m = sp.csr_matrix(np.hstack([c.rna.astype(np.float64), c.prot.astype(np.float64)]))
    types = types or ["Gene Expression"] * len(c.genes) + ["Antibody Capture"] * len(c.proteins)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("data", data=m.data.astype(dtype))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([m.shape[1], m.shape[0]], dtype=np.int32))
        g.create_dataset("barcodes", data=_bytes(c.barcodes))
        fg = g.create_group("features")
        fg.create_dataset("id", data=_bytes([f"ID{i}" for i in range(m.shape[1])]))
        fg.create_dataset("name", data=_bytes(c.genes + c.proteins))
        fg.create_dataset("feature_type", data=_bytes(types))
    return path


@pytest.mark.fuzz
@given(c=cite_cases(), data=st.data())
def test_fuzz_10x_h5(case_dir, c, data):
    d = case_dir()
    c = no_nul(c)
    kinds = {c.rna.dtype.kind, c.prot.dtype.kind}
    dtype = (np.bool_ if kinds == {"b"} else np.uint32 if kinds <= {"u", "b"} else np.int32 if kinds <= set("iub")
             else np.float64)
    path = d / data.draw(st.sampled_from(["sample.h5", "sample_filtered_feature_bc_matrix.h5", "cells"]))
    write_10x_h5(path, c, dtype)
    how = data.draw(st.sampled_from(CORRUPTIONS))
    keys = [f"matrix/{k}" for k in ("data", "indices", "indptr", "shape", "barcodes", "features",
                                    "features/name", "features/feature_type")]
    damage(data, how, [path], lambda data: drop_hdf5(data, path, keys))
    # trailing NULs are lost by fixed-length strings; the rest must come back as written
    exact = all(not x.endswith("\x00") for x in c.barcodes + c.genes + c.proteins)
    flags = draw_flags(data) + (["--format", "10x-h5"] if path.suffix != ".h5" else [])
    run_case("ingest:10x-h5", d, [path], c, damaged=how != "none" or not exact, flags=flags)
    cleanup(d)


# ---- AnnData: .h5ad (protein in obsm), a pair of .h5ad, .h5mu ------------------------------------------------
def matrix(data, m: np.ndarray):
    layout = data.draw(st.sampled_from(["dense", "csr", "csc"]))
    return m if layout == "dense" else (sp.csr_matrix(m) if layout == "csr" else sp.csc_matrix(m))


def anndata(data, m: np.ndarray, obs: list[str], var: list[str]):
    import anndata as ad

    return ad.AnnData(X=matrix(data, m), obs=pd.DataFrame(index=pd.Index(obs, dtype=object)),
                      var=pd.DataFrame(index=pd.Index(var, dtype=object)))


def write_or_reject(write) -> None:
    """Inputs anndata/mudata themselves cannot write (e.g. duplicate DataFrame columns) are not reader cases."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write()
    except Exception:  # noqa: BLE001
        reject()


@pytest.mark.fuzz
@given(c=cite_cases(), data=st.data())
def test_fuzz_h5ad(case_dir, c, data):
    d = case_dir()
    c = no_nul(c)
    path = d / "cells.h5ad"
    a = anndata(data, c.rna, c.barcodes, c.genes)
    layout = data.draw(st.sampled_from(["frame", "array", "sparse"]))
    key = data.draw(st.sampled_from(["protein", "protein_expression", "adt"]))
    if layout == "frame":
        a.obsm[key] = pd.DataFrame(c.prot, index=a.obs_names, columns=pd.Index(c.proteins, dtype=object))
    else:
        a.obsm[key] = c.prot if layout == "array" else sp.csr_matrix(c.prot)
        a.uns["protein_names"] = np.array(c.proteins, dtype=object)
    write_or_reject(lambda: a.write_h5ad(path))
    if layout == "frame":
        with h5py.File(path, "r") as f:  # anndata stores some frames (a column named "") as a bare array
            if f[f"obsm/{key}"].attrs.get("encoding-type") != "dataframe":
                reject()
    how = data.draw(st.sampled_from(CORRUPTIONS))
    keys = ["X", "obs", "var", f"obsm/{key}", "obs/_index", "var/_index", "X/indptr", "X/data",
            "uns/protein_names"]
    damage(data, how, [path], lambda data: drop_hdf5(data, path, keys))
    run_case("ingest:h5ad", d, [path], c, damaged=how != "none", flags=draw_flags(data))
    cleanup(d)


@pytest.mark.fuzz
@given(c=cite_cases(), data=st.data())
def test_fuzz_h5ad_pair(case_dir, c, data):
    d = case_dir()
    c, _how = misalign(data, no_nul(c))
    rna, prot = d / "rna.h5ad", d / "prot.h5ad"
    write_or_reject(lambda: anndata(data, c.rna, c.barcodes, c.genes).write_h5ad(rna))
    write_or_reject(lambda: anndata(data, c.prot, c.prot_barcodes, c.proteins).write_h5ad(prot))
    how = data.draw(st.sampled_from(CORRUPTIONS))

    def drop(data) -> None:
        drop_hdf5(data, data.draw(st.sampled_from([rna, prot])), ["X", "obs", "var", "X/indices", "obs/_index"])

    damage(data, how, [rna, prot], drop)
    run_case("ingest:h5ad-pair", d, [rna, prot], c, damaged=how != "none", flags=draw_flags(data))
    cleanup(d)


@pytest.mark.fuzz
@given(c=cite_cases(), data=st.data())
def test_fuzz_h5mu(case_dir, c, data):
    import mudata as md

    d = case_dir()
    c, _how = misalign(data, no_nul(c))
    path = d / "cells.h5mu"
    mods = {"rna": anndata(data, c.rna, c.barcodes, c.genes),
            "prot": anndata(data, c.prot, c.prot_barcodes, c.proteins)}
    write_or_reject(lambda: md.MuData(mods).write_h5mu(path))
    how = data.draw(st.sampled_from(CORRUPTIONS))
    keys = ["mod", "mod/rna", "mod/prot", "mod/prot/X", "mod/rna/obs", "mod/prot/var", "mod/rna/X/indptr", "obs"]
    damage(data, how, [path], lambda data: drop_hdf5(data, path, keys))
    run_case("ingest:h5mu", d, [path], c, damaged=how != "none", flags=draw_flags(data))
    cleanup(d)


# ---- a paired store (.zarr) as input ------------------------------------------------------------------------
@pytest.mark.fuzz
@given(c=cite_cases(), data=st.data())
def test_fuzz_zarr_store(case_dir, c, data):
    from omicsclip.io.paired import PairedData
    from omicsclip.io.store import write_store

    d = case_dir()
    path = d / "in.zarr"
    pd_ = PairedData(rna=sp.csr_matrix(c.rna.astype(np.float32)), prot=c.prot.astype(np.float32),
                     obs=pd.DataFrame(index=pd.Index(c.barcodes, dtype=object)),
                     genes=pd.DataFrame(index=pd.Index(c.genes, dtype=object)),
                     proteins=pd.DataFrame(index=pd.Index(c.proteins, dtype=object)))
    write_or_reject(lambda: write_store(pd_, path))
    how = data.draw(st.sampled_from(CORRUPTIONS))
    damage(data, how, [path], lambda data: data.draw(st.sampled_from(files_under([path]))).unlink())
    # the store holds float32 values: what went in is what must come out
    c = replace(c, rna=c.rna.astype(np.float32), prot=c.prot.astype(np.float32))
    run_case("ingest:zarr", d, [path], c, damaged=how != "none", flags=draw_flags(data))
    cleanup(d)


# ---- cases the fuzzer found, kept as plain tests (not marked fuzz) ---------------------------------------
def _refusal(args: list) -> str:
    result = invoke(["ingest", *args])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("omicsclip: error:")
    return lines[-1]


def test_parser_message_spanning_lines_is_one_line(tmp_path):
    c = Case(np.ones((3, 2), np.int32), np.ones((3, 1), np.int32), ["A", "B\tx", "C"], ["G0", "G1"], ["CD3"])
    folder = write_mtx(tmp_path / "m", c, gz=False, shuffle=False)
    (folder / "barcodes.tsv").write_text("A\nB\tx\nC\n")
    msg = _refusal([folder, "--out", tmp_path / "s.zarr"])
    assert "barcodes.tsv: cannot read" in msg
    assert "Expected 1 fields in line 2, saw 2" in msg


def test_quotes_in_cell_ranger_names_are_literal(tmp_path):
    c = Case(np.ones((3, 2), np.int32), np.ones((3, 1), np.int32), ['"A', 'B"', "C"], ['"G0', "G1"], ["CD3"])
    folder = write_mtx(tmp_path / "m", c, gz=True, shuffle=False)
    result = invoke(["ingest", folder, "--out", tmp_path / "s.zarr"])
    assert result.exit_code == 0, result.stderr
    from omicsclip.io.store import read_store

    d = read_store(tmp_path / "s.zarr")
    assert d.barcodes == ['"A', 'B"', "C"]
    assert d.gene_names == ['"G0', "G1"]


def test_hdf5_damaged_anywhere_is_an_input_error(tmp_path, monkeypatch):
    """16 zero bytes over every 256-byte window of an .h5ad: one-line InputErrors only (h5py raised RuntimeError
    for a broken heap, and hung in C for a zeroed attribute header)."""
    from cite_files import make_cite, write_h5ad

    from omicsclip.errors import InputError
    from omicsclip.io import formats
    from omicsclip.io.readers import open_input

    monkeypatch.setattr(formats, "PROBE_SECONDS", 1.0)
    src = write_h5ad(make_cite(n_cells=8, n_genes=6), tmp_path / "x.h5ad")
    good = src.read_bytes()
    for off in range(0, len(good), 256):
        src.write_bytes(good[:off] + b"\0" * 16 + good[off + 16:])
        try:
            with open_input([src]) as s:
                for _ in s.iter_chunks(3):
                    pass
        except InputError as exc:
            msg = str(exc)
        else:
            continue
        assert "\n" not in msg
        assert str(src) in msg


def test_hdf5_header_that_hangs_the_library_is_refused(tmp_path, monkeypatch):
    from cite_files import make_cite, write_h5ad

    from omicsclip.io import formats

    monkeypatch.setattr(formats, "PROBE_SECONDS", 2.0)
    src = write_h5ad(make_cite(n_cells=8, n_genes=6), tmp_path / "x.h5ad")
    good = src.read_bytes()
    at = good.index(b"csr_matrix") - 16  # the header of X's encoding-type attribute
    src.write_bytes(good[:at] + b"\0" * 16 + good[at + 16:])
    msg = _refusal([src, "--out", tmp_path / "s.zarr"])
    assert msg == f"omicsclip: error: {src}: damaged HDF5 file (reading its structure did not finish in 2 s)"
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("member", ["matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz", "rna.csv.gz"])
def test_damaged_deflate_stream_is_an_input_error(tmp_path, member):
    """zlib.error (not an OSError) from a gzip member whose compressed data is damaged: exit 2, not exit 1."""
    c = Case(np.ones((3, 2), np.int32), np.ones((3, 1), np.int32), ["A", "B", "C"], ["G0", "G1"], ["CD3"])
    if member == "rna.csv.gz":
        inputs = [tmp_path / "rna.csv.gz", tmp_path / "prot.csv.gz"]
        write_table(inputs[0], c.barcodes, c.genes, c.rna, genes_in_rows=False)
        write_table(inputs[1], c.barcodes, c.proteins, c.prot, genes_in_rows=False)
        target = inputs[0]
    else:
        inputs = [write_mtx(tmp_path / "m", c, gz=True, shuffle=False)]
        target = inputs[0] / member
    raw = target.read_bytes()
    target.write_bytes(raw[:10] + b"\xff" + raw[11:])  # first byte of the deflate stream: invalid block type
    msg = _refusal([*inputs, "--out", tmp_path / "s.zarr"])
    assert f"{target}: " in msg


def test_feature_types_with_control_characters_stay_on_one_line(tmp_path):
    c = Case(np.ones((2, 2), np.int32), np.ones((2, 1), np.int32), ["A", "B"], ["G0", "G1"], ["CD3"])
    src = write_10x_h5(tmp_path / "x.h5", c, np.int32, ["Gene Expression"] * 2 + ["Peaks\nx"])
    msg = _refusal([src, "--out", tmp_path / "s.zarr"])
    assert msg.endswith("no 'Antibody Capture' features (feature types: Gene Expression, Peaks\\nx); "
                        "both RNA and protein are needed")


@pytest.mark.parametrize("damage", ["index", "indptr"])
def test_csc_matrix_with_damaged_structure_is_an_input_error(tmp_path, damage):
    """Found by the long fuzz run: a CSC X whose indices point past the matrix crashed scipy's tocsr (segfault)."""
    import anndata as ad

    a = ad.AnnData(X=sp.csc_matrix(np.arange(1, 13, dtype=np.float32).reshape(4, 3)),
                   obs=pd.DataFrame(index=[f"c{i}" for i in range(4)]), var=pd.DataFrame(index=["G0", "G1", "G2"]))
    a.obsm["protein"] = pd.DataFrame(np.ones((4, 2), np.float32), index=a.obs_names, columns=["CD3", "CD4"])
    path = tmp_path / "x.h5ad"
    a.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        if damage == "index":
            f["X/indices"][1] = 1_000_000
        else:
            f["X/indptr"][1] = 20  # past the 12 stored values, then decreasing
    msg = _refusal([path, "--out", tmp_path / "s.zarr"])
    assert f"{path}: X is not a valid sparse matrix (corrupt file: " in msg
