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

from .sweeps.spec import method_label

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
    from .sweeps.store import RESULTS, ResultsStore, records_to_frame

    p = Path(out)
    if not (p / RESULTS).exists():
        raise ValueError(f"out: expected a sweep folder containing {RESULTS}, got {str(out)!r}")
    store = ResultsStore(p, repair=False)  # a sweep may be writing here right now: read, never truncate
    recs = [r for r in store.records.values() if r["status"] == "ok"]
    if not recs:
        raise ValueError(f"out: {str(out)!r} has no successful runs to plot")
    df = records_to_frame(recs)
    df["method_label"] = [method_label(r["config"]["method"]) for r in recs]
    df["method_cfg"] = [r["config"]["method"] for r in recs]
    streams = [r["config"]["stream"] for r in recs]
    keys = {k for st in streams for k in st if k != "family"}
    varying = {k for k in keys if len({json.dumps(st.get(k), sort_keys=True) for st in streams}) > 1}
    df["stream_label"] = [_stream_label(st, varying) for st in streams]
    return df


def _stream_label(stream: dict, varying: set[str] = frozenset()) -> str:
    """``family(T=…,K=…, <fields that vary between the sweep's streams>)``: one label per distinct stream."""
    fam = stream.get("family", "?")
    keys = [k for k in ("T", "K") if k in stream] + sorted(
        k for k in varying if k in stream and k not in ("T", "K")
    )
    return fam + ("(" + ",".join(f"{k}={stream[k]}" for k in keys) + ")" if keys else "")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", s).strip("_")[:80]


def _family(cfg_method: dict) -> str:
    """Schedule family of a method config: ``osdn: <rate rule> → <prior>`` for OSDN, else the method name."""
    name = cfg_method.get("name", "?")
    if name != "osdn":
        return method_label(cfg_method)
    apf = cfg_method.get("apf") or {}
    rate = (apf.get("rate") or {}).get("name", "no_forgetting")
    if rate == "no_forgetting":
        return "osdn: no forgetting"
    return f"osdn: {rate} → {(apf.get('prior') or {}).get('name', 'ones')}"


