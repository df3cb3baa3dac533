"""Few-label head commands: ``finetune`` (embedding -> head), ``predict`` (new cells -> labels), ``fewlabel``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omicsclip.cli._common import ConfigOpt, SetOpt, guarded, load_cfg
from omicsclip.io.jsonfile import dumps_json

FUSION_HELP = "early | late | gated | uncertainty | tensor | rna | prot (overrides finetune.fusion)."
IgnoreOpt = Annotated[
    list[str] | None,
    typer.Option("--ignore-label", help="Label value treated as unlabelled, e.g. unknown (repeatable; default: "
                 "evaluate.ignore_labels)."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
StoreOpt = Annotated[Path | None, typer.Option("--store", help="Paired store the embedding was made from.")]
ModelOpt = Annotated[Path | None, typer.Option("--model", "-m", help="The model folder (MODEL_DIR).")]


@guarded
def finetune(
    emb: Annotated[Path, typer.Argument(help="Embeddings (EMB.zarr) from `omicsclip embed`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Head folder to create (HEAD_DIR).")],
    labels: Annotated[str | None, typer.Option(
        "--labels", help="obs column with the labels (default: evaluate.label_key).")] = None,
    labels_per_class: Annotated[int | None, typer.Option(
        "--labels-per-class", min=1, help="Use N randomly drawn labelled training cells per class.")] = None,
    ignore_label: IgnoreOpt = None,
    fusion: Annotated[str | None, typer.Option("--fusion", help=FUSION_HELP)] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Seed (overrides finetune.seed).")] = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train a cell-type head on the embeddings of labelled training cells; write HEAD_DIR.

    Labels come from an obs column; empty/NaN/NA values are unlabelled, and so are the values given with
    --ignore-label. Only `train`-split cells are used for fitting; labelled `test` cells give accuracy, macro-F1
    and calibration (ECE) in head.json. HEAD_DIR holds head.safetensors and head.json (classes, fusion, model
    fingerprint). With --set finetune.finetune_encoder=true the encoders' last layers are fine-tuned too
    (needs --store and --model).

    Examples
    --------
    omicsclip finetune pbmc10k_emb.zarr --labels cell_type --out heads/pbmc10k --ignore-label unknown

    omicsclip finetune pbmc10k_emb.zarr --labels cell_type --labels-per-class 10 --fusion uncertainty --out h10

    omicsclip finetune emb.zarr --labels cell_type --out h --store pbmc10k.zarr --model models/pbmc10k --set finetune.finetune_encoder=true
    """
    from omicsclip.heads import finetune_embedding

    cfg = load_cfg(config, (set_ or []) + ([f"finetune.fusion={fusion}"] if fusion else []))
    ev = cfg["evaluate"]
    meta = finetune_embedding(emb, out, label_key=labels or ev["label_key"], section=cfg["finetune"],
                              labels_per_class=labels_per_class, ignore_labels=ignore_label or ev["ignore_labels"],
                              seed=seed, store=store, model=model, overwrite=overwrite)
    typer.echo(dumps_json({"head": str(out), "classes": meta["classes"], "metrics": meta["metrics"]}), nl=False)


@guarded
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="INPUT [INPUT2]: new cells, any ingest format.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="The model folder (MODEL_DIR).")],
    head: Annotated[Path, typer.Option("--head", help="Head folder (HEAD_DIR) from `omicsclip finetune`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions TSV to create.", dir_okay=False)],
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="auto | 10x-h5 | 10x-mtx | h5ad | h5ad-pair | h5mu | csv | zarr.")] = "auto",
    modality: Annotated[str | None, typer.Option(
        "--modality", help="Use one modality: rna | prot (a single-matrix input holds it; of a paired input, "
        "that part).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Label new cells with a trained head; write one TSV row per cell.

    Columns: barcode, label, probability, weight_rna, weight_prot (per-modality weights), uncertainty,
    uncertainty_rna, uncertainty_prot, has_rna, has_prot. RNA-only or protein-only cells are predicted from the
    modality they have (flagged in has_rna/has_prot). A head trained on another model's embeddings is refused.

    Examples
    --------
    omicsclip predict new_cells.h5ad --model models/pbmc10k --head heads/pbmc10k --out predictions.tsv

    omicsclip predict adt_only.csv --modality prot --model models/pbmc10k --head heads/pbmc10k --out p.tsv
    """
    from omicsclip.heads import predict_cells

    cfg = load_cfg(config, set_)
    summary = predict_cells(inputs, model, head, out, fmt=fmt, modality=modality, reader=cfg["ingest"],
                            chunk_cells=cfg["query"]["chunk_cells"], overwrite=overwrite)
    typer.echo(dumps_json({"predictions": str(out), **summary}), nl=False)


@guarded
def fewlabel(
    emb: Annotated[Path, typer.Argument(help="Embeddings (EMB.zarr) from `omicsclip embed`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results JSON to create.", dir_okay=False)],
    labels: Annotated[str | None, typer.Option(
        "--labels", help="obs column with the labels (default: evaluate.label_key).")] = None,
    ignore_label: Annotated[list[str] | None, typer.Option(
        "--ignore-label", help="Label excluded from the class set (repeatable; default: evaluate.ignore_labels)."
    )] = None,
    labels_per_class: Annotated[list[int] | None, typer.Option(
        "--labels-per-class", min=1, help="Learning-curve point (repeatable; default: evaluate.labels_per_class)."
    )] = None,
    draws: Annotated[int | None, typer.Option(
        "--draws", min=1, help="Random label draws per point (default: evaluate.n_draws).")] = None,
    store: StoreOpt = None,
    model: ModelOpt = None,
    eval_split: Annotated[str, typer.Option(
        "--eval-split", help="Split to evaluate on: test (default) | val (for tuning).")] = "test",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Base seed of draws and heads.")] = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Few-label learning curves of every head (each fusion, each single modality) plus a robustness run.

    Labelled cells are drawn from the training split, evaluated on the test split: accuracy, macro-F1 and ECE,
    mean ± sd over draws. Baseline: logistic regression on 50 RNA PCs (from --store/--model, or obsm X_pca_rna
    of EMB.zarr). Robustness: one modality replaced by random unit vectors for half of the test cells.

    Examples
    --------
    omicsclip fewlabel pbmc10k_emb.zarr --out fewlabel.json

    omicsclip fewlabel pbmc10k_emb.zarr --out fewlabel.json --store pbmc10k.zarr --model models/pbmc10k

    omicsclip fewlabel emb.zarr --out quick.json --labels-per-class 10 --draws 2 --ignore-label unknown
    """
    from omicsclip.evaluation.fewlabel import markdown_table, run_fewlabel

    cfg = load_cfg(config, set_)
    ev = cfg["evaluate"]
    res = run_fewlabel(emb, out, label_key=labels or ev["label_key"],
                       ignore_labels=ignore_label if ignore_label is not None else ev["ignore_labels"],
                       labels_per_class=labels_per_class or ev["labels_per_class"], n_draws=draws or ev["n_draws"],
                       section=cfg["finetune"], store=store, model=model, n_pcs=ev["n_pcs"],
                       eval_split=eval_split, seed=seed, overwrite=overwrite)
    typer.echo(markdown_table(res))


def register(app: typer.Typer) -> None:
    """Add ``finetune``, ``predict`` and ``fewlabel`` to ``app``."""
    app.command("finetune")(finetune)
    app.command("predict")(predict)
    app.command("fewlabel")(fewlabel)
