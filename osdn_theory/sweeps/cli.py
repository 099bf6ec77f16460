"""``osdn sweep FILE --out DIR`` (run or resume a sweep) and ``osdn plot DIR`` (its standard figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``sweep`` and ``plot`` commands to the ``osdn`` app."""

    @app.command()
    def sweep(
        file: Annotated[Path, typer.Argument(help="Sweep file (.toml, or .py defining SWEEP).")],
        out: Annotated[Path, typer.Option("--out", help="Results folder (created; reused to resume).")],
        executor: Annotated[str, typer.Option(help="local (process pool), serial, or dask.")] = "local",
        scheduler: Annotated[
            str | None, typer.Option(help="Dask scheduler address, e.g. tcp://host:8786 (executor dask).")
        ] = None,
        workers: Annotated[int | None, typer.Option(help="Worker processes (default: CPU count).")] = None,
        max_runs: Annotated[
            int | None, typer.Option("--max-runs", help="Execute at most this many missing runs.")
        ] = None,
        retry_failed: Annotated[bool, typer.Option(help="Run again the runs recorded as failed.")] = False,
        batch_size: Annotated[
            int | None, typer.Option(help="Seeds stacked per task (default: the file's batch_size).")
        ] = None,
        progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    ) -> None:
        """Run the missing runs of a sweep file; rerun the same command to resume after a crash."""
        from .runner import run_sweep
        from .spec import load_spec

        try:
            spec = load_spec(file)
            summary = run_sweep(
                spec,
                out,
                executor=executor,
                workers=workers,
                scheduler=scheduler,
                max_runs=max_runs,
                retry_failed=retry_failed,
                batch_size=batch_size,
                progress=progress,
            )
        except ValueError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        typer.echo(
            f"{spec.name}: {summary.total} runs, {summary.skipped} already done, {summary.executed} executed "
            f"({summary.failed} failed), {summary.remaining} remaining, {summary.elapsed_s:.1f} s -> {out}"
        )
        if summary.failed or summary.failed_recorded:
            typer.echo(
                f"{summary.failed_recorded} run(s) of this sweep are recorded as failed, with tracebacks, in "
                f"{out}/results.jsonl (--retry-failed runs them again)",
                err=True,
            )
            raise typer.Exit(1)

    @app.command()
    def plot(
        out: Annotated[Path, typer.Argument(help="A sweep results folder.")],
        fmt: Annotated[str, typer.Option("--format", help="Figure file format (png, pdf, svg).")] = "png",
    ) -> None:
        """Draw the standard figures of a sweep folder into DIR/figures."""
        from ..plots import plot_sweep

        try:
            paths = plot_sweep(out, fmt=fmt)
        except ValueError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        for p in paths:
            typer.echo(str(p))
