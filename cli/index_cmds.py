"""Reference lookup commands: ``index`` (embeddings -> FAISS indices) and ``query`` (new cells -> results)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omicsclip.cli._common import ConfigOpt, SetOpt, guarded, load_cfg
from omicsclip.cli.data_cmds import ProteinAliasesOpt

OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


@guarded
def index(
    emb: Annotated[Path, typer.Argument(help="Embeddings (EMB.zarr) from `omicsclip embed`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to create (INDEX_DIR).")],
    store: Annotated[Path | None, typer.Option(
        "--store", help="Store with the reference cells' protein counts (default: the one recorded in EMB).")] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Model folder (default: the one recorded in EMB); defines the protein panel.")] = None,
    kind: Annotated[str | None, typer.Option(
        "--kind", help="auto | flat | ivf_flat | ivf_sq | ivf_pq | hnsw (overrides index.kind).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    r"""Build one FAISS index per modality (cosine similarity) plus the reference protein and labels.

    Exact (flat) up to index.exact_max_cells reference cells, then index.approximate (IVF-Flat, IVF-PQ or
    HNSW) with parameters from the config or derived from the reference size; on a GPU when faiss sees one.
    INDEX_DIR holds rna.faiss, prot.faiss, cell_ids.tsv, reference_protein.npy (CLR), reference_obs.parquet
    (labels) and meta.json (metric, dim, factory, kind, n, params, model fingerprint).

    Examples
    --------
        omicsclip index pbmc10k_emb.zarr --out pbmc10k_index

        omicsclip index atlas_emb.zarr --out atlas_index --kind hnsw --set index.ef_search=256

        omicsclip index pbmc10k_emb.zarr --out train_index --set 'index.splits=\[train]'
    """
    from omicsclip.index.faiss_index import set_threads
    from omicsclip.index.from_embeddings import index_embeddings

    cfg = load_cfg(config, (set_ or []) + ([f"index.kind={kind}"] if kind else []))
    section = cfg["index"]
    set_threads(int(section["threads"]))
    typer.echo(str(index_embeddings(emb, out, section, store=store, model_dir=model, overwrite=overwrite,
                                    ignore_labels=cfg["evaluate"]["ignore_labels"])))


@guarded
def query(
    inputs: Annotated[list[Path], typer.Argument(
        help="Query cells: one input of any ingest format (RNA, protein or both), or RNA then protein files.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Trained model folder (MODEL_DIR).")],
    index: Annotated[Path, typer.Option("--index", "-i", help="Index folder (INDEX_DIR) built with this model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder to create (RESULTS_DIR).")],
    k: Annotated[int | None, typer.Option("--k", min=1, help="Neighbours per cell and direction (query.k).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto | 10x-h5 | 10x-mtx | h5ad | h5ad-pair | h5mu | csv | zarr.")]
    = "auto",
    modality: Annotated[str | None, typer.Option(
        "--modality", help="Use one modality: rna | prot (a single-matrix input holds it; of a paired input, that part; "
        "default: detect).")] = None,
    make_unique: Annotated[bool, typer.Option(
        "--make-unique", help="Suffix duplicate feature names (-1, -2) instead of refusing them.")] = False,
    no_tsv: Annotated[bool, typer.Option("--no-tsv", help="Skip neighbours.tsv (parquet only).")] = False,
    protein_aliases: ProteinAliasesOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Find reference neighbours of new cells across modalities; impute protein and transfer labels.

    Every query modality searches both indices (RNA -> protein, protein -> RNA and the same-modality
    direction). RESULTS_DIR gets neighbours.parquet/.tsv (query_id, query_modality, index_modality, rank,
    reference_id, similarity), imputed_protein.h5ad for RNA-only queries (CLR, with per-cell confidence),
    labels.tsv when the reference has labels (evaluate.ignore_labels are never transferred), mapping.tsv
    (per cell: mapping_score, low for cells unlike any reference cell, and out_of_reference at
    query.ood_alpha), and summary.json. Cells are streamed in chunks
    (query.chunk_cells), so inputs larger than memory work.

    Examples
    --------
        omicsclip query new_cells.h5ad --model models/pbmc10k --index pbmc10k_index --out results/

        omicsclip query filtered_feature_bc_matrix.h5 -m models/pbmc10k -i pbmc10k_index -o res --k 20

        omicsclip query adt_counts.csv --modality prot -m models/pbmc10k -i pbmc10k_index -o res_prot

        omicsclip query other_lab.h5ad -m models/pbmc10k -i pbmc10k_index -o res --protein-aliases names.tsv
    """
    from omicsclip.index.query import run_query

    cfg = load_cfg(config, (set_ or []) + (["ingest.make_unique=true"] if make_unique else []))
    if protein_aliases:  # a path, not a --set value: no YAML parsing of its characters
        cfg["ingest"]["protein_aliases"] = str(protein_aliases)
    s = run_query(inputs, model, index, out, k=k, section=cfg["query"], fmt=fmt, modality=modality,
                  ingest=cfg["ingest"], device=cfg["query"]["device"], use_gpu=cfg["index"]["use_gpu"],
                  ignore_labels=cfg["evaluate"]["ignore_labels"], tsv=not no_tsv, overwrite=overwrite)
    typer.echo(f"{out}: {s['n_query_cells']} cells ({'+'.join(s['query_modalities'])}), directions "
               f"{', '.join(s['directions'])}; {', '.join(s['files'])}")


def register(app: typer.Typer) -> None:
    """Add ``index`` and ``query`` to ``app``."""
    app.command("index")(index)
    app.command("query")(query)
