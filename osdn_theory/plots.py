"""Standard figures of a sweep folder (``osdn plot DIR``), drawn with matplotlib's Agg backend.

- ``calibration_profile_<stream>.png``: calibration loss ``(1 − s_t)²`` against tokens since a shift, one line
  per method (mean over seeds, heads and shifts; band = min–max over seeds), log scale.
- ``recovery_heatmap_<stream>_<rate>.png``: mean recovery time (tokens) over the swept parameters of each
  APF rate rule (a 1-D strip when one parameter is swept).
- ``r1_bars_<stream>.png``: stored-set recall residual ratio R1 per method, bar = mean over seeds, dots = seeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

__all__ = ["load_results", "plot_sweep", "plot_calibration_profile", "plot_recovery_heatmap", "plot_r1_bars"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def load_results(out: str | Path):
    """The successful runs of a sweep folder as a DataFrame (from ``results.jsonl``, which is always current).

    Adds a ``method_label`` column (e.g. ``osdn[ratio,constant(lam=0.01)]``) and ``stream_label``.
    """
    from .sweeps.spec import method_label
    from .sweeps.store import RESULTS, ResultsStore, records_to_frame

    p = Path(out)
    if not (p / RESULTS).exists():
        raise ValueError(f"out: expected a sweep folder containing {RESULTS}, got {str(out)!r}")
    store = ResultsStore(p)
    recs = [r for r in store.records.values() if r["status"] == "ok"]
    if not recs:
        raise ValueError(f"out: {str(out)!r} has no successful runs to plot")
    df = records_to_frame(recs)
    df["method_label"] = [method_label(r["config"]["method"]) for r in recs]
    df["stream_label"] = [_stream_label(r["config"]["stream"]) for r in recs]
    return df


def _stream_label(stream: dict) -> str:
    fam = stream.get("family", "?")
    keys = [k for k in ("T", "K", "segment_length", "num_segments") if k in stream]
    return fam + ("(" + ",".join(f"{k}={stream[k]}" for k in keys) + ")" if keys else "")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s).strip("_")[:80]


def plot_calibration_profile(df, stream_label: str, path: Path, before: int | None = None):
    """Calibration loss around shifts, one line per method (needs the ``series.cal_profile`` column)."""
    plt = _pyplot()
    sub = df[df["stream_label"] == stream_label]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for lab, g in sorted(sub.groupby("method_label"), key=lambda x: x[0]):
        prof = np.array([np.asarray(p, dtype=float) for p in g["series.cal_profile"]])
        x = np.arange(prof.shape[1]) - (before if before is not None else 0)
        mean = prof.mean(0)
        (line,) = ax.plot(x, mean, label=f"{lab} (n={len(g)} seeds)", lw=1.3)
        ax.fill_between(x, prof.min(0), prof.max(0), color=line.get_color(), alpha=0.15, lw=0)
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("tokens since distribution shift (shift at 0)")
    ax.set_ylabel("calibration loss (1 − s_t)²  [dimensionless]")
    ax.set_title(
        f"Calibration around shifts — {stream_label}\nmean over shifts, heads, seeds; band = seed min–max"
    )
    ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _method_params(df) -> list[str]:
    cols = [c for c in df.columns if c.startswith("method.") and c != "method.name"]
    return [c for c in cols if df[c].astype(str).nunique() > 1]


def plot_recovery_heatmap(df, stream_label: str, rate_col: str, rate: str, path: Path):
    """Mean recovery time over the swept parameters of one APF rate rule; returns None if nothing is swept."""
    plt = _pyplot()
    sub = df[(df["stream_label"] == stream_label) & (df[rate_col].astype(str) == rate)]
    params = [c for c in _method_params(sub) if c != rate_col]
    if not params:
        return None
    if len(params) == 1:
        params = params + [None]
    p0, p1 = params[0], params[1]
    extra = params[2:]
    agg = sub.groupby([c for c in (p0, p1) if c is not None])["recovery_time"]
    mean, n = agg.mean(), agg.count()
    xs = sorted(sub[p0].dropna().unique(), key=_sortkey)
    ys = sorted(sub[p1].dropna().unique(), key=_sortkey) if p1 else [None]
    grid = np.full((len(ys), len(xs)), np.nan)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            key = x if p1 is None else (x, y)
            if key in mean.index:
                grid[i, j] = mean[key]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(xs), 1.6 + 0.6 * len(ys)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis_r", origin="lower")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", color="w", fontsize=7)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30, fontsize=7)
    ax.set_xlabel(p0.removeprefix("method."))
    if p1:
        ax.set_yticks(range(len(ys)), [str(y) for y in ys], fontsize=7)
        ax.set_ylabel(p1.removeprefix("method."))
    else:
        ax.set_yticks([])
    nseeds = int(n.max()) if len(n) else 0
    note = f"; averaged over {', '.join(e.removeprefix('method.') for e in extra)}" if extra else ""
    ax.set_title(
        f"Recovery time [tokens], APF rate '{rate}'\n{stream_label}, mean of {nseeds} seeds{note}", fontsize=8
    )
    fig.colorbar(im, ax=ax, label="recovery time [tokens]")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_r1_bars(df, stream_label: str, path: Path, metric: str = "r1"):
    """R1 per method: bar = mean over seeds, black dots = individual seeds."""
    plt = _pyplot()
    sub = df[(df["stream_label"] == stream_label) & df[metric].notna()]
    groups = sorted(sub.groupby("method_label"), key=lambda x: x[0])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(groups) + 2), 4.8))
    for i, (_, g) in enumerate(groups):
        vals = g[metric].to_numpy(float)
        ax.bar(i, vals.mean(), color="C0", alpha=0.6)
        ax.scatter(
            np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, s=9, color="k", zorder=3
        )
    ax.set_xticks(range(len(groups)), [lab for lab, _ in groups], rotation=60, ha="right", fontsize=6)
    ax.set_ylabel("R1 stored-set residual ratio  Σ‖S k_i − v_i‖² / Σ‖v_i‖²")
    nseeds = sub.groupby("method_label")["seed"].nunique().max() if len(sub) else 0
    ax.set_title(
        f"Recall residual ratio R1 at segment ends — {stream_label}\nbar = mean, dots = {nseeds} seeds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _sortkey(x):
    try:
        return (0, float(x))
    except (TypeError, ValueError):
        return (1, str(x))


def plot_sweep(out: str | Path, *, fmt: str = "png") -> list[Path]:
    """Draw every standard figure of the sweep folder ``out`` into ``out/figures``; return the file paths."""
    if fmt not in ("png", "pdf", "svg"):
        raise ValueError(f"fmt: expected one of ['png', 'pdf', 'svg'], got {fmt!r}")
    df = load_results(out)
    figdir = Path(out) / "figures"
    figdir.mkdir(exist_ok=True)
    manifest = Path(out) / "manifest.json"
    before = None
    if manifest.exists():
        before = json.loads(manifest.read_text()).get("metrics_settings", {}).get("profile_before")
    paths: list[Path] = []
    for sl in sorted(df["stream_label"].unique()):
        tag = _slug(sl)
        if (
            "series.cal_profile" in df
            and df.loc[df["stream_label"] == sl, "series.cal_profile"].notna().all()
        ):
            paths.append(
                plot_calibration_profile(df, sl, figdir / f"calibration_profile_{tag}.{fmt}", before)
            )
        rate_col = "method.apf.rate.name"
        if rate_col in df and "recovery_time" in df:
            for rate in sorted(df.loc[df["stream_label"] == sl, rate_col].dropna().astype(str).unique()):
                p = plot_recovery_heatmap(
                    df, sl, rate_col, rate, figdir / f"recovery_heatmap_{tag}_{_slug(rate)}.{fmt}"
                )
                if p is not None:
                    paths.append(p)
        if "r1" in df:
            paths.append(plot_r1_bars(df, sl, figdir / f"r1_bars_{tag}.{fmt}"))
    return paths
