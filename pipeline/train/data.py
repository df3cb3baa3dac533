"""Training batches: device-resident cells (batches are index gathers) or chunks streamed from the store.

Raw counts stay raw until the batch is built, so augmentation happens on counts, on the device
(:func:`omicsclip.model.batchops.model_inputs`): binomial count thinning with a per-cell keep probability
``q ~ U(thinning, 1)`` (``thinning = 1`` disables it), feature dropout, panel and gene masking, and the gene-wise
capture shift (:class:`omicsclip.model.batchops.Augmentation`).

RNA counts are kept as CSR (values, column indices, row pointers) on the device, together with each cell's count
total over the genes outside the model; a batch gathers its cells' non-zeros, thins them, and scatters them into
a dense ``batch x genes`` matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from omicsclip.model.alignment import align_proteins, align_rna
from omicsclip.model.batchops import RawBatch, gather_rows
from omicsclip.model.preprocess import PreprocessState

__all__ = ["DeviceBatches", "DeviceCells", "StoreBatches", "cell_bytes", "epoch_permutation", "grouped_order",
           "load_cells"]

log = logging.getLogger(__name__)


class DeviceCells:
    """Cells kept on one device; :meth:`gather` builds a :class:`RawBatch` with index operations only.

    In memory a cell costs ``6 x non-zeros`` bytes (float16 counts, int32 gene positions) plus ``12 + 4 x
    proteins`` (row pointer, counts outside the model genes, protein counts): :func:`cell_bytes`.

    Parameters
    ----------
    rna
        Cells x model genes raw counts (CSR).
    lib
        Library size of every cell over all its genes.
    prot
        Cells x proteins raw counts.
    device
        Where to keep the data.
    """

    def __init__(self, rna: sp.csr_matrix, lib: np.ndarray, prot: np.ndarray, device: torch.device | str, *,
                 gene_codes: np.ndarray | None = None, gene_table: np.ndarray | None = None) -> None:
        prot = np.asarray(prot, np.float32)
        self._assemble([_compact(rna, lib, prot, gene_codes)], rna.shape[1], prot.shape[1], device, gene_table)

    @classmethod
    def from_store(cls, store: str | Path, rows: np.ndarray, state: PreprocessState, device: torch.device | str,
                   chunk_cells: int = 10_000) -> DeviceCells:
        """Read the cells at positions ``rows`` of a store straight into compact device arrays.

        Each store chunk is aligned to the model's features and shrunk to its compact form at once, so the peak
        is about ``10 x non-zeros`` bytes (the compact chunks plus one concatenated field), never a full CSR copy.

        Parameters
        ----------
        store
            Paired store.
        rows
            Cell positions (sorted here).
        state
            The model's preprocessing state (its genes and proteins).
        device
            Where to keep the data.
        chunk_cells
            Cells read from the store at a time.
        """
        table = _model_gene_masks(store, state)
        parts = [_compact(rna, lib, prot, codes)
                 for rna, lib, prot, codes in _aligned_chunks(store, rows, state, chunk_cells)]
        self = cls.__new__(cls)
        self._assemble(parts, len(state.genes), len(state.proteins), device, None if table is None else table[1])
        return self

    def _assemble(self, parts: list[dict[str, np.ndarray]], n_genes: int, n_proteins: int,
                  device: torch.device | str, gene_table: np.ndarray | None = None) -> None:
        self.device = torch.device(device)
        self.n_genes = n_genes
        # per cell, the row of gene_table (datasets x model genes) of the genes it measured (pooled gene panels)
        self.gene_table = None if gene_table is None else torch.from_numpy(np.asarray(gene_table, bool)).to(
            self.device)
        codes = [p.pop("gene_code", None) for p in parts]
        self.gene_codes = None if self.gene_table is None else torch.from_numpy(
            np.concatenate(codes).astype(np.int64) if codes else np.zeros(0, np.int64)).to(self.device)
        # counts are integers: float16 is exact up to 2048 and halves the footprint
        small = all(p["values"].dtype == np.float16 for p in parts)
        vdtype = np.float16 if small else np.float32

        def take(key: str, dtype: type) -> torch.Tensor:
            arrays = [p.pop(key) for p in parts]  # the parts' arrays are released as soon as they are joined
            joined = np.concatenate([a.astype(dtype, copy=False) for a in arrays]) if arrays else np.zeros(0, dtype)
            del arrays
            return torch.from_numpy(joined).to(self.device)

        row_nnz = take("row_nnz", np.int64)
        self.n_cells = int(row_nnz.numel())
        self.indptr = torch.zeros(self.n_cells + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(row_nnz, 0, out=self.indptr[1:])
        del row_nnz
        self.values = take("values", vdtype)
        self.indices = take("indices", np.int32)
        self.other = take("other", np.float32)
        prot = [p.pop("prot") for p in parts]
        self.prot = torch.from_numpy(np.concatenate(prot) if prot else np.zeros((0, n_proteins), np.float32)).to(self.device)

    @property
    def nbytes(self) -> int:
        """Bytes held on the device."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.indices, self.indptr, self.other,
                                                          self.prot))

    def gather(self, idx: torch.Tensor) -> RawBatch:
        """Gather the cells ``idx`` (a tensor of positions on this device) as a raw batch."""
        return gather_rows(self.indptr, self.indices, self.values, self.other, self.prot, idx.to(self.device),
                           self.gene_codes, self.gene_table)


