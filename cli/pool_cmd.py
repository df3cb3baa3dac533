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
    genes: Annotated[Path | None, typer.Option(
        "--genes", help="Gene list file (one per line) to keep; default: the genes every store has.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
) -> None:
    """Pool paired stores into one: shared genes, the union of the antibody panels, an obs `dataset` column.

    Proteins outside a dataset's panel are recorded as unmeasured (not as zero counts), so one model learns all
    panels together and can be queried with any sub-panel. Barcodes become BARCODE-DATASET. Train with
    `--set train.batch_key=dataset` to draw each training batch within one dataset.

    Examples
    --------
    omicsclip pool pbmc10k.zarr bremsc.zarr pbmc5p.zarr --out pooled.zarr

    omicsclip train pooled.zarr --out models/pooled --set train.batch_key=dataset
    """
    from omicsclip.io.genesets import read_gene_list
    from omicsclip.io.pool import pool_stores

    name_list = None if names is None else [n.strip() for n in names.split(",")]
    gene_list = None if genes is None else read_gene_list(genes)
    typer.echo(str(pool_stores(stores, out, names=name_list, genes=gene_list, overwrite=overwrite)))


def register(app: typer.Typer) -> None:
    """Add ``pool`` to ``app``.

    Parameters
    ----------
    app
        The ``omicsclip`` typer application.
    """
    app.command("pool")(pool)
