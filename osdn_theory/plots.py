"""Standard figures of a sweep folder (``osdn plot DIR``), drawn with matplotlib's Agg backend.

- ``calibration_profile_<stream>.png``: calibration loss ``(1 − s_t)²`` against tokens since a shift, one line
  per method (mean over seeds, heads and shifts; band = min–max over seeds), log scale; ``best_member=True``
  keeps one line per schedule family instead.
- ``recovery_heatmap_<stream>_<rate>.png``: mean recovery time (tokens) over the swept parameters of each
  APF rate rule (a 1-D strip when one parameter is swept).
- ``r1_bars_<stream>.png``: stored-set recall residual ratio R1 per method, bar = mean over seeds, dots = seeds.

Runs are grouped by their full configuration: stream, method and metric settings (``window``,
``recovery_tol``, ...). A folder whose runs have more than one metric setting (sweeps appended with
``--append-different-spec``) gets one figure folder per setting (``figures/<setting>/``), never an average
across settings; two different configurations that the figure labels cannot tell apart are refused. Runs whose
memory diverged (status ``diverged``, R1 above ``DIVERGED_R1``) are drawn apart and marked as diverged. File
names are unique: a name cut to its maximum length ends with a hash of the full name.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .sweeps.spec import canonical_json, method_label

__all__ = ["load_results", "plot_sweep", "plot_calibration_profile", "plot_recovery_heatmap", "plot_r1_bars"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def load_results(out: str | Path, *, include_diverged: bool = True):
    """The finished runs of a sweep folder as a DataFrame (from ``results.jsonl``, which is always current).

    Rows are runs with status ``ok`` and (``include_diverged``, default) ``diverged``; the ``status`` column
    tells them apart. Adds ``method_label`` (e.g. ``osdn[ratio,constant(lam=0.01)]``), ``stream_label``,
    ``metrics_key`` (canonical JSON of the run's metric settings) and ``settings_label`` (the settings that
    differ between the folder's runs, ``""`` when all runs share one setting).

    Raises ``ValueError`` when two different configurations would share a figure label (same stream label,
    method label, seed and metric settings): their results could not be told apart in a figure.
    """
    from .sweeps.store import RESULTS, ResultsStore, records_to_frame

    if not isinstance(include_diverged, bool):
        raise ValueError(f"include_diverged: expected a bool, got {include_diverged!r}")
    p = Path(out)
    if not (p / RESULTS).exists():
        raise ValueError(f"out: expected a sweep folder containing {RESULTS}, got {str(out)!r}")
    store = ResultsStore(p, repair=False)  # a sweep may be writing here right now: read, never truncate
    keep = ("ok", "diverged") if include_diverged else ("ok",)
    recs = [r for r in store.records.values() if r["status"] in keep]
    if not recs:
        raise ValueError(f"out: {str(out)!r} has no successful runs to plot")
    df = records_to_frame(recs)
    df["method_label"] = [method_label(r["config"]["method"]) for r in recs]
    df["method_cfg"] = [r["config"]["method"] for r in recs]
    streams = [r["config"]["stream"] for r in recs]
    keys = {k for st in streams for k in st if k != "family"}
    varying = {k for k in keys if len({json.dumps(st.get(k), sort_keys=True) for st in streams}) > 1}
    df["stream_label"] = [_stream_label(st, varying) for st in streams]
    settings = [r["config"].get("metrics", {}) for r in recs]
    df["metrics_key"] = [canonical_json(m) for m in settings]
    differ = sorted({k for m in settings for k in m if len({json.dumps(x.get(k)) for x in settings}) > 1})
    df["settings_label"] = [",".join(f"{k}={m.get(k)}" for k in differ) for m in settings]
    cfg_key = [
        canonical_json({k: r["config"][k] for k in ("stream", "method", "metrics") if k in r["config"]})
        for r in recs
    ]
    seen: dict[tuple, str] = {}
    for i, r in enumerate(recs):
        key = (
            df["stream_label"].iat[i],
            df["method_label"].iat[i],
            r["config"].get("seed"),
            df["metrics_key"].iat[i],
        )
        if seen.setdefault(key, cfg_key[i]) != cfg_key[i]:
            raise ValueError(
                f"out: {str(out)!r} holds different configurations with the same figure labels "
                f"({key[0]}, {key[1]}, seed {key[2]}); their results cannot be told apart in one figure "
                "(sweep them into separate folders)"
            )
    return df


def _stream_label(stream: dict, varying: set[str] = frozenset()) -> str:
    """``family(T=…,K=…, <fields that vary between the sweep's streams>)``: one label per distinct stream."""
    fam = stream.get("family", "?")
    keys = [k for k in ("T", "K") if k in stream] + sorted(
        k for k in varying if k in stream and k not in ("T", "K")
    )
    return fam + ("(" + ",".join(f"{k}={stream[k]}" for k in keys) + ")" if keys else "")


_SLUG_MAX = 80


def _slug(s: str) -> str:
    """A file-name-safe form of ``s``; when it is longer than ``_SLUG_MAX`` characters it is cut and ends with
    a hash of the full ``s``, so two names that differ only past the cut never give one file name."""
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", s).strip("_")
    if len(slug) <= _SLUG_MAX:
        return slug
    return f"{slug[: _SLUG_MAX - 11]}_{hashlib.sha256(s.encode()).hexdigest()[:10]}"


def _unique(path: Path, key: str, used: dict[Path, str]) -> Path:
    """``path``, or ``path`` with a hash of ``key`` before the suffix when another figure took that name
    (e.g. labels that differ only in characters a file name cannot hold)."""
    if used.setdefault(path, key) == key:
        return path
    path = path.with_name(f"{path.stem}_{hashlib.sha256(key.encode()).hexdigest()[:10]}{path.suffix}")
    used[path] = key
    return path


def _diverged_note(g) -> str:
    """``" [memory diverged in n/m runs]"`` for a group of rows with some ``diverged`` status, else ``""``."""
    if "status" not in g:
        return ""
    n = int((g["status"] == "diverged").sum())
    return f" [memory diverged in {n}/{len(g)} runs]" if n else ""


def _diverged_threshold() -> str:
    from .sweeps.evaluate import DIVERGED_R1

    return f"R1 > {DIVERGED_R1:g}"


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


def _one_setting(fn: str, sub) -> str:
    """The settings label of ``sub``'s rows; ``ValueError`` when they mix metric settings."""
    if "metrics_key" in sub and sub["metrics_key"].nunique() > 1:
        raise ValueError(
            f"df: {fn} expected runs of one metric setting (window, recovery_tol, ...), got "
            f"{sub['metrics_key'].nunique()}; select one settings_label first (plot_sweep does)"
        )
    return str(sub["settings_label"].iloc[0]) if "settings_label" in sub and len(sub) else ""


def plot_calibration_profile(
    df,
    stream_label: str,
    path: Path,
    before: int | None = None,
    smooth: int = 8,
    best_member: bool = False,
):
    """Calibration loss around shifts: one line per method (``best_member=True``: one line per schedule
    family, its member with the lowest mean recovery time, then lowest mean calibration loss), mean over
    seeds, band = seed min–max. Methods whose memory diverged in some runs say so in the legend (the
    calibration loss is the preconditioner's own and is still drawn).

    Needs the ``series.cal_profile`` column. ``smooth``: moving-average width in tokens (display only).
    """
    cols = ("series.cal_profile", "method_cfg", "method_label", "recovery_time", "cal_mean", "seed")
    _check_frame("plot_calibration_profile", df, stream_label, cols)
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth: expected a positive integer (tokens), got {smooth!r}")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int) or before < 0):
        raise ValueError(f"before: expected None or a non-negative integer (tokens), got {before!r}")
    if not isinstance(best_member, bool):
        raise ValueError(f"best_member: expected a bool, got {best_member!r}")
    plt = _pyplot()
    sub = df[df["stream_label"] == stream_label].copy()
    setting = _one_setting("plot_calibration_profile", sub)
    sub["family"] = [_family(m) for m in sub["method_cfg"]]
    if best_member:
        lines = []
        for fam, g in sorted(sub.groupby("family"), key=lambda x: x[0]):
            score = g.groupby("method_label")[["recovery_time", "cal_mean"]].mean().fillna(np.inf)
            best = score.sort_values(["recovery_time", "cal_mean"]).index[0]
            lines.append((f"{fam}: {best}", g[g["method_label"] == best]))
    else:
        lines = sorted(sub.groupby("method_label"), key=lambda x: x[0])
    # the legend sits right of the axes; with many methods the axes grow with it, so each line stays legible
    legend_rows = sum(1 + len(_wrap(label, 90)) // 92 for label, _ in lines)
    fig, ax = plt.subplots(figsize=(9.0, max(4.5, 0.16 * legend_rows)))
    floor = 1e-4
    styles = ("-", "--", ":", "-.")
    for i, (label, gb) in enumerate(lines):
        prof = _smooth(np.array([np.asarray(p, dtype=float) for p in gb["series.cal_profile"]]), smooth)
        x = np.arange(prof.shape[1]) - (before or 0)
        (line,) = ax.plot(
            x,
            np.maximum(prof.mean(0), floor),
            lw=1.4,
            ls=styles[(i // 10) % len(styles)],
            color=plt.cm.tab10(i % 10),
            label=_wrap(label, 90) + _diverged_note(gb),
        )
        ax.fill_between(
            x,
            np.maximum(prof.min(0), floor),
            np.maximum(prof.max(0), floor),
            color=line.get_color(),
            alpha=0.10,
            lw=0,
        )
    ax.axvline(0, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("tokens since distribution shift (shift at 0)")
    ax.set_ylabel("calibration loss (1 − s_t)²  [dimensionless]")
    nseeds = sub["seed"].nunique()
    which = "best member of each schedule family" if best_member else "every method"
    ax.set_title(
        f"Calibration loss (1 − s_t)² around shifts — {stream_label}"
        + (f" [{setting}]" if setting else "")
        + f"\n{which}; mean over shifts, heads and {nseeds} seeds; band = seed min–max; "
        f"{smooth}-token moving average; values below {floor:g} drawn at {floor:g}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1, frameon=False)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters at commas (legend and tick labels)."""
    if len(text) <= width:
        return text
    out, line = [], ""
    for part in re.split(r"(?<=,)", text):
        if line and len(line) + len(part) > width:
            out.append(line)
            line = ""
        line += part
    out.append(line)
    return "\n".join(out)


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
    setting = _one_setting("plot_recovery_heatmap", sub)
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
    div = (sub["status"] == "diverged").groupby([sub[c] for c in keys]).sum() if "status" in sub else mean * 0
    xs = sorted(sub[p0].dropna().unique(), key=_sortkey)
    ys = sorted(sub[p1].dropna().unique(), key=_sortkey) if p1 else [None]
    grid = np.full((len(ys), len(xs)), np.nan)
    ndiv = np.zeros((len(ys), len(xs)), dtype=int)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            key = x if p1 is None else (x, y)
            if key in mean.index:
                grid[i, j] = mean[key]
                ndiv[i, j] = int(div[key])
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(xs), 2.2 + 0.6 * len(ys)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis_r", origin="lower")
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.0f}" + ("†" if ndiv[i, j] else ""),
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
    tol = sub["metrics.recovery_tol"].iloc[0] if "metrics.recovery_tol" in sub else None
    tol_txt = f"‖d − d*‖/‖d*‖ ≤ {tol:g}" if tol is not None else "‖d − d*‖/‖d*‖ ≤ recovery_tol"
    div_txt = (
        f"\n† memory diverged ({_diverged_threshold()}) in some of the cell's runs" if ndiv.any() else ""
    )
    ax.set_title(
        f"Recovery time [tokens] to {tol_txt}, APF rate '{rate}'{step_txt}\n{stream_label}"
        + (f" [{setting}]" if setting else "")
        + f", mean of {nseeds} seeds{note}\n(= segment length: never recovered){div_txt}",
        fontsize=8,
    )
    fig.colorbar(im, ax=ax, label="recovery time [tokens]")
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


#: what each metric column is, for axis labels and titles
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "r1": ("R1 stored-set residual ratio at segment ends", "Σ‖S k_i − v_i‖² / Σ‖v_i‖²  [dimensionless]"),
    "r1_final": ("R1 at the last segment's end", "Σ‖S k_i − v_i‖² / Σ‖v_i‖²  [dimensionless]"),
    "r2": ("R2 token-local write ratio", "‖r⁺_t‖² / ‖e_t‖² over the stream  [dimensionless]"),
    "cal_early": (
        "early calibration loss after shifts",
        "mean (1 − s_t)² over the first window  [dimensionless]",
    ),
    "cal_late": (
        "late calibration loss in segments",
        "mean (1 − s_t)² over the last window  [dimensionless]",
    ),
    "cal_mean": ("mean calibration loss", "mean (1 − s_t)²  [dimensionless]"),
    "d_err_end": ("distance to d*_seg at segment ends", "‖d − d*_seg‖ / ‖d*_seg‖  [dimensionless]"),
    "recovery_time": ("recovery time after shifts", "tokens until ‖d − d*‖/‖d*‖ ≤ recovery_tol  [tokens]"),
    "recovered_frac": ("fraction of shifts recovered", "recovered shifts / shifts  [fraction]"),
    "recall_acc": ("recall accuracy", "nearest-codebook recall accuracy  [fraction]"),
    "triggers": ("APF trigger firings", "firings per realisation (summed over heads)  [count]"),
    "clip_frac": ("fraction of tokens clipped by s_max", "clipped tokens / tokens  [fraction]"),
}


def plot_r1_bars(df, stream_label: str, path: Path, metric: str = "r1"):
    """One metric per method (horizontal bars; R1 by default): bar = mean over the seeds whose memory did not
    diverge, black dots = those seeds; diverged runs are red crosses at the right edge and the method's label
    says so. Log axis when the values span more than two decades."""
    _check_frame("plot_r1_bars", df, stream_label, (metric, "method_label", "seed"))
    plt = _pyplot()
    sub = df[(df["stream_label"] == stream_label) & df[metric].notna()]
    setting = _one_setting("plot_r1_bars", sub)
    status = sub["status"] if "status" in sub else None
    groups = sorted(sub.groupby("method_label"), key=lambda x: x[0])
    name, unit = METRIC_LABELS.get(metric, (metric, f"{metric}  [as recorded]"))
    ok_all = sub if status is None else sub[status != "diverged"]
    vals_ok = ok_all[metric].to_numpy(float)
    log = len(vals_ok) > 0 and (vals_ok > 0).all() and vals_ok.max() / vals_ok.min() > 100
    edge = float(np.nanmax(vals_ok)) * (3.0 if log else 1.1) if len(vals_ok) else 1.0
    # rows tall enough for the longest (wrapped) method label at 7 pt
    lines_per_row = max((_wrap(lab, 100).count("\n") + 1 for lab, _ in groups), default=1)
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + (0.12 * lines_per_row + 0.12) * len(groups)))
    labels, any_div = [], False
    for i, (lab, g) in enumerate(groups):
        bad = (g["status"] == "diverged").to_numpy() if "status" in g else np.zeros(len(g), bool)
        vals = g[metric].to_numpy(float)
        good = vals[~bad]
        if len(good):
            ax.barh(i, good.mean(), color="C0", alpha=0.6)
            ax.scatter(
                good, np.full(len(good), i) + np.linspace(-0.25, 0.25, len(good)), s=8, color="k", zorder=3
            )
        if bad.any():
            any_div = True
            ax.scatter(
                np.full(bad.sum(), edge), np.full(bad.sum(), i), marker="x", s=30, color="C3", zorder=3
            )
        labels.append(_wrap(lab, 100) + (f"  [diverged {bad.sum()}/{len(g)}]" if bad.any() else ""))
    ax.set_yticks(range(len(groups)), labels, fontsize=7)
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.set_ylabel("method (sweep config)")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"{name}:  {unit}")
    nseeds = sub["seed"].nunique()
    div_txt = f"; red × = memory diverged ({_diverged_threshold()}), not in the bar" if any_div else ""
    ax.set_title(
        f"{name} ({metric}) — {stream_label}"
        + (f" [{setting}]" if setting else "")
        + f"\nbar = mean, dots = {nseeds} seeds{div_txt}",
        fontsize=9,
    )
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _sortkey(x):
    try:
        return (0, float(x))
    except (TypeError, ValueError):
        return (1, str(x))


def plot_sweep(out: str | Path, *, fmt: str = "png", best_member: bool = False) -> list[Path]:
    """Draw every standard figure of the sweep folder ``out`` into ``out/figures``; return the file paths.

    One metric setting: ``out/figures/``. Several (sweeps appended with ``--append-different-spec``): one
    folder per setting, ``out/figures/<setting>/``, so no figure averages across settings.
    ``best_member``: the calibration profile shows one line per schedule family instead of every method.
    """
    if fmt not in ("png", "pdf", "svg"):
        raise ValueError(f"fmt: expected one of ['png', 'pdf', 'svg'], got {fmt!r}")
    if not isinstance(best_member, bool):
        raise ValueError(f"best_member: expected a bool, got {best_member!r}")
    df = load_results(out)
    paths: list[Path] = []
    used: dict[Path, str] = {}
    for setting, part in sorted(df.groupby("settings_label"), key=lambda x: x[0]):
        figdir = Path(out) / "figures" / (_slug(setting) if setting else "")
        figdir.mkdir(parents=True, exist_ok=True)
        paths += _plot_setting(part, figdir, fmt, best_member, used)
    return paths


def _plot_setting(df, figdir: Path, fmt: str, best_member: bool, used: dict[Path, str]) -> list[Path]:
    before = json.loads(df["metrics_key"].iloc[0]).get("profile_before") if "metrics_key" in df else None
    paths: list[Path] = []
    for sl in sorted(df["stream_label"].unique()):
        tag = _slug(sl)
        if (
            "series.cal_profile" in df
            and df.loc[df["stream_label"] == sl, "series.cal_profile"].notna().all()
        ):
            p = _unique(figdir / f"calibration_profile_{tag}.{fmt}", f"cal|{sl}", used)
            paths.append(plot_calibration_profile(df, sl, p, before, best_member=best_member))
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
                    p = _unique(
                        figdir / f"recovery_heatmap_{tag}_{suffix}.{fmt}", f"heat|{sl}|{rate}|{step}", used
                    )
                    p = plot_recovery_heatmap(df, sl, rate_col, rate, p, step=step)
                    if p is not None:
                        paths.append(p)
        if "r1" in df:
            p = _unique(figdir / f"r1_bars_{tag}.{fmt}", f"r1|{sl}", used)
            paths.append(plot_r1_bars(df, sl, p))
    return paths
