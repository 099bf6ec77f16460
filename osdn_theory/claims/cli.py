"""``osdn verify``: run the claims registry, print a table, write ``report.json``, ``report.md`` and figures."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ._registry import labels, run_claim, select
from .report import format_number, summary, write_report


def _parse_only(only: str | None) -> list[str] | None:
    if only is None:
        return None
    try:
        return [s.label for s in select(only)]
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("only: "), param_hint="--only") from None


def _print_table(results) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    style = {"PASS": "green", "FAIL": "bold red", "ERROR": "bold red", "measured": "cyan"}
    table = Table(title="OSDN theory claims", show_lines=False)
    for col in ("claim", "statement", "measured", "bound", "verdict"):
        table.add_column(col, overflow="fold")
    for r in results:
        label = r.label + (" (neg. control)" if r.negative_control else "")
        verdict = f"[{style[r.verdict]}]{r.verdict}[/]"
        table.add_row(
            escape(label), escape(r.statement), format_number(r.measured), format_number(r.bound), verdict
        )
    Console(width=160).print(table)


def register(app: typer.Typer) -> None:
    """Add the ``verify`` command to the ``osdn`` application."""

    @app.command()
    def verify(
        quick: bool = typer.Option(
            True,
            "--quick/--full",
            help="Problem sizes: --quick (default, well under a minute) or --full (about a minute).",
        ),
        only: str | None = typer.Option(
            None,
            "--only",
            help="Comma-separated claim labels, e.g. C4,C7 (a family label selects its variants).",
        ),
        out: Path = typer.Option(
            Path("report"), "--out", help="Output directory for report.json, report.md, figures."
        ),
        seed: int = typer.Option(0, "--seed", help="Root seed (non-negative integer)."),
        figures: bool = typer.Option(True, "--figures/--no-figures", help="Write figures (matplotlib)."),
        list_claims: bool = typer.Option(False, "--list", help="List the claim labels and exit."),
    ) -> None:
        """Check every OSDN theory claim (C1–C8, negative controls, recall measurement) and write a report.

        Exits with status 1 if any pass/fail claim fails or errors; measurements never fail the run.
        """
        if list_claims:
            for s in select(None):
                typer.echo(f"{s.label:16s} {s.title}")
            raise typer.Exit(0)
        if seed < 0:
            raise typer.BadParameter(f"expected a non-negative integer, got {seed}", param_hint="--seed")
        if out.exists() and not out.is_dir():
            raise typer.BadParameter(
                f"expected a directory, got an existing file {str(out)!r}", param_hint="--out"
            )
        wanted = _parse_only(only)
        specs = select(wanted) if wanted is not None else select(None)
        budget = "quick" if quick else "full"
        from tqdm import tqdm

        t0 = time.perf_counter()
        results = []
        bar = tqdm(specs, desc="claims", unit="claim", leave=False)
        for spec in bar:
            bar.set_postfix_str(spec.label)
            results.append(run_claim(spec, budget=budget, seed=seed, catch=True))
        bar.close()
        dt = time.perf_counter() - t0
        paths = write_report(results, out, budget=budget, seed=seed, duration_s=dt, figures=figures)
        _print_table(results)
        summ = summary(results)
        typer.echo(
            f"{summ['total']} claims ({budget}, seed {seed}) in {dt:.1f} s; "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(summ['counts'].items()))}. "
            f"Report: {paths['md']}"
        )
        for r in results:
            if r.error:
                typer.echo(f"{r.label}: {r.error}", err=True)
        if not summ["ok"]:
            typer.echo(f"FAILED claims: {', '.join(summ['failed'])}", err=True)
            raise typer.Exit(1)


__all__ = ["register", "labels"]
