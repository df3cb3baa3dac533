"""Training commands: ``train``, ``embed`` and ``evaluate``.

``train``: store -> model folder; ``embed``: store + model -> embeddings; ``evaluate``: model + its store ->
metrics.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omicsclip.cli._common import ConfigOpt, SetOpt, guarded, load_cfg

DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N (overrides train.device).")
]


@guarded
def train(
    stores: Annotated[list[Path], typer.Argument(help=(
        "Paired store (STORE.zarr) from `omicsclip ingest`; several stores (datasets with different panels) "
        "are pooled first into MODEL_DIR.pool.zarr (see `omicsclip pool`)."), show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to create (MODEL_DIR).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    genes_from: Annotated[list[Path] | None, typer.Option(
        "--genes-from", help=("Train on the genes the store shares with this input or store (repeatable): the "
                              "datasets you will query. Sets preprocess.genes."))] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run (MODEL_DIR.partial) from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing model / discard an unfinished run.")] = False,
    device: DeviceOpt = None,
) -> None:
    """Train the RNA/protein dual encoder (contrastive, InfoNCE) and write MODEL_DIR.

    MODEL_DIR holds model.safetensors, model.json (config, preprocessing, fingerprints), split.tsv
    (train/val/test cells), train_log.jsonl and checkpoints/. Ctrl-C or SIGTERM writes a checkpoint first;
    --resume then continues exactly where the run stopped. Multi-GPU: launch with torchrun.

    Examples
    --------
    omicsclip train pbmc10k.zarr --out models/pbmc10k

    omicsclip train pbmc10k.zarr --out models/t005 --set train.temperature=0.05 --set train.epochs=50

    omicsclip train pbmc10k.zarr --out models/pbmc10k --resume

    omicsclip train bremsc.zarr --out models/bremsc --genes-from pbmc10k.h5ad   # a reference that maps pbmc10k

    omicsclip train pbmc10k.zarr bremsc.zarr --out models/pooled --set train.batch_key=dataset

    torchrun --nproc_per_node 4 $(which omicsclip) train big.zarr --out models/big --set train.batch_size=65536
    """
    from omicsclip.train.run import prepare_training_store, train_model

    cfg = load_cfg(config, (set_ or []) + ([f"train.device={device}"] if device else []))
    store = prepare_training_store(stores, out, cfg, genes_from=genes_from or [], resume=resume,
                                   overwrite=overwrite)
    typer.echo(str(train_model(store, out, cfg, resume=resume, overwrite=overwrite)))


@guarded
def embed(
    store: Annotated[Path, typer.Argument(help="Paired store (STORE.zarr) to embed.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Trained model folder (MODEL_DIR).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Embeddings to create (EMB.zarr, AnnData).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Cells per forward pass.")] = 4096,
) -> None:
    """Write RNA, protein and joint embeddings of every cell (obsm X_omicsclip_rna/_prot/_joint).

    obs is the store's obs plus `split` (the model's train/val/test assignment). Open it with
    anndata.read_zarr; scanpy works on it directly, e.g. sc.pp.neighbors(adata, use_rep="X_omicsclip_joint").

    Examples
    --------
    omicsclip embed pbmc10k.zarr --model models/pbmc10k --out pbmc10k_emb.zarr

    omicsclip embed other.zarr --model models/pbmc10k --out other_emb.zarr --device cuda --overwrite
    """
    from omicsclip.model.embed import embed_store

    typer.echo(str(embed_store(store, model, out, overwrite=overwrite, device=device, batch_size=batch_size)))


@guarded
def evaluate(
    store: Annotated[Path, typer.Argument(help="Paired store the model was trained on (STORE.zarr).")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Trained model folder (MODEL_DIR).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="metrics.json to write.", dir_okay=False)],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="Pooled store: score this dataset's held-out cells on its own antibody panel.")] = None,
) -> None:
    """Score omicsclip and the PCA, CCA and ridge baselines on the model's held-out test cells.

    metrics.json holds, per method: FOSCTTM, recall@1/10/50, NeurIPS-2021 match score, cell-type agreement
    of the top match, few-label accuracy, protein imputation (Pearson, RMSE); and omicsclip's retrieval
    metrics on the validation cells (model selection never looks at test cells).

    Examples
    --------
    omicsclip evaluate pbmc10k.zarr --model models/pbmc10k --out metrics.json

    omicsclip evaluate pbmc10k.zarr --model models/pbmc10k --out m.json --set evaluate.fewlabel_fraction=0.05
    """
    from omicsclip.evaluation.evaluate import run_evaluate

    cfg = load_cfg(config, set_)
    res = run_evaluate(store, model, out, evaluate_cfg=cfg["evaluate"], query_cfg=cfg["query"],
                       overwrite=overwrite, dataset=dataset)
    om = res["methods"]["omicsclip"]
    typer.echo(f"{out}: {res['n_test_cells']} test cells; omicsclip FOSCTTM {om['foscttm']:.4f}, "
               f"recall@10 {om['recall_at_10']:.3f}")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``embed`` and ``evaluate`` to ``app``.

    Parameters
    ----------
    app
        The ``omicsclip`` typer application.
    """
    app.command("train")(train)
    app.command("embed")(embed)
    app.command("evaluate")(evaluate)
