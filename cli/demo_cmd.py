"""``omicsclip demo`` (the Snakemake pipeline on synthetic data), ``omicsclip report`` and ``omicsclip select``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from omicsclip.cli._common import ConfigOpt, SetOpt, Terminated, guarded, load_cfg
from omicsclip.errors import InputError, OmicsclipError

DEMO_SINGLE_THREADED = ("ingest", "train", "evaluate", "embed", "index", "query")
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def snakemake_command(*, snakefile: Path, configfiles: list[Path], workdir: Path, cores: int,
                      dry_run: bool = False) -> list[str]:
    """Build the ``snakemake`` command line of this environment (later config files override earlier ones)."""
    exe = _venv_bin() / "snakemake"
    cmd = [str(exe if exe.exists() else (shutil.which("snakemake") or "snakemake")),
           "--snakefile", str(snakefile), "--directory", str(workdir), "--cores", str(cores),
           # small data: one thread per job and jobs side by side beat multi-threaded small matrix products
           "--set-threads", *[f"{rule}=1" for rule in DEMO_SINGLE_THREADED],
           "--configfile", *map(str, configfiles)]
    if dry_run:
        cmd.append("--dry-run")
    return cmd


def write_overrides(overrides: list[str] | None, path: Path) -> Path:
    """Write ``section.key=value`` overrides as a YAML config (empty when there are none)."""
    import yaml

    from omicsclip.config import deep_merge, parse_override

    merged: dict = {}
    for item in overrides or []:
        merged = deep_merge(merged, parse_override(item))
    path.write_text("# omicsclip demo --set overrides of configs/demo.yaml (rewritten on every run)\n"
                    + (yaml.safe_dump(merged, sort_keys=False) if merged else "{}\n"))
    return path


def run_workflow(cmd: list[str]) -> None:
    """Run Snakemake with this environment's bin folder first on PATH (so rules call this ``omicsclip``).

    SIGTERM (:class:`~omicsclip.cli._common.Terminated` under :func:`~omicsclip.cli._common.guarded`) is passed
    on to Snakemake, which stops its jobs and removes their incomplete outputs; once it has ended, the command
    ends as terminated (exit 143). A second SIGTERM ends this process at once.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(_venv_bin()), env.get("PATH", "")])
    try:
        proc = subprocess.Popen(cmd, env=env)
    except FileNotFoundError:
        raise OmicsclipError(f"{cmd[0]}: snakemake is not installed in this environment") from None
    try:
        rc = proc.wait()
    except Terminated:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    except BaseException:  # e.g. Ctrl-C: as subprocess.run does
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise OmicsclipError(f"snakemake failed (exit {rc}); the failing rule's log is named above")


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``report`` and ``select`` to ``app``."""

    @app.command("demo")
    @guarded
    def demo(
        out: Annotated[Path, typer.Option("--out", "-o", help="Working folder for the demo run.",
                                          file_okay=False)] = Path("demo_out"),
        cores: Annotated[int, typer.Option("--cores", "-j", min=1, help="CPU cores Snakemake may use.")] = 2,
        set_: Annotated[list[str] | None, typer.Option(
            "--set", help="Change a setting of configs/demo.yaml: section.key=value (repeatable).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only show what would run.")] = False,
    ) -> None:
        """Run the whole Snakemake pipeline on synthetic CITE-seq data and print where the report is.

        synth -> ingest -> train (one model per temperature) -> evaluate -> select on validation retrieval ->
        embed -> index -> query -> finetune / fewlabel -> report.html. Takes a few minutes on 2 CPU cores.
        Running it again does nothing; changing a setting reruns only what depends on it.

        Examples
        --------
        omicsclip demo --out demo_run --cores 2

        omicsclip demo --out demo_run --set train.epochs=30     # retrains, reuses the data
        """
        from omicsclip.config import config_path
        from omicsclip.workflow import snakefile as packaged_snakefile

        snakefile, configfile = packaged_snakefile(), config_path("demo.yaml")
        if not snakefile.exists():
            raise InputError(f"{snakefile}: not found; reinstall omicsclip (the workflow ships inside the package)")
        load_cfg(configfile, set_)  # a bad --set is a one-line error here, not a Snakemake traceback
        out.mkdir(parents=True, exist_ok=True)
        extra = write_overrides(set_, out / "demo_overrides.yaml")
        run_workflow(snakemake_command(snakefile=snakefile, configfiles=[configfile, extra], workdir=out,
                                       cores=cores, dry_run=dry_run))
        if not dry_run:
            typer.echo(f"report: {(out / 'results' / 'demo' / 'report.html').resolve()}")

    @app.command("report")
    @guarded
    def report(
        run: Annotated[list[Path], typer.Option("--run", help="Run folder with model/ and metrics.json "
                                                "(repeatable; named t<temperature>).", file_okay=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="report.html to write.", dir_okay=False)],
        dataset: Annotated[str, typer.Option("--dataset", help="Dataset name (title).")] = "dataset",
        inspect: Annotated[Path | None, typer.Option(help="omicsclip inspect --json output.")] = None,
        selection: Annotated[Path | None, typer.Option(help="omicsclip select output.")] = None,
        embeddings: Annotated[Path | None, typer.Option(help="Embeddings (AnnData zarr) for UMAPs.")] = None,
        query: Annotated[Path | None, typer.Option(help="omicsclip query output folder.")] = None,
        store: Annotated[Path | None, typer.Option(help="Paired store (measured protein).")] = None,
        fewlabel: Annotated[Path | None, typer.Option(help="omicsclip fewlabel output.")] = None,
        figures: Annotated[Path | None, typer.Option(help="Also write every figure as PNG into this folder.")] = None,
        max_umap_cells: Annotated[int | None, typer.Option(
            min=10, help="Cells drawn in the UMAPs  [default: the report's, 3000]")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        overwrite: OverwriteOpt = False,
    ) -> None:
        r"""Write a self-contained HTML report (plots embedded) of one dataset's runs.

        Examples
        --------
        omicsclip report --dataset demo --run results/demo/t0.05 --run results/demo/t0.1 \
            --selection results/demo/best/selection.json --embeddings results/demo/best/embeddings.zarr \
            --query results/demo/best/query --store results/demo/store.zarr --out report.html
        """
        from omicsclip.report import ReportInputs, write_report

        cfg = load_cfg(config, set_)
        label_key = cfg.get("datasets", {}).get(dataset, {}).get("label_key", cfg["evaluate"]["label_key"])
        inputs = ReportInputs(dataset=dataset, runs=run, inspect=inspect, selection=selection,
                              embeddings=embeddings, query=query, store=store, fewlabel=fewlabel, config=cfg,
                              label_key=label_key)
        limits = {} if max_umap_cells is None else {"max_umap_cells": max_umap_cells}
        write_report(inputs, out, figures_dir=figures, overwrite=overwrite, **limits)
        typer.echo(f"wrote {out}")

    @app.command("select")
    @guarded
    def select(
        metrics: Annotated[list[Path], typer.Argument(help="metrics.json of each run (from omicsclip evaluate).",
                                                      exists=True, dir_okay=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="selection.json to write.", dir_okay=False)],
        model: Annotated[list[Path] | None, typer.Option(
            "--model", help="Model folder of each run, in the same order (default: model/ next to metrics).")] = None,
        metric: Annotated[str, typer.Option(help="Validation metric to select on.")] = "recall_at_10",
        copy_model_to: Annotated[Path | None, typer.Option(
            help="Copy the selected model (without checkpoints) to this folder.", file_okay=False)] = None,
        overwrite: OverwriteOpt = False,
    ) -> None:
        """Pick the best run of a temperature sweep on VALIDATION retrieval (never on test cells).

        Examples
        --------
        omicsclip select t0.05/metrics.json t0.1/metrics.json --out best/selection.json

        omicsclip select t*/metrics.json --metric foscttm --out sel.json --copy-model-to best/model
        """
        from omicsclip.evaluation.selection import select_best, write_selection

        sel = select_best(metrics, metric=metric, models=model)
        write_selection(sel, out, copy_model_to=copy_model_to, overwrite=overwrite)
        best = next(r for r in sel["runs"] if r["run"] == sel["selected"])
        typer.echo(f"selected {sel['selected']}: validation {metric} {best['validation'][metric]:.4f}")
