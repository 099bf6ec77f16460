"""Writing a claims report: ``report.json``, ``report.md`` and figures (matplotlib, Agg backend)."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._validate import check_choice, check_scalar
from ._registry import BUDGETS, ClaimResult

__all__ = ["format_number", "results_frame", "summary", "write_figures", "write_report"]


def format_number(x: float | None) -> str:
    """Compact display of a measured value or bound (``—`` for None)."""
    if x is None:
        return "—"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax != 0 and (ax < 1e-3 or ax >= 1e5):
        return f"{x:.3e}"
    return f"{x:.4g}"


def results_frame(results: Sequence[ClaimResult]):
    """A ``pandas.DataFrame`` with one row per claim (label, title, comparison, measured, bound, verdict,
    negative_control, duration_s, budget, seed) — for notebooks."""
    import pandas as pd

    cols = (
        "label",
        "title",
        "comparison",
        "measured",
        "bound",
        "negative_control",
        "duration_s",
        "budget",
        "seed",
    )
    rows = [dict({c: getattr(r, c) for c in cols}, verdict=r.verdict) for r in results]
    return pd.DataFrame(rows, columns=[*cols, "verdict"])


def summary(results: Sequence[ClaimResult]) -> dict[str, Any]:
    """Counts of verdicts and whether the run as a whole passed (no FAIL and no ERROR)."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    failed = [r.label for r in results if r.verdict in ("FAIL", "ERROR")]
    return dict(counts=counts, failed=failed, ok=not failed, total=len(results))


def _versions() -> dict[str, str]:
    import numpy
    import scipy
    import sympy
    import torch

    from .. import __version__

    return dict(
        osdn_theory=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=numpy.__version__,
        scipy=scipy.__version__,
        sympy=sympy.__version__,
    )