def cell_bytes(nnz_per_cell: float, n_proteins: int) -> float:
    """Bytes one training cell takes in :class:`DeviceCells` with ``nnz_per_cell`` non-zero model-gene counts.

    Float16 counts (2 bytes) and int32 gene positions (4 bytes) per non-zero; an int64 row pointer, the float32
    count outside the model genes and float32 protein counts per cell.
    """
    return 6.0 * nnz_per_cell + 12 + 4 * n_proteins


def _compact(rna: sp.csr_matrix, lib: np.ndarray, prot: np.ndarray,
             gene_code: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Return the compact arrays of a block of cells (float16 counts when exact, int32 gene positions)."""
    rna = sp.csr_matrix(rna)
    values = np.asarray(rna.data, np.float32)
    if values.size == 0 or float(values.max()) <= 2048:
        values = values.astype(np.float16)
    rowsum = np.asarray(rna.sum(axis=1), dtype=np.float64).ravel()
    return {"values": values, "indices": rna.indices.astype(np.int32),
            "row_nnz": np.diff(rna.indptr).astype(np.int64),
            "other": np.maximum(np.asarray(lib, np.float64) - rowsum, 0).astype(np.float32),
            "prot": np.asarray(prot, np.float32),
            **({} if gene_code is None else {"gene_code": np.asarray(gene_code, np.int64)})}


def _model_gene_masks(store: str | Path | dict, state: PreprocessState) -> tuple[np.ndarray, np.ndarray] | None:
    """Per store cell, its row of a table of the model genes it measured (``None``: every cell measured all)."""
    from omicsclip.io.panels import store_gene_masks
    from omicsclip.io.store import store_info

    return store_gene_masks(store if isinstance(store, dict) else store_info(store), state.genes)


def _aligned_chunks(store: str | Path, rows: np.ndarray, state: PreprocessState, chunk_cells: int
                    ) -> Iterator[tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield the cells at ``rows`` of a store, chunk by chunk, aligned to the model's genes and proteins.

    The fourth item is, per cell, its row of :func:`_model_gene_masks`' table (``None`` without gene panels).
    """
    from omicsclip.io.store import iter_store, store_info

    info = store_info(store)
    genes, proteins = [str(g) for g in info["genes"].index], [str(p) for p in info["proteins"].index]
    masks = _model_gene_masks(info, state)
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    for rna, prot, sl in iter_store(store, chunk_cells):
        sel = rows[(rows >= sl.start) & (rows < sl.stop)] - sl.start
        if sel.size == 0:
            continue
        counts, lib, _ = align_rna(rna[sel], genes, state)
        codes = None if masks is None else masks[0][sl.start + sel]
        yield counts, lib, _aligned_protein(prot[sel], proteins, state), codes


def _aligned_protein(prot: np.ndarray, proteins: list[str], state: PreprocessState) -> np.ndarray:
    """Protein counts in model order, NaN where a cell's panel lacked the protein (a pooled store)."""
    p, present, _ = align_proteins(prot, proteins, state)
    if present.ndim == 2:
        p[~present] = np.nan
    return p


def load_cells(store: str | Path, rows: np.ndarray, state: PreprocessState,
               chunk_cells: int = 10_000) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Read the cells at positions ``rows`` of a store, aligned to the model's features.

    For training data prefer :meth:`DeviceCells.from_store`, which never holds a full CSR copy.

    Parameters
    ----------
    store
        Paired store.
    rows
        Cell positions (sorted here).
    state
        The model's preprocessing state (its genes and proteins).
    chunk_cells
        Cells read from the store at a time.

    Returns
    -------
    rna, lib, prot
        RNA counts over the model genes (CSR), library sizes over all genes, protein counts. Genes a cell's dataset
        did not measure (a store pooled on the union of several datasets' genes) are zeros here; training reads
        them as unmeasured through :meth:`DeviceCells.from_store`.
    """
    parts = [p[:3] for p in _aligned_chunks(store, rows, state, chunk_cells)]
    if not parts:
        return (sp.csr_matrix((0, len(state.genes)), dtype=np.float32), np.zeros(0),
                np.zeros((0, len(state.proteins)), np.float32))
    return (sp.vstack([p[0] for p in parts], format="csr"), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Return the order of the training cells in ``epoch`` (a pure function of seed and epoch).

    Parameters
    ----------
    n
        Number of training cells.
    seed, epoch
        The permutation's seed and epoch.
    device
        Where the permutation is returned.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).to(device)


class DeviceBatches:
    """Batches of device-resident cells: every epoch a seeded permutation, cut into global batches.

    With several ranks every rank holds all training cells and takes its contiguous shard of each global batch.

    Parameters
    ----------
    cells
        The training cells on the device.
    batch_size
        Global batch size.
    seed
        Seed of the epoch permutations.
    rank, world_size
        This process's place in a data-parallel job.
    """

    def __init__(self, cells: DeviceCells, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1,
                 groups: np.ndarray | None = None) -> None:
        self.cells = cells
        self.batch_size = int(batch_size)
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.local = self.batch_size // world_size
        self.groups = None if groups is None else np.asarray(groups, np.int64)
        if self.groups is not None and self.groups.shape != (cells.n_cells,):
            raise ValueError("groups: one code per training cell")

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial batch, of each group with ``groups``, is dropped)."""
        if self.groups is None:
            return self.cells.n_cells // self.batch_size
        return int((np.bincount(self.groups) // self.batch_size).sum())

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[RawBatch]:
        """Raw batches of this rank for ``epoch``, from ``start_step`` on (the last partial batch is dropped)."""
        if self.groups is not None:
            order = grouped_order(self.groups, self.batch_size, self.seed, epoch)
            perm = torch.from_numpy(order).to(self.cells.device)
        else:
            perm = epoch_permutation(self.cells.n_cells, self.seed, epoch, self.cells.device)
        for step in range(start_step, self.steps_per_epoch):
            lo = step * self.batch_size + self.rank * self.local
            yield self.cells.gather(perm[lo : lo + self.local])


def grouped_order(groups: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Return an epoch's cell order in which every run of ``batch_size`` cells comes from one group.

    ``train.batch_key``: each group's cells are shuffled and cut into full batches (its last partial batch is
    left out this epoch), then the batches of all groups are shuffled together. A pure function of seed and
    epoch, so resumed runs repeat it.
    """
    rng = np.random.default_rng([int(seed), int(epoch), 0xBA7C])
    batches = []
    for g in np.unique(groups):
        cells = rng.permutation(np.flatnonzero(groups == g))
        n = cells.size // batch_size
        batches.extend(cells[: n * batch_size].reshape(n, batch_size))
    if not batches:
        return np.zeros(0, np.int64)
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))]).astype(np.int64)


class StoreBatches:
    """Batches streamed from the store when the training cells do not fit on the device.

    Every epoch visits the store's chunks in a seeded order and shuffles the training cells within each chunk;
    the cells left over at the end of a chunk start the next one, so an epoch yields as many full batches as
    the device-resident source. Only one chunk (plus the carried-over cells) is in memory at a time.

    Parameters
    ----------
    store
        Paired store.
    train_rows
        Positions of the training cells in the store.
    state
        The model's preprocessing state (its genes and proteins).
    batch_size
        Global batch size.
    seed
        Seed of the chunk order and the shuffles.
    device
        Where the batches are built.
    chunk_cells
        Store cells read at a time (at least one batch).
    rank, world_size
        This process's place in a data-parallel job.
    """

    def __init__(self, store: str | Path, train_rows: np.ndarray, state: PreprocessState, batch_size: int,
                 seed: int, device: torch.device | str, *, chunk_cells: int = 50_000, rank: int = 0,
                 world_size: int = 1) -> None:
        from omicsclip.io.panels import store_present
        from omicsclip.io.store import store_info

        info = store_info(store)
        self.present = store_present(info)
        self.gene_masks = _model_gene_masks(info, state)
        self.store = Path(store)
        self.n_store = len(info["obs"])
        self.genes = [str(g) for g in info["genes"].index]
        self.proteins = [str(p) for p in info["proteins"].index]
        self.train_rows = np.sort(np.asarray(train_rows, dtype=np.int64))
        self.state = state
        self.batch_size = int(batch_size)
        self.seed = seed
        self.device = torch.device(device)
        self.chunk_cells = int(max(chunk_cells, batch_size))
        self.rank, self.world_size = rank, world_size
        self.local = self.batch_size // world_size
        self._x = None

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch."""
        return len(self.train_rows) // self.batch_size

    def _chunk(self, start: int, stop: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
        if self._x is None:
            import zarr
            from anndata.io import sparse_dataset

            root = zarr.open_group(str(self.store), mode="r")  # layout checked by store_info in __init__
            self._x = (sparse_dataset(root["mod/rna/X"]), sparse_dataset(root["mod/prot/X"]))
        sel = self.train_rows[(self.train_rows >= start) & (self.train_rows < stop)] - start
        rna = sp.csr_matrix(self._x[0][start:stop])[sel]
        prot = np.asarray(sp.csr_matrix(self._x[1][start:stop]).toarray(), np.float32)[sel]
        if self.present is not None:  # proteins outside a cell's panel (a pooled store)
            prot[~self.present[start:stop][sel]] = np.nan
        counts, lib, _ = align_rna(rna, self.genes, self.state)
        codes = np.zeros(len(sel), np.int64) if self.gene_masks is None else self.gene_masks[0][start + sel]
        return counts, lib, _aligned_protein(prot, self.proteins, self.state), codes

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[RawBatch]:
        """Raw batches of this rank for ``epoch`` from ``start_step`` on."""
        rng = np.random.default_rng([self.seed, epoch, 0x5EED])
        starts = np.arange(0, self.n_store, self.chunk_cells)
        order = rng.permutation(len(starts))
        carry: tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray] | None = None
        step = 0
        table = None if self.gene_masks is None else self.gene_masks[1]
        for ci in order:
            start = int(starts[ci])
            stop = min(start + self.chunk_cells, self.n_store)
            rna, lib, prot, codes = self._chunk(start, stop)  # read even when resuming past it: its leftover
            perm = rng.permutation(rna.shape[0])              # cells carry into the next chunk
            rna, lib, prot, codes = rna[perm], lib[perm], prot[perm], codes[perm]
            if carry is not None:
                rna = sp.vstack([carry[0], rna], format="csr")
                lib = np.concatenate([carry[1], lib])
                prot = np.concatenate([carry[2], prot])
                codes = np.concatenate([carry[3], codes])
            n_batches = rna.shape[0] // self.batch_size
            used = n_batches * self.batch_size
            carry = (rna[used:], lib[used:], prot[used:], codes[used:]) if used < rna.shape[0] else None
            if step + n_batches <= start_step:
                step += n_batches
                continue
            cells = DeviceCells(rna[:used], lib[:used], prot[:used], self.device,
                                gene_codes=None if table is None else codes[:used], gene_table=table)
            for b in range(n_batches):
                if step >= start_step:
                    lo = b * self.batch_size + self.rank * self.local
                    yield cells.gather(torch.arange(lo, lo + self.local, device=self.device))
                step += 1
