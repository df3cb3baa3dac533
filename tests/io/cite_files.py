"""Small CITE-seq inputs in every supported on-disk layout, written by the tests themselves."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

PROTEINS = ["CD3", "CD4", "CD8a", "CD14", "CD19"]
ISOTYPES = ["IgG1_control", "Mouse_IgG2a_isotype"]


@dataclass
class Cite:
    """Ground truth: integer counts, names, labels."""

    rna: sp.csr_matrix  # cells x genes, float32 integer values
    prot: np.ndarray  # cells x (PROTEINS + ISOTYPES)
    barcodes: list[str]
    genes: list[str]
    antibodies: list[str]
    cell_type: list[str]

    @property
    def prot_kept(self) -> np.ndarray:
        return self.prot[:, : len(PROTEINS)]

    @property
    def isotype_sum(self) -> np.ndarray:
        return self.prot[:, len(PROTEINS):].sum(axis=1)


def make_cite(n_cells: int = 60, n_genes: int = 40, seed: int = 0) -> Cite:
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.6, size=(n_cells, n_genes)).astype(np.float32)
    dense[:, 3] = 0  # a gene with zero counts (QC)
    rna = sp.csr_matrix(dense)
    antibodies = PROTEINS + ISOTYPES
    prot = rng.poisson(20, size=(n_cells, len(antibodies))).astype(np.float32)
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 12))}-{i}" for i in range(n_cells)]
    genes = [f"GENE{i}" for i in range(n_genes)]
    types = [("T", "B", "Mono")[i % 3] for i in range(n_cells)]
    return Cite(rna, prot, barcodes, genes, antibodies, types)


def to_anndata(c: Cite, *, protein: str = "frame"):
    """Shared-data layout: X = RNA, obsm["protein"] DataFrame (or array + uns["protein_names"])."""
    import anndata as ad

    a = ad.AnnData(X=c.rna.copy(), obs=pd.DataFrame({"cell_type": pd.Categorical(c.cell_type)},
                                                     index=c.barcodes), var=pd.DataFrame(index=c.genes))
    if protein == "frame":
        a.obsm["protein"] = pd.DataFrame(c.prot, index=c.barcodes, columns=c.antibodies)
    elif protein == "array":
        a.obsm["protein"] = c.prot.copy()
        a.uns["protein_names"] = np.array(c.antibodies, dtype=object)
    return a


def write_h5ad(c: Cite, path: Path, **kw) -> Path:
    to_anndata(c, **kw).write_h5ad(path)
    return path


def write_h5ad_pair(c: Cite, rna_path: Path, prot_path: Path, *, prot_order: np.ndarray | None = None):
    import anndata as ad

    to_anndata(c, protein="none").write_h5ad(rna_path)
    order = np.arange(len(c.barcodes)) if prot_order is None else prot_order
    p = ad.AnnData(X=c.prot[order], obs=pd.DataFrame(index=np.array(c.barcodes)[order]),
                   var=pd.DataFrame(index=c.antibodies))
    p.write_h5ad(prot_path)
    return rna_path, prot_path


def write_h5mu(c: Cite, path: Path, *, rna: str = "rna", prot: str = "prot") -> Path:
    import anndata as ad
    import mudata as md

    a = to_anndata(c, protein="none")
    p = ad.AnnData(X=c.prot.copy(), obs=pd.DataFrame(index=c.barcodes), var=pd.DataFrame(index=c.antibodies))
    md.MuData({rna: a, prot: p}).write_h5mu(path)
    return path


def _features(c: Cite, hto: list[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    names = c.genes + c.antibodies + (hto or [])
    ids = [f"ENSG{i:05d}" for i in range(len(c.genes))] + [f"{a}_TotalSeqB" for a in c.antibodies] + (hto or [])
    types = ["Gene Expression"] * len(c.genes) + ["Antibody Capture"] * len(c.antibodies) + \
        ["Multiplexing Capture"] * len(hto or [])
    return names, ids, types


def combined(c: Cite, hto: np.ndarray | None = None) -> sp.csr_matrix:
    """cells x (genes + antibodies [+ hashtags]) as Cell Ranger orders the features."""
    parts = [c.rna, sp.csr_matrix(c.prot)] + ([sp.csr_matrix(hto)] if hto is not None else [])
    return sp.hstack(parts, format="csr")


def write_10x_h5(c: Cite, path: Path, *, hto: np.ndarray | None = None, hto_names: list[str] | None = None,
                 shape: tuple[int, int] | None = None) -> Path:
    """Cell Ranger v3 layout: matrix/{data,indices,indptr,shape,barcodes,features/...}, CSC features x barcodes."""
    m = combined(c, hto)  # cells x features CSR == features x cells CSC
    names, ids, types = _features(c, hto_names)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(shape or (m.shape[1], m.shape[0]), dtype=np.int32))
        g.create_dataset("barcodes", data=np.array(c.barcodes, dtype="S"))
        fg = g.create_group("features")
        fg.create_dataset("id", data=np.array(ids, dtype="S"))
        fg.create_dataset("name", data=np.array(names, dtype="S"))
        fg.create_dataset("feature_type", data=np.array(types, dtype="S"))
        fg.create_dataset("genome", data=np.array(["GRCh38"] * len(names), dtype="S"))
        fg.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        f.attrs["library_ids"] = np.array([b"sample"])
    return path


def write_10x_mtx(c: Cite, folder: Path, *, shuffle: bool = False, gz: bool = True) -> Path:
    """filtered_feature_bc_matrix/: matrix.mtx.gz (features x barcodes), features.tsv.gz, barcodes.tsv.gz."""
    folder.mkdir(parents=True, exist_ok=True)
    coo = combined(c).T.tocoo()  # features x barcodes
    order = np.lexsort((coo.row, coo.col))  # Cell Ranger: by barcode, then feature
    if shuffle:
        order = np.random.default_rng(1).permutation(len(coo.data))
    names, ids, types = _features(c)
    lines = ["%%MatrixMarket matrix coordinate integer general", "%metadata_json: {}",
             f"{coo.shape[0]} {coo.shape[1]} {coo.nnz}"]
    lines += [f"{r + 1} {k + 1} {int(v)}" for r, k, v in zip(coo.row[order], coo.col[order], coo.data[order],
                                                             strict=True)]
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(folder / f"matrix.mtx{suffix}", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    with opener(folder / f"features.tsv{suffix}", "wt") as fh:
        fh.write("".join(f"{i}\t{n}\t{t}\n" for i, n, t in zip(ids, names, types, strict=True)))
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as fh:
        fh.write("".join(f"{b}\n" for b in c.barcodes))
    return folder


def write_tables(c: Cite, rna_path: Path, prot_path: Path, *, genes_in_rows: bool = False) -> tuple[Path, Path]:
    """Two CSV/TSV tables (separator from the extension, gzip when the name ends in .gz)."""
    rna = pd.DataFrame(c.rna.toarray().astype(int), index=c.barcodes, columns=c.genes)
    prot = pd.DataFrame(c.prot.astype(int), index=c.barcodes, columns=c.antibodies)
    for df, p in ((rna, rna_path), (prot, prot_path)):
        sep = "\t" if ".tsv" in p.name else ","
        (df.T if genes_in_rows else df).to_csv(p, sep=sep, index_label="barcode")
    return rna_path, prot_path


def assert_store_matches(store: Path, c: Cite, *, isotypes_removed: bool = True) -> None:
    """The store holds exactly the source counts: RNA, kept proteins, barcodes and names in source order."""
    from omicsclip.io.store import read_store

    assert_data_matches(read_store(store), c, isotypes_removed=isotypes_removed)


def stray_files(folder: Path) -> list[str]:
    """Temporary leftovers (hidden .tmp-/.old- siblings) in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def assert_data_matches(d, c: Cite, *, isotypes_removed: bool = True) -> None:
    """PairedData from a reader holds exactly the source counts and names, in source order."""
    assert d.barcodes == c.barcodes
    assert d.gene_names == c.genes
    assert d.protein_names == (PROTEINS if isotypes_removed else c.antibodies)
    assert (d.rna != c.rna).nnz == 0
    np.testing.assert_array_equal(d.prot, c.prot_kept if isotypes_removed else c.prot)
    if isotypes_removed:
        np.testing.assert_array_equal(d.obs["isotype_counts"].to_numpy(), c.isotype_sum)


def read_input(paths, **kw):
    """open_input(...).read() in a with-block."""
    from omicsclip.io.readers import open_input

    with open_input([Path(p) for p in paths], **kw) as src:
        return src.read()