def write_figures(results: Sequence[ClaimResult], out: Path) -> list[str]:
    """Convergence curves for C7 (incl. the negative control) and contraction histograms for C4.

    Returns the file names written (relative to ``out``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by = {r.label: r for r in results if r.error is None}
    written: list[str] = []
    c7_batch_like = ("C7-batch", "C7-neg", "C7-neg-near-diagonal", "C7-neg-box", "C7-neg-nolearn")
    if any(lab in by for lab in ("C7", *c7_batch_like)):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        ax = axes[0]
        if "C7" in by:
            s = by["C7"].series
            ax.semilogy(np.maximum(s["rho_osdn_seed0"], 1e-300), label="OSDN ratio rule ρ_t = (1 − s_t)²")
            ax.semilogy(s["rho_deltanet_seed0"], label="DeltaNet ρ_t = (1 − β)²")
            ax.set_title(f"C7 SG-token (L2-normalized keys), seed {by['C7'].seed}, realisation 0")
            ax.set_xlabel("token t")
            ax.set_ylabel("ρ_t = ‖r⁺_t‖² / ‖e_t‖²  [dimensionless]")
            ax.legend(fontsize=8)
        ax = axes[1]
        for lab, name in (
            ("C7-batch", "diagonal Hessian (P* in class)"),
            ("C7-neg", "rotated Hessian (control)"),
            ("C7-neg-near-diagonal", "rotation θ = 3e-3 (control)"),
            ("C7-neg-box", "box excluding P* (control)"),
            ("C7-neg-nolearn", "no learning (control)"),
        ):
            if lab in by and "log10_F_seed0" in by[lab].series:
                ax.plot(by[lab].series["log10_F_seed0"], label=f"{lab}: {name}")
        seeds = sorted({by[lab].seed for lab in c7_batch_like if lab in by})
        ax.set_title(f"C7 SG-batch: OSGM diagonal preconditioning, seed {seeds}, realisation 0")
        ax.set_xlabel("iteration j")
        ax.set_ylabel("log10 (F_j / F_0)  [dimensionless]")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fig_C7_convergence.png", dpi=110)
        plt.close(fig)
        written.append("fig_C7_convergence.png")
    if "C4-bound" in by:
        s = by["C4-bound"].series
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(s["contraction"], bins=40, alpha=0.7, label="‖r⁺‖/‖e‖ (measured)")
        ax.hist(s["bound_factor"], bins=40, alpha=0.5, label="bound max(|1 − βd_min‖k‖²|, |1 − βd_max‖k‖²|)")
        ax.axvline(1.0, color="k", ls="--", lw=1)
        ax.set_title(f"C4 token-local contraction (d in a box), seed {by['C4-bound'].seed}")
        ax.set_xlabel("ratio per token  [dimensionless]")
        ax.set_ylabel("tokens (count)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "fig_C4_contraction.png", dpi=110)
        plt.close(fig)
        written.append("fig_C4_contraction.png")
    return written


def _fraction_text(v: Any) -> str | None:
    if isinstance(v, dict) and {"k", "n", "low", "high", "required"} <= set(v):
        return f"{v['k']}/{v['n']} [{v['low']:.2f}, {v['high']:.2f}] vs {v['required']:.2f}"
    return None


def statistic_text(r: ClaimResult) -> str:
    """The pass-fraction statistic behind a verdict, ``k/n [low, high] vs required`` (95 % Clopper–Pearson), for
    claims judged over many realisations; ``—`` for the others. Several families are joined by ``;``."""
    ev = r.evidence or {}
    own = _fraction_text(ev.get("verdict"))
    if own is not None:
        return own
    per = ev.get("per_angle") or ev.get("families")
    if isinstance(per, dict):
        parts = [f"{k}: {t}" for k, f in per.items() if (t := _fraction_text(f.get("verdict"))) is not None]
        if parts:
            return "; ".join(parts)
    return "—"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_evidence_table(table: Any) -> list[str]:
    """Markdown lines for an evidence ``table`` dict (``columns``, ``rows``, optional ``caption``, ``notes``)."""
    if not isinstance(table, dict) or not table.get("columns"):
        return []
    row = lambda cells: "| " + " | ".join(_md_escape(str(c)) for c in cells) + " |"
    lines = [_md_escape(str(table["caption"])), ""] if table.get("caption") else []
    lines += [row(table["columns"]), "|" + "---|" * len(table["columns"])]
    lines += [row(r) for r in table.get("rows", [])] + [""]
    for note in table.get("notes", []):
        lines += [_md_escape(str(note)), ""]
    return lines


def write_report(
    results: Sequence[ClaimResult],
    out: str | Path,
    *,
    budget: str,
    seed: int,
    duration_s: float,
    figures: bool = True,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and (optionally) figures into ``out`` (created if needed)."""
    bad = [type(r).__name__ for r in results if not isinstance(r, ClaimResult)]
    if bad:
        raise ValueError(f"results: expected ClaimResult objects, got {sorted(set(bad))}")
    check_choice("budget", budget, BUDGETS)
    seed = int(check_scalar("seed", seed, 0, None, integer=True))
    duration_s = check_scalar("duration_s", duration_s, 0.0, None)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a directory path, got an existing file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    figs = write_figures(results, out) if figures else []
    summ = summary(results)
    payload = dict(
        budget=budget,
        seed=seed,
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        duration_s=duration_s,
        versions=_versions(),
        summary=summ,
        figures=figs,
        claims=[r.to_dict() for r in results],
    )
    paths = dict(json=out / "report.json", md=out / "report.md")
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
    lines = [
        "# OSDN theory claims report",
        "",
        f"Budget `{budget}`, seed {seed}, {len(results)} claims in {duration_s:.1f} s. "
        f"Verdicts: {', '.join(f'{k} {v}' for k, v in sorted(summ['counts'].items()))}.",
        "",
        "A negative control removes an assumption on purpose; PASS there means the check failed as predicted.",
        "",
        "Claims judged over many realisations show their statistic: k of n realisations passed, the 95 % "
        "Clopper–Pearson interval, and the pre-registered fraction (PASS iff the lower end clears it; a negative "
        "control behaves as predicted iff the upper end is below it).",
        "",
        "| claim | statement | comparison | measured | bound | statistic | verdict | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tag = " (negative control)" if r.negative_control else ""
        lines.append(
            f"| {r.label}{tag} | {_md_escape(r.statement)} | {r.comparison} | {format_number(r.measured)} | "
            f"{format_number(r.bound)} | {_md_escape(statistic_text(r))} | **{r.verdict}** | {r.duration_s:.2f} |"
        )
    lines.append("")
    for f in figs:
        lines += [f"![{f}]({f})", ""]
    for r in results:
        lines += [f"## {r.label}: {r.title}", "", r.statement, ""]
        if r.assumptions:
            lines += ["Assumptions: " + "; ".join(r.assumptions) + ".", ""]
        if r.proof:
            lines += [f"Symbolic proof: `python -m {r.proof}`.", ""]
        lines += _md_evidence_table(r.evidence.get("table"))
        if r.error:
            lines += [f"Error: `{r.error}`", ""]
        ev = json.dumps(r.evidence, ensure_ascii=False, indent=1)
        lines += ["```json", ev, "```", ""]
    paths["md"].write_text("\n".join(lines))
    return paths
