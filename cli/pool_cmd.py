"""``omicsclip pool``: several paired stores (datasets, labs, antibody panels) -> one store to train a reference on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omicsclip.cli._common import guarded


@guarded
def pool(
    stores: Annotated[list[Path], typer.Argument(help="Two or more paired stores from `omicsclip ingest`.",
                                                 show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Pooled store to create (POOLED.zarr).")],
    names: Annotated[str | None, typer.Option(
        "--names", help="Comma-separated dataset names, one per store (default: the store folder names).")] = None,
    genes: Annotated[str, typer.Option(
        "--genes", help="union: every gene of any store, each cell's unmeasured genes recorded as such; shared: the "
                        "genes every store has; or a gene list file (one per line) of genes every store has.")
    ] = "union",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Pool paired stores into one: the union of the genes and of the antibody panels, an obs `dataset` column.

    Genes and proteins outside a dataset's own sets are recorded as unmeasured (not as zero counts), so one model
    learns every dataset from all its genes and all panels together, and can be queried with any of their gene
    sets or sub-panels. Barcodes become BARCODE-DATASET. Training batches are drawn within one dataset
    (train.batch_key: auto).

    Examples
    --------
    omicsclip pool pbmc10k.zarr bremsc.zarr pbmc5p.zarr --out pooled.zarr

    omicsclip train pooled.zarr --out models/pooled
    """
    from omicsclip.io.genesets import read_gene_list
    from omicsclip.io.pool import pool_stores

    name_list = None if names is None else [n.strip() for n in names.split(",")]
    gene_list = genes if genes in ("union", "shared") else read_gene_list(Path(genes))
    typer.echo(str(pool_stores(stores, out, names=name_list, genes=gene_list, overwrite=overwrite)))


@guarded
def merge_metrics(
    members: Annotated[list[str], typer.Argument(
        help="NAME=METRICS.json of each member dataset (`omicsclip evaluate POOLED --dataset NAME`).",
        show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged metrics file to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Merge a pooled reference's per-dataset metrics into one metrics file (what `select` and the report read).

    Every metric is the mean over the member datasets (each counts once), cell counts are summed, and each
    member's own metrics are kept under `members`.

    Examples
    --------
    omicsclip merge-metrics pbmc10k=m_pbmc10k.json bremsc=m_bremsc.json --out metrics.json
    """
    from omicsclip.errors import InputError
    from omicsclip.evaluation.merge import merge_member_files
    from omicsclip.io.atomic import atomic_path

    pairs = [m.split("=", 1) for m in members]
    if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        raise InputError("merge-metrics: give each member as NAME=METRICS.json")
    paths = {name: Path(path) for name, path in pairs}
    if len(paths) != len(pairs):
        raise InputError("merge-metrics: a member name is given twice")
    with atomic_path(out, overwrite=overwrite, inputs=tuple(paths.values())) as tmp:
        merge_member_files(paths, tmp)
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    """Add ``pool`` and ``merge-metrics`` to ``app``.

    Parameters
    ----------
    app
        The ``omicsclip`` typer application.
    """
    app.command("pool")(pool)
    app.command("merge-metrics")(merge_metrics)
