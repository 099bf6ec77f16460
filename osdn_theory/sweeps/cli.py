"""``osdn sweep FILE --out DIR`` (run or resume a sweep) and ``osdn plot DIR`` (its standard figures)."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Annotated

import typer

#: ``--stop-after`` of ``osdn sweep`` and ``osdn train`` (:func:`~osdn_theory.sweeps.runner.run_sweep`'s
#: ``stop_after``).
StopAfter = Annotated[
    float | None,
    typer.Option(
        "--stop-after",
        help="Seconds after which no run starts; runs in flight finish and are saved, the rest wait "
        "for the next invocation (executors serial and local).",
    ),
]


@contextlib.contextmanager
def run_errors(command: str, file: Path, out: Path, lost: str, on_interrupt=None):
    """The shared error handling of ``osdn sweep`` and ``osdn train``: a caller or environment problem is one
    ``error:`` line and exit 2; Ctrl-C says how many runs are saved and how to resume, exit 130. ``lost`` says
    what an interruption loses (e.g. "at most the runs in flight are lost"). ``on_interrupt()`` (e.g. redraw
    the report from the saved runs) runs after Ctrl-C; its failure, or a second Ctrl-C, only skips it."""
    from .executors import EnvironmentProblem
    from .store import ResultsStore

    try:
        yield
    except (ValueError, EnvironmentProblem) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        if on_interrupt is not None:
            try:
                on_interrupt()
            except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - the runs are saved either way
                typer.echo(f"warning: {type(err).__name__} while saving the report: {err}", err=True)
        done = len(ResultsStore(out, repair=False).records) if (out / "results.jsonl").exists() else 0
        cmd = " ".join(shlex.quote(a) for a in ["osdn", command, str(file), "--out", str(out)])
        typer.echo(
            f"\ninterrupted: {done} finished run(s) are saved in {out}/results.jsonl ({lost}); to resume, rerun "
            f"the same command, e.g. {cmd} [same options]",
            err=True,
        )
        raise typer.Exit(130) from None


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
        workers: Annotated[
            int | None,
            typer.Option(
                help="Worker processes (default: CPU count); local pool or a Dask cluster started here only."
            ),
        ] = None,
        max_runs: Annotated[
            int | None, typer.Option("--max-runs", help="Execute at most this many missing runs.")
        ] = None,
        stop_after: StopAfter = None,
        retry_failed: Annotated[bool, typer.Option(help="Run again the runs recorded as failed.")] = False,
        batch_size: Annotated[
            int | None, typer.Option(help="Seeds stacked per task (default: the file's batch_size).")
        ] = None,
        progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
        threads: Annotated[
            int, typer.Option(help="Torch threads per run, every executor (1: one run per core is fastest).")
        ] = 1,
        connect_timeout: Annotated[
            float, typer.Option("--connect-timeout", help="Seconds to reach the Dask --scheduler.")
        ] = 10.0,
        worker_timeout: Annotated[
            float,
            typer.Option(
                "--worker-timeout", help="Seconds a Dask cluster may have no live worker before stopping."
            ),
        ] = 60.0,
        append_different_spec: Annotated[
            bool,
            typer.Option(
                "--append-different-spec",
                help="Allow adding this sweep to a folder holding results of another spec (kept apart by spec hash).",
            ),
        ] = False,
    ) -> None:
        """Run the missing runs of a sweep file; rerun the same command to resume after a crash."""
        from .runner import run_sweep
        from .spec import load_spec

        with run_errors("sweep", file, out, "at most the runs in flight are lost"):
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
                threads=threads,
                connect_timeout=connect_timeout,
                worker_timeout=worker_timeout,
                append_different_spec=append_different_spec,
                stop_after=stop_after,
            )
        div = f", {summary.diverged} diverged" if summary.diverged else ""
        typer.echo(
            f"{spec.name}: {summary.total} runs, {summary.skipped} already done, {summary.executed} executed "
            f"({summary.failed} failed{div}), {summary.remaining} remaining, {summary.elapsed_s:.1f} s -> {out}"
        )
        if summary.stopped:
            typer.echo(
                f"stopped by --stop-after: {summary.remaining} run(s) not started; rerun the same command to "
                "continue",
                err=True,
            )
        if summary.diverged_recorded:
            from .evaluate import DIVERGED_R1

            typer.echo(
                f"{summary.diverged_recorded} run(s) of this sweep are recorded as diverged (memory R1 > "
                f"{DIVERGED_R1:g}; e.g. OSDN without s_max); figures mark them",
                err=True,
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
        best_member: Annotated[
            bool,
            typer.Option(
                "--best-member",
                help="Calibration profile: one line per schedule family (its best member), not every method.",
            ),
        ] = False,
    ) -> None:
        """Draw the standard figures of a sweep folder into DIR/figures."""
        from ..plots import plot_sweep

        try:
            paths = plot_sweep(out, fmt=fmt, best_member=best_member)
        except ValueError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except OSError as err:
            typer.echo(
                f"error: out: cannot write figures under {str(out)!r}: {err.strerror or err}", err=True
            )
            raise typer.Exit(2) from None
        for p in paths:
            typer.echo(str(p))
