"""``osdn verify``: run the claims registry, print a table, write ``report.json``, ``report.md`` and figures."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ._registry import _jsonable, labels, run_claim, select
from .report import format_number, statistic_text, summary, write_report


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
    for col in ("claim", "statement", "measured", "bound", "statistic", "verdict"):
        table.add_column(col, overflow="fold")
    for r in results:
        label = r.label + (" (neg. control)" if r.negative_control else "")
        verdict = f"[{style[r.verdict]}]{r.verdict}[/]"
        table.add_row(
            escape(label),
            escape(r.statement),
            format_number(r.measured),
            format_number(r.bound),
            escape(statistic_text(r)),
            verdict,
        )
    Console(width=160).print(table)


def _parse_mutants(names: str | None) -> list[str] | None:
    from ..mutants import get_mutant

    if names is None:
        return None
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise typer.BadParameter(f"expected at least one mutant name, got {names!r}", param_hint="--mutant")
    try:
        return [get_mutant(n).name for n in wanted]
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("mutant: "), param_hint="--mutant") from None


def _load_plugins(plugins: list[str]) -> None:
    from ..plugins import load_plugin

    for i, p in enumerate(plugins):
        try:
            load_plugin(p, argname=f"plugin[{i}]")
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--plugin") from None


def _method_specs(methods: list[str], step: str | None, only: str | None) -> list:
    """The method-generic claim specs of every ``--method`` (filtered by ``--only`` families)."""
    import json

    from .method_claims import method_claims

    if step is not None and not methods:
        raise typer.BadParameter("needs --method", param_hint="--step")
    step_obj = None
    if step is not None:
        try:
            step_obj = json.loads(step)
        except json.JSONDecodeError:
            try:
                step_obj = float(step)
            except ValueError:
                raise typer.BadParameter(
                    f"expected a JSON step-rule table or a number, got {step!r}", param_hint="--step"
                ) from None
    out = []
    for m in methods:
        spec = m
        if m.lstrip().startswith("{"):
            try:
                spec = json.loads(m)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"invalid JSON {m!r}: {exc}", param_hint="--method") from None
        try:
            out += method_claims(spec, step_obj)
        except ValueError as exc:
            hint = "--step" if str(exc).startswith("step") else "--method"
            raise typer.BadParameter(str(exc), param_hint=hint) from None
    if only is not None:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = [w for w in wanted if "[" in w and w not in {s.label for s in out}]
        if unknown:
            raise typer.BadParameter(
                f"unknown claim label(s) {unknown}; the method claims are {[s.label for s in out]}",
                param_hint="--only",
            )
        base = lambda s: s.label.split("[")[0]  # noqa: E731
        out = [
            s for s in out if any(s.label == w or base(s) == w or base(s).startswith(w + "-") for w in wanted)
        ]
    return out


class _NoMutant:
    name = "(no mutant)"


def _run_mutants(wanted, names, targets_only: bool, quick: bool, seed: int, out: Path) -> None:
    """``osdn verify --mutants``: the kill matrix, printed and written to ``out``; exit 1 on a survivor."""
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from tqdm import tqdm

    from ..mutants import kill_matrix, mark, matrix_markdown

    names = _parse_mutants(names)
    budget = "quick" if quick else "full"
    t0 = time.perf_counter()
    bar = tqdm(desc="mutants", unit="claim run", leave=False)

    def progress(m: str, label: str) -> None:
        bar.set_postfix_str(f"{m}: {label}")
        bar.update(1)

    baseline, rows, _ = kill_matrix(
        names, wanted, budget=budget, seed=seed, targets_only=targets_only, progress=progress
    )
    bar.close()
    dt = time.perf_counter() - t0
    labels = list(baseline)
    style = {"F": "bold red", "E": "bold red"}
    table = Table(title="Mutation suite: kill matrix (F fail, E error, · pass, m measurement)")
    table.add_column("mutant", no_wrap=True)
    for lab in labels:
        table.add_column(escape(lab), justify="center", overflow="fold")
    table.add_column("killed")

    def cell(v, changed=False):
        c = mark(v, changed)
        return f"[{style[c[0]]}]{c}[/]" if c[:1] in style else escape(c)

    table.add_row("(no mutant)", *[cell(baseline[lab]) for lab in labels], "")
    for r in rows:
        status = (
            "[green]yes[/]"
            if r.killed
            else "unkillable"
            if r.unkillable
            else "[bold red]SURVIVED[/]"
            if r.tested
            else "not tested"
        )
        cells = [cell(r.verdicts.get(lab), lab in r.measured_changes) for lab in labels]
        table.add_row(escape(r.name), *cells, status)
    width = 4 + max(len(r.name) for r in [*rows, _NoMutant]) + sum(len(lab) + 3 for lab in labels) + 16
    Console(width=max(120, width)).print(table)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(
        budget=budget,
        seed=seed,
        duration_s=dt,
        claims=labels,
        targets_only=targets_only,
        baseline=baseline,
        mutants=[r.to_dict() for r in rows],
        survived=[r.name for r in rows if r.survived_unexpectedly],
        unkillable={r.name: r.unkillable for r in rows if r.unkillable},
    )
    (out / "mutants.json").write_text(json.dumps(_jsonable(data), indent=2, ensure_ascii=False) + "\n")
    (out / "mutants.md").write_text(matrix_markdown(baseline, rows, budget=budget, seed=seed))
    killed = sum(r.killed for r in rows)
    typer.echo(
        f"{len(rows)} mutants x {len(labels)} claims ({budget}, seed {seed}) in {dt:.1f} s; killed {killed}, "
        f"unkillable {len(data['unkillable'])}, survived {len(data['survived'])}. "
        f"Matrix: {out / 'mutants.md'}"
    )
    for r in rows:
        if r.unkillable and not r.killed:
            typer.echo(f"{r.name}: not killable: {r.unkillable}")
    bad_base = [lab for lab, v in baseline.items() if v in ("FAIL", "ERROR")]
    if bad_base:
        typer.echo(f"claims failing WITHOUT any mutant: {', '.join(bad_base)}", err=True)
    if data["survived"]:
        typer.echo(f"SURVIVING mutants: {', '.join(data['survived'])}", err=True)
    if bad_base or data["survived"]:
        raise typer.Exit(1)


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
        mutants: bool = typer.Option(
            False,
            "--mutants",
            help="Run the mutation suite: every planted bug against the claims; print and write the kill "
            "matrix (mutants.json, mutants.md) instead of the report.",
        ),
        mutant: str | None = typer.Option(
            None, "--mutant", help="With --mutants: comma-separated mutant names (default: all)."
        ),
        targets_only: bool = typer.Option(
            False,
            "--targets-only",
            help="With --mutants: run each mutant only against the claims it declares as targets (fast).",
        ),
        plugin: list[str] = typer.Option(
            [],
            "--plugin",
            help="A .py file or module that registers rules (osdn_theory.register); repeatable.",
        ),
        method: list[str] = typer.Option(
            [],
            "--method",
            help='A registered feedback rule or step rule (a name, or a JSON table {"name": ...}): run the '
            "method-generic claims (C4-bound, C4-clip, C7 SG-token) on it beside the built-ins; repeatable.",
        ),
        step: str | None = typer.Option(
            None,
            "--step",
            help='With --method FEEDBACK_RULE: its step rule as JSON, e.g. \'{"name": "normalized", "c": 0.3}\' '
            "(default normalized, c = 0.5).",
        ),
    ) -> None:
        """Check every OSDN theory claim (C1–C9, negative controls, recall measurement) and write a report.

        Exits with status 1 if any pass/fail claim fails or errors; measurements never fail the run. With
        --mutants, exits with status 1 if a claim fails without any mutant or a killable mutant survives.
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
        if (mutant is not None or targets_only) and not mutants:
            raise typer.BadParameter("needs --mutants", param_hint="--mutant/--targets-only")
        if mutants and (method or step is not None):
            raise typer.BadParameter("not with --mutants", param_hint="--method/--step")
        _load_plugins(plugin)
        extra = _method_specs(method, step, only)
        builtin_only = only
        if only is not None and extra:  # labels of the method claims are not the registry's
            parts = [w.strip() for w in only.split(",") if w.strip() and "[" not in w]
            builtin_only = ",".join(parts)
        wanted = _parse_only(builtin_only) if builtin_only != "" else []
        if mutants:
            _run_mutants(wanted, mutant, targets_only, quick, seed, out)
            return
        specs = (select(None) if wanted is None else select(wanted) if wanted else []) + extra
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