def _check_frame(fn: str, df, stream_label: str, columns: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the argument when ``df`` lacks ``columns`` or the stream ``stream_label``."""
    missing = [c for c in ("stream_label", *columns) if c not in getattr(df, "columns", ())]
    if missing:
        raise ValueError(f"df: {fn} expected a frame from load_results with columns {missing}, got none such")
    known = sorted(df["stream_label"].unique())
    if stream_label not in known:
        raise ValueError(f"stream_label: {fn} expected one of {known}, got {stream_label!r}")


def _smooth(y: np.ndarray, w: int) -> np.ndarray:
    if w <= 1 or y.shape[-1] < w:
        return y
    ker = np.ones(w) / w
    return np.apply_along_axis(lambda r: np.convolve(r, ker, mode="same"), -1, y)


def plot_calibration_profile(df, stream_label: str, path: Path, before: int | None = None, smooth: int = 8):
    """Calibration loss around shifts: one line per schedule family (its member with the lowest mean
    recovery time, then lowest mean calibration loss), mean over seeds, band = seed min–max.

    Needs the ``series.cal_profile`` column. ``smooth``: moving-average width in tokens (display only).
    """
    cols = ("series.cal_profile", "method_cfg", "method_label", "recovery_time", "cal_mean", "seed")
    _check_frame("plot_calibration_profile", df, stream_label, cols)
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth: expected a positive integer (tokens), got {smooth!r}")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int) or before < 0):
        raise ValueError(f"before: expected None or a non-negative integer (tokens), got {before!r}")
    plt = _pyplot()
    sub = df[df["stream_label"] == stream_label].copy()
    sub["family"] = [_family(m) for m in sub["method_cfg"]]
    fig, ax = plt.subplots(figsize=(8.0, 4.5))
    floor = 1e-4
    for i, (fam, g) in enumerate(sorted(sub.groupby("family"), key=lambda x: x[0])):
        score = g.groupby("method_label")[["recovery_time", "cal_mean"]].mean().fillna(np.inf)
        best = score.sort_values(["recovery_time", "cal_mean"]).index[0]
        gb = g[g["method_label"] == best]
        prof = _smooth(np.array([np.asarray(p, dtype=float) for p in gb["series.cal_profile"]]), smooth)
        x = np.arange(prof.shape[1]) - (before or 0)
        (line,) = ax.plot(
            x,
            np.maximum(prof.mean(0), floor),
            lw=1.4,
            color=plt.cm.tab20(i % 20),
            label=f"{fam}:  {best[:110]}",
        )
        ax.fill_between(
            x,
            np.maximum(prof.min(0), floor),
            np.maximum(prof.max(0), floor),
            color=line.get_color(),
            alpha=0.12,
            lw=0,
        )
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("tokens since distribution shift (shift at 0)")
    ax.set_ylabel(f"calibration loss (1 − s_t)²  [dimensionless; floored at {floor:g}]")
    nseeds = sub["seed"].nunique()
    ax.set_title(
        f"Calibration around shifts — {stream_label}\nbest member of each schedule family; mean over shifts, heads "
        f"and {nseeds} seeds; band = seed min–max; {smooth}-token moving average",
        fontsize=8,
    )
    ax.legend(fontsize=5, loc="upper left", bbox_to_anchor=(0.0, -0.12), ncol=1, frameon=False)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _method_params(df) -> list[str]:
    cols = [c for c in df.columns if c.startswith("method.") and c != "method.name"]
    return [c for c in cols if df[c].astype(str).nunique() > 1]


def plot_recovery_heatmap(
    df, stream_label: str, rate_col: str, rate: str, path: Path, step: str | None = None
):
    """Mean recovery time over the swept parameters of one APF rate rule (and one step rule ``step``, if
    given); returns None if nothing is swept."""
    _check_frame("plot_recovery_heatmap", df, stream_label, (rate_col, "recovery_time", "seed"))
    plt = _pyplot()
    sub = df[(df["stream_label"] == stream_label) & (df[rate_col].astype(str) == rate)]
    if step is not None and "method.step.name" in sub:
        sub = sub[sub["method.step.name"].astype(str) == step]
    params = [c for c in _method_params(sub) if c != rate_col]
    if not params:
        return None
    if len(params) == 1:
        params = params + [None]
    p0, p1 = params[0], params[1]
    keys = [c for c in (p0, p1) if c is not None]
    # parameters that vary within a heat-map cell (not determined by the two axes) are averaged over
    extra = [c for c in params[2:] if sub.groupby(keys)[c].apply(lambda x: x.astype(str).nunique()).max() > 1]
    mean = sub.groupby(keys)["recovery_time"].mean()
    xs = sorted(sub[p0].dropna().unique(), key=_sortkey)
    ys = sorted(sub[p1].dropna().unique(), key=_sortkey) if p1 else [None]
    grid = np.full((len(ys), len(xs)), np.nan)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            key = x if p1 is None else (x, y)
            if key in mean.index:
                grid[i, j] = mean[key]
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(xs), 2.2 + 0.6 * len(ys)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis_r", origin="lower")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.0f}",
                    ha="center",
                    va="center",
                    color="k",
                    fontsize=7,
                    bbox={"facecolor": "w", "alpha": 0.6, "lw": 0, "pad": 1},
                )
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30, fontsize=7)
    ax.set_xlabel(p0.removeprefix("method."))
    if p1:
        ax.set_yticks(range(len(ys)), [str(y) for y in ys], fontsize=7)
        ax.set_ylabel(p1.removeprefix("method."))
    else:
        ax.set_yticks([])
    nseeds = sub["seed"].nunique()
    note = f"; averaged over {', '.join(e.removeprefix('method.') for e in extra)}" if extra else ""
    step_txt = f", step '{step}'" if step else ""
    ax.set_title(
        f"Recovery time [tokens], APF rate '{rate}'{step_txt}\n{stream_label}, mean of {nseeds} seeds{note}\n"
        "(= segment length: never recovered)",
        fontsize=8,
    )
    fig.colorbar(im, ax=ax, label="recovery time [tokens]")
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_r1_bars(df, stream_label: str, path: Path, metric: str = "r1"):
    """R1 per method (horizontal bars): bar = mean over seeds, black dots = individual seeds; log axis."""
    _check_frame("plot_r1_bars", df, stream_label, (metric, "method_label", "seed"))
    plt = _pyplot()
    sub = df[(df["stream_label"] == stream_label) & df[metric].notna()]
    groups = sorted(sub.groupby("method_label"), key=lambda x: x[0])
    fig, ax = plt.subplots(figsize=(9.0, 1.5 + 0.22 * len(groups)))
    for i, (_, g) in enumerate(groups):
        vals = g[metric].to_numpy(float)
        ax.barh(i, vals.mean(), color="C0", alpha=0.6)
        ax.scatter(
            vals, np.full(len(vals), i) + np.linspace(-0.25, 0.25, len(vals)), s=6, color="k", zorder=3
        )
    ax.set_yticks(range(len(groups)), [lab for lab, _ in groups], fontsize=5)
    ax.set_ylabel("method (sweep config)")
    vals = sub[metric].to_numpy(float)
    if len(vals) and (vals > 0).all() and vals.max() / vals.min() > 100:
        ax.set_xscale("log")
    ax.set_xlabel("R1 stored-set residual ratio  Σ‖S k_i − v_i‖² / Σ‖v_i‖²  [dimensionless]")
    nseeds = sub["seed"].nunique()
    ax.set_title(
        f"Recall residual ratio R1 at segment ends — {stream_label}; bar = mean, dots = {nseeds} seeds",
        fontsize=8,
    )
    fig.subplots_adjust(
        left=0.55, right=0.98, top=1 - 0.5 / fig.get_figheight(), bottom=0.7 / fig.get_figheight()
    )
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
            here = df[df["stream_label"] == sl]
            steps = here["method.step.name"] if "method.step.name" in here else None
            for rate in sorted(here[rate_col].dropna().astype(str).unique()):
                in_rate = here[rate_col].astype(str) == rate
                names = (
                    [None]
                    if steps is None
                    else sorted(steps[in_rate].dropna().astype(str).unique()) or [None]
                )
                for step in names:
                    suffix = _slug(rate) + ("" if step is None or len(names) == 1 else f"_{_slug(step)}")
                    p = plot_recovery_heatmap(
                        df, sl, rate_col, rate, figdir / f"recovery_heatmap_{tag}_{suffix}.{fmt}", step=step
                    )
                    if p is not None:
                        paths.append(p)
        if "r1" in df:
            paths.append(plot_r1_bars(df, sl, figdir / f"r1_bars_{tag}.{fmt}"))
    return paths
