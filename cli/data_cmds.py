"""Data commands: ``synth`` (synthetic .h5ad), ``ingest`` (any input -> paired store), ``inspect`` (store summary)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omicsclip.cli._common import ConfigOpt, SetOpt, guarded, load_cfg

FORMAT_HELP = "auto | 10x-h5 | 10x-mtx | h5ad | h5ad-pair | h5mu | csv (auto: from extension and content)."
ProteinAliasesOpt = Annotated[Path | None, typer.Option(
    "--protein-aliases", dir_okay=False,
    help="TSV/CSV (name, canonical) or YAML mapping of protein names overriding the shipped alias table "
         "(ingest.protein_aliases).")]


@guarded
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad (shared-data layout).", dir_okay=False)],
    cells: Annotated[int, typer.Option("--cells", min=1, help="Number of cells.")] = 2000,
    genes: Annotated[int, typer.Option("--genes", min=1, help="Number of genes.")] = 1000,
    proteins: Annotated[int, typer.Option("--proteins", min=1, help="Number of proteins.")] = 20,
    types: Annotated[int, typer.Option("--types", min=1, help="Number of cell types.")] = 6,
    batches: Annotated[int, typer.Option("--batches", min=1, help="Number of batches.")] = 1,
    isotypes: Annotated[int, typer.Option("--isotypes", min=0, help="Extra isotype-control antibodies.")] = 0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed (same seed, same data).")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Write synthetic paired RNA + protein counts to an .h5ad (X = RNA, obsm["protein"], obs cell_type/batch).

    Examples
    --------
        omicsclip synth --out cells.h5ad --cells 5000

        omicsclip synth --out big.h5ad --cells 200000 --genes 20000 --proteins 100 --isotypes 3 --seed 1
    """
    from omicsclip.io.synthetic import write_synthetic_h5ad

    path = write_synthetic_h5ad(out, n_cells=cells, n_genes=genes, n_proteins=proteins, n_types=types,
                                n_batches=batches, n_isotypes=isotypes, seed=seed, overwrite=overwrite)
    typer.echo(str(path))


@guarded
def ingest(
    inputs: Annotated[list[Path], typer.Argument(help="INPUT [INPUT2]: one file/folder, or RNA then protein.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Paired store to create (STORE.zarr).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=FORMAT_HELP)] = "auto",
    pairing: Annotated[str | None, typer.Option(
        "--pairing", help="Barcodes in only one modality: strict (error, default) | intersect (keep shared).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
    allow_normalized: Annotated[bool, typer.Option(
        "--allow-normalized", help="Accept non-integer (normalised) values; recorded in provenance.")] = False,
    genes_in_rows: Annotated[bool, typer.Option(
        "--genes-in-rows", help="CSV/TSV tables have features in rows and cells in columns.")] = False,
    make_unique: Annotated[bool, typer.Option(
        "--make-unique", help="Suffix duplicate feature names (-1, -2) instead of refusing them.")] = False,
    keep_isotypes: Annotated[bool, typer.Option(
        "--keep-isotypes", help="Keep isotype-control antibodies as protein features.")] = False,
    protein_aliases: ProteinAliasesOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Validate an input and write the paired store (MuData zarr, raw counts, provenance and QC in uns).

    Inputs: a Cell Ranger .h5 or filtered_feature_bc_matrix/ folder, an .h5ad with protein in obsm, two .h5ad
    (RNA, protein), an .h5mu, or two CSV/TSV tables (RNA, protein; optionally .gz). Protein names become
    canonical (PD-1, PD1 (CD279), CD279_TotalSeqB -> CD279; the input's names stay in the protein var column
    original_name). Other options live in the config's ingest section (min_counts_rna, min_counts_prot,
    isotype_patterns, harmonise_proteins, rna_modality, ...).

    Examples
    --------
        omicsclip ingest pbmc10k.h5ad --out pbmc10k.zarr

        omicsclip ingest sample_filtered_feature_bc_matrix.h5 --out sample.zarr --make-unique

        omicsclip ingest rna.csv.gz adt.csv.gz --genes-in-rows --pairing intersect --out cells.zarr

        omicsclip ingest cells.h5mu --out cells.zarr --set ingest.prot_modality=adt --set ingest.min_counts_rna=500

        omicsclip ingest other_lab.h5ad --out other_lab.zarr --protein-aliases our_panel_names.tsv
    """
    from omicsclip.io.ingest import ingest_from_config

    section = load_cfg(config, set_)["ingest"]
    path = ingest_from_config(inputs, out, section, fmt=fmt, overwrite=overwrite, pairing=pairing,
                              allow_normalized=allow_normalized or None, genes_in_rows=genes_in_rows or None,
                              make_unique=make_unique or None, keep_isotypes=keep_isotypes or None,
                              protein_aliases=str(protein_aliases) if protein_aliases else None)
    typer.echo(str(path))


@guarded
def inspect(
    store: Annotated[Path, typer.Argument(help="Paired store written by omicsclip ingest.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Summarise a paired store: cells, genes, proteins, sparsity, obs columns, QC numbers and provenance.

    Examples
    --------
        omicsclip inspect pbmc10k.zarr

        omicsclip inspect pbmc10k.zarr --json | jq .qc
    """
    from omicsclip.io.jsonfile import dumps_json
    from omicsclip.io.summary import format_summary, inspect_store

    summary = inspect_store(store)
    if as_json:
        typer.echo(dumps_json(summary), nl=False)
    else:
        typer.echo(format_summary(summary))


def register(app: typer.Typer) -> None:
    """Add ``synth``, ``ingest`` and ``inspect`` to ``app``."""
    app.command("synth")(synth)
    app.command("ingest")(ingest)
    app.command("inspect")(inspect)
