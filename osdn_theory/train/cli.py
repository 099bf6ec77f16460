"""``osdn train FILE --out DIR``: train (or resume) the runs of a training file into a results folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..sweeps.cli import StopAfter


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the ``osdn`` app."""

    @app.command()
    def train(
        file: Annotated[
            Path, typer.Argument(help="Training file (.toml): model, task and optim tables x seeds.")
        ],
        out: Annotated[Path, typer.Option("--out", help="Results folder (created; reused to resume).")],
        device: Annotated[
            str, typer.Option(help="auto (a CUDA device when present, else the CPU), cpu, cuda, cuda:1, ...")
        ] = "auto",
        executor: Annotated[
            str,
            typer.Option(
                help="serial (default: one run at a time in this process), local (process pool), dask."
            ),
        ] = "serial",
        workers: Annotated[
            int | None,
            typer.Option(help="Worker processes of the local pool (several tiny runs share a GPU)."),
        ] = None,
        scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address (executor dask).")] = None,
        max_runs: Annotated[
            int | None, typer.Option("--max-runs", help="Execute at most this many missing runs.")
        ] = None,
        stop_after: StopAfter = None,
        retry_failed: Annotated[
            bool, typer.Option(help="Run again the runs recorded as failed or skipped.")
        ] = False,
        checkpoint_every: Annotated[
            float,
            typer.Option(
                "--checkpoint-every",
                min=0,
                help="Seconds of training between a run's checkpoints in DIR/checkpoints (0: every step); "
                "Ctrl-C or SIGTERM also saves one at the end of the step in progress. An interrupted run resumes "
                "from its checkpoint.",
            ),
        ] = 60.0,
        report_only: Annotated[
            bool,
            typer.Option(
                "--report-only", help="Run nothing: redraw the summary and the figure from the saved runs."
            ),
        ] = False,
        compare_to: Annotated[
            Path | None,
            typer.Option(
                "--compare-to",
                help="A results folder of the same training file (e.g. committed runs): at the end, write "
                "DIR/compare.md and DIR/compare.csv, run by run, and print whether the runs reproduce.",
            ),
        ] = None,
        progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
        threads: Annotated[int, typer.Option(help="Torch threads per run.")] = 1,
        append_different_spec: Annotated[
            bool,
            typer.Option(
                "--append-different-spec",
                help="Allow adding these runs to a folder holding results of another spec (kept apart by spec hash).",
            ),
        ] = False,
    ) -> None:
        """Train the missing runs of a training file; rerun the same command to resume.

        Writes DIR/summary.md, DIR/summary.csv and DIR/figures/accuracy_vs_pairs.png at the end, also after
        Ctrl-C (from the runs saved so far) and, with --report-only, without running anything.
        """
        import functools

        from ..sweeps.cli import run_errors
        from ..sweeps.runner import run_sweep
        from ..sweeps.store import RESULTS, ResultsStore
        from .run import train_batch
        from .spec import load_train_spec

        def no_saved_runs(option: str, folder: Path) -> None:
            if not (folder / RESULTS).is_file():
                typer.echo(f"error: {option}: no saved runs in {folder} ({RESULTS} is missing)", err=True)
                raise typer.Exit(2)

        if compare_to is not None:
            no_saved_runs("--compare-to", compare_to)

        def report() -> None:
            from .results import write_comparison, write_report

            if not (out / RESULTS).is_file():  # interrupted before any run finished: nothing to draw
                return
            for p in write_report(out):
                typer.echo(str(p))
            if compare_to is not None:
                paths, line = write_comparison(out, compare_to)
                for p in paths:
                    typer.echo(str(p))
                typer.echo(f"against {compare_to}: {line}")

        if report_only:
            no_saved_runs("--report-only", out)
            report()
            return
        lost = "the runs in flight resume from their last checkpoint"
        with run_errors("train", file, out, lost, on_interrupt=report):
            if device != "auto":
                import torch

                try:
                    dev = torch.device(device)
                except RuntimeError:
                    raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}") from None
                if dev.type == "cuda" and not torch.cuda.is_available():
                    raise ValueError(f"device: {device!r} asked, but no CUDA device is available here")
            spec = load_train_spec(file)
            summary = run_sweep(
                spec,
                out,
                executor=executor,
                workers=workers,
                scheduler=scheduler,
                max_runs=max_runs,
                retry_failed=retry_failed,
                batch_size=1,
                progress=progress,
                threads=threads,
                append_different_spec=append_different_spec,
                evaluate=functools.partial(
                    train_batch,
                    device=device,
                    checkpoint_dir=str(out / "checkpoints"),
                    checkpoint_every=checkpoint_every,
                ),
                stop_after=stop_after,
            )
        try:
            report()
        except Exception as err:  # noqa: BLE001 - the runs are saved; the report can be redrawn
            typer.echo(f"warning: summary and figure not written ({type(err).__name__}: {err})", err=True)
        store = ResultsStore(out, repair=False)
        recs = [store.records[h] for h in spec.hashes if h in store.records]
        skipped = [r for r in recs if r["status"] == "skipped"]
        div = f", {summary.diverged} diverged" if summary.diverged else ""
        typer.echo(
            f"{spec.name}: {summary.total} runs, {summary.skipped} already done, {summary.executed} executed "
            f"({summary.failed} failed{div}, {len(skipped)} skipped), {summary.remaining} remaining, "
            f"{summary.elapsed_s:.1f} s -> {out}"
        )
        if summary.stopped:
            typer.echo(
                f"stopped by --stop-after: {summary.remaining} run(s) not started; rerun the same command to "
                "continue",
                err=True,
            )
        if skipped:
            typer.echo(
                f"skipped {len(skipped)} run(s): {skipped[0].get('error')} (--retry-failed runs them once it is)",
                err=True,
            )
        if summary.failed or summary.failed_recorded:
            typer.echo(
                f"{summary.failed_recorded} run(s) are recorded as failed, with tracebacks, in "
                f"{out / RESULTS} (--retry-failed runs them again)",
                err=True,
            )
            raise typer.Exit(1)
