"""Read an ``osdn train`` results folder: a tidy table, the accuracy summary with spread, the standard figure."""

from __future__ import annotations

from pathlib import Path

from ..layers.lm import model_from_dict
from ..sweeps.store import RESULTS, ResultsStore
from ..tasks import task_from_dict
from .spec import optim_settings, train_settings

__all__ = [
    "LEARNED_ACCURACY",
    "REL_CHANGE_FLOOR",
    "best_lr",
    "compare_train_results",
    "load_train_results",
    "plot_accuracy_vs_pairs",
    "scored",
    "summary_table",
    "write_comparison",
    "write_report",
]


def load_train_results(out: str | Path, *, finished_only: bool = True):
    """One row per run of the folder ``out`` (read-only; a run still being written is ignored).

    Columns: ``hash``, ``status``, ``model`` (``deltanet``, ``osdn-rule``, ``osdn-learned``, peer kinds),
    ``hidden_size``, ``num_layers``, ``task``, ``num_kv_pairs``, ``seq_len``, ``seed``, every final metric
    (``accuracy``, ``eval_loss``, ...) and the curves as list columns (``series.eval_accuracy``, ...).
    ``finished_only``: keep ``ok`` and ``diverged`` runs only (default).
    """
    import pandas as pd

    p = Path(out)
    if not (p / RESULTS).is_file():
        raise ValueError(f"out: expected a results folder with {RESULTS}, got {str(out)!r}")
    rows = []
    for r in ResultsStore(p, repair=False).records.values():
        if finished_only and r["status"] not in ("ok", "diverged"):
            continue
        cfg = r.get("config", {})
        m = model_from_dict(cfg.get("model", {}))
        t = task_from_dict(cfg.get("task", {}))
        row = {
            "hash": r["hash"],
            "status": r["status"],
            "model": m.label(),
            "hidden_size": m.hidden_size,
            "num_layers": m.num_layers,
            "task": t.name,
            "num_kv_pairs": t.num_kv_pairs,
            "seq_len": t.seq_len,
            "seed": cfg.get("seed"),
            "lr": optim_settings(cfg.get("optim", {}))["lr"],
            "steps_budget": train_settings(cfg.get("train", {}))["steps"],
        }
        row.update(r.get("metrics") or {})
        for k, v in (r.get("series") or {}).items():
            row[f"series.{k}"] = v
        rows.append(row)
    return pd.DataFrame(rows)


#: A run "learned" the task when its held-out accuracy reaches this: on MQAR, learning is abrupt, so the seeds of
#: a cell split into runs near chance and runs far above it, and the count says more than a mean of 3 seeds.
LEARNED_ACCURACY = 0.5
#: ``rel_change`` is left out (``NaN``) where the baseline's mean accuracy is below this: a ratio of two
#: accuracies at chance level is noise (DeltaNet at 0.0006 against 0.0003 would read as +100 %).
REL_CHANGE_FLOOR = 0.05


def scored(df):
    """``df`` with ``accuracy`` of every ``diverged`` run set to 0 (its outputs were NaN: it recalls nothing), so
    that means, spreads and the choice of learning rate count divergence as failure instead of dropping it."""
    df = df.copy()
    if "status" in df:
        df.loc[df["status"] == "diverged", "accuracy"] = 0.0
    return df


def best_lr(df, keys=("task", "hidden_size", "num_kv_pairs", "seq_len", "model")):
    """Rows of each model's best learning rate per cell (highest mean held-out accuracy over seeds, diverged runs
    counted as 0; ties: the smaller rate). With one rate per cell this returns ``df`` unchanged."""
    keys = list(keys)
    df = scored(df)
    mean = df.groupby([*keys, "lr"])["accuracy"].mean().reset_index()
    mean = mean.sort_values([*keys, "accuracy", "lr"], ascending=[True] * len(keys) + [False, True])
    best = mean.drop_duplicates(keys)[[*keys, "lr"]]
    return df.merge(best, on=[*keys, "lr"])


def summary_table(df, baseline: str = "deltanet"):
    """Accuracy per (task, width, pairs, model) at the model's best learning rate (:func:`best_lr`), with
    diverged runs counted as accuracy 0 (:func:`scored`).

    Columns: ``lr``; ``runs`` and ``diverged`` (seeds at that rate, and how many of them diverged); ``learned``
    (seeds with accuracy ≥ :data:`LEARNED_ACCURACY`); ``mean``, ``std`` (ddof 1), ``min``, ``max`` over the seeds;
    ``rel_change``: ``mean / mean_baseline − 1`` over the seeds both have (paired by seed), ``NaN`` where the
    baseline's mean is below :data:`REL_CHANGE_FLOOR`; ``r1_mean`` (where recorded: the mean over the layers and
    the finished seeds of the stored-set residual ratio R1, lower is better) and ``r1_rel_change`` (its
    ``mean / mean_baseline − 1`` over the seeds both finished; the paper's "recall residual ratio" change)."""
    import numpy as np
    import pandas as pd

    keys = ["task", "hidden_size", "num_kv_pairs", "seq_len"]
    df = best_lr(df)
    if "status" not in df:
        df = df.assign(status="ok")
    df = df.assign(
        diverged=(df["status"] == "diverged").astype(int),
        learned=(df["accuracy"] >= LEARNED_ACCURACY).astype(int),
    )
    g = df.groupby([*keys, "model"])
    out = pd.DataFrame(
        {
            "lr": g["lr"].first(),
            "runs": g["accuracy"].count(),
            "diverged": g["diverged"].sum(),
            "learned": g["learned"].sum(),
            "mean": g["accuracy"].mean(),
            "std": g["accuracy"].std(ddof=1),
            "min": g["accuracy"].min(),
            "max": g["accuracy"].max(),
        }
    ).reset_index()
    cols = ["accuracy"] + (["r1_mean"] if "r1_mean" in df else [])
    base = df[df["model"] == baseline][[*keys, "seed", *cols]].rename(columns={c: f"base_{c}" for c in cols})
    paired = df.merge(base, on=[*keys, "seed"])
    pg = paired.groupby([*keys, "model"])
    rel = pg[["accuracy", "base_accuracy"]].mean()
    rel["rel_change"] = np.where(
        rel["base_accuracy"] >= REL_CHANGE_FLOOR, rel["accuracy"] / rel["base_accuracy"] - 1.0, np.nan
    )
    parts = [rel[["rel_change"]]]
    if "r1_mean" in df:
        both = paired[paired["r1_mean"].notna() & paired["base_r1_mean"].notna()]
        r1 = both.groupby([*keys, "model"])[["r1_mean", "base_r1_mean"]].mean()
        r1["r1_rel_change"] = r1["r1_mean"] / r1["base_r1_mean"] - 1.0
        out = out.merge(g["r1_mean"].mean().reset_index(), on=[*keys, "model"], how="left")
        parts.append(r1[["r1_rel_change"]])
    for part in parts:
        out = out.merge(part.reset_index(), on=[*keys, "model"], how="left")
    return out


def plot_accuracy_vs_pairs(df, path: str | Path | None = None):
    """Held-out accuracy against key–value pairs, one panel per (task, width), one line per model at its best
    learning rate (mean over seeds, diverged runs as 0, band from the lowest to the highest seed, a dot per
    seed). Saves to ``path`` when given; returns the figure."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = best_lr(df)
    panels = sorted({(t, h) for t, h in zip(df["task"], df["hidden_size"], strict=True)})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (task, h) in zip(axes[0], panels, strict=True):
        sub = df[(df["task"] == task) & (df["hidden_size"] == h)]
        for model, d in sub.groupby("model"):
            s = d.groupby("num_kv_pairs")["accuracy"].agg(["mean", "min", "max"]).sort_index()
            (line,) = ax.plot(s.index, s["mean"], marker="o", label=model)
            ax.fill_between(s.index, s["min"], s["max"], alpha=0.2, color=line.get_color())
            # each seed as a dot (offset per model so that the models' dots do not cover each other)
            shift = 2 ** (0.06 * (list(sub["model"].drop_duplicates().sort_values()).index(model) - 1))
            ax.scatter(d["num_kv_pairs"] * shift, d["accuracy"], s=9, color=line.get_color(), alpha=0.7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("key-value pairs")
        ax.set_ylabel("held-out recall accuracy")
        ax.set_title(f"{task}, width {h}")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def compare_train_results(out: str | Path, reference: str | Path):
    """Run by run, the results folder ``out`` against the folder ``reference`` (e.g. a rerun of a committed
    sweep against the committed runs): which runs reproduce.

    Runs are matched by their hash (same configuration and seed); runs in only one folder are left out. One row
    per shared finished run: ``label``-like keys (``task``, ``hidden_size``, ``num_kv_pairs``, ``model``, ``lr``,
    ``seed``), ``status`` and ``status_ref``, ``accuracy`` and ``accuracy_ref`` (diverged runs as 0, as in
    :func:`scored`), ``abs_diff``, ``learned`` and ``learned_ref`` (accuracy ≥ :data:`LEARNED_ACCURACY`),
    ``same_outcome`` (same status and same learned verdict), ``identical`` (bit-identical final accuracy and
    training loss), ``device_name`` and ``device_name_ref``. Sorted with the largest ``abs_diff`` first."""
    import pandas as pd

    for name, folder in (("out", out), ("reference", reference)):
        if not (Path(folder) / RESULTS).is_file():
            raise ValueError(f"{name}: expected a results folder with {RESULTS}, got {str(folder)!r}")
    a, b = scored(load_train_results(out)), scored(load_train_results(reference))
    keys = ["task", "hidden_size", "num_kv_pairs", "seq_len", "model", "lr", "seed"]
    cols = ["hash", *keys, "status", "accuracy", "train_loss", "device_name"]
    for name, df in (("out", a), ("reference", b)):
        missing = [c for c in cols if c not in df]
        if missing and not df.empty:
            raise ValueError(
                f"{name}: the runs of this folder lack {missing}; is it an osdn train results folder?"
            )
    if a.empty or b.empty:
        return pd.DataFrame(columns=[*keys])
    m = a[cols].merge(
        b[["hash", "status", "accuracy", "train_loss", "device_name"]], on="hash", suffixes=("", "_ref")
    )
    m["abs_diff"] = (m["accuracy"] - m["accuracy_ref"]).abs()
    m["learned"] = m["accuracy"] >= LEARNED_ACCURACY
    m["learned_ref"] = m["accuracy_ref"] >= LEARNED_ACCURACY
    m["same_outcome"] = (m["status"] == m["status_ref"]) & (m["learned"] == m["learned_ref"])
    m["identical"] = (m["accuracy"] == m["accuracy_ref"]) & (
        (m["train_loss"] == m["train_loss_ref"]) | (m["train_loss"].isna() & m["train_loss_ref"].isna())
    )
    return m.sort_values(["abs_diff", *keys], ascending=[False] + [True] * len(keys)).reset_index(drop=True)


def _cell(x) -> str:
    if isinstance(x, float):
        return "–" if x != x else f"{x:.4g}"
    return str(x)


def write_report(out: str | Path) -> list[Path]:
    """Write ``summary.csv``, ``summary.md`` (the :func:`summary_table`) and
    ``figures/accuracy_vs_pairs.png`` into the results folder ``out``; returns the paths (none when no run has
    finished)."""
    import matplotlib.pyplot as plt

    out = Path(out)
    df = load_train_results(out)
    if df.empty:
        return []
    table = summary_table(df)
    csv = out / "summary.csv"
    table.to_csv(csv, index=False)
    cols = list(table.columns)
    lines = [
        f"# {out.name}: held-out recall accuracy (tiny-scale synthetic)",
        "",
        "Per cell and model, at the model's best learning rate: runs (seeds), diverged (counted as accuracy "
        f"0), learned (accuracy >= {LEARNED_ACCURACY}), mean / std / min / max over seeds; rel_change: mean "
        f"accuracy over DeltaNet's minus 1, paired by seed, left out (–) where DeltaNet's mean is below "
        f"{REL_CHANGE_FLOOR}; r1_mean: stored-set residual ratio R1 (lower is better, finished runs), "
        "r1_rel_change its change against DeltaNet.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    md = out / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    fig_path = out / "figures" / "accuracy_vs_pairs.png"
    fig = plot_accuracy_vs_pairs(df, fig_path)
    plt.close(fig)
    return [csv, md, fig_path]


def write_comparison(out: str | Path, reference: str | Path) -> tuple[list[Path], str]:
    """Write ``compare.csv`` (:func:`compare_train_results`) and ``compare.md`` into ``out``: per shared run the
    two accuracies, and per cell the two seed means at the cell's learning rates; returns the paths and a one-line
    verdict (shared runs, bit-identical, same outcome, largest accuracy difference)."""
    out, reference = Path(out), Path(reference)
    m = compare_train_results(out, reference)
    if m.empty:
        return [], f"no run of {out} is in {reference} (runs are matched by configuration and seed)"
    csv = out / "compare.csv"
    m.to_csv(csv, index=False)
    worst = m.iloc[0]
    line = (
        f"{len(m)} shared runs: {int(m['identical'].sum())} bit-identical, {int(m['same_outcome'].sum())} with the "
        f"same outcome (status and learned >= {LEARNED_ACCURACY}), largest accuracy difference "
        f"{worst['abs_diff']:.4f} ({worst['model']}, width {worst['hidden_size']}, {worst['num_kv_pairs']} pairs, "
        f"lr {worst['lr']:g}, seed {worst['seed']})"
    )
    keys = ["task", "hidden_size", "num_kv_pairs", "seq_len", "model", "lr"]
    cells = m.groupby(keys)[["accuracy", "accuracy_ref"]].mean().reset_index()
    cells["diff"] = cells["accuracy"] - cells["accuracy_ref"]
    devs = sorted(set(m["device_name"].astype(str))), sorted(set(m["device_name_ref"].astype(str)))
    lines = [
        f"# {out.name} against {reference.name}",
        "",
        f"Runs matched by configuration and seed. Devices: {', '.join(devs[0])} against {', '.join(devs[1])}. "
        "Diverged runs count as accuracy 0.",
        "",
        line + ".",
        "",
        "## Per cell (mean over the shared seeds)",
        "",
        "| " + " | ".join([*keys, "accuracy", "reference", "diff"]) + " |",
        "|" + "---|" * (len(keys) + 3),
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    runs = ["model", "hidden_size", "num_kv_pairs", "lr", "seed", "status", "status_ref", "accuracy",
            "accuracy_ref", "abs_diff", "identical"]  # fmt: skip
    lines += ["", "## Per run (largest difference first)", "", "| " + " | ".join(runs) + " |"]
    lines += ["|" + "---|" * len(runs)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in m[runs].itertuples(index=False)]
    md = out / "compare.md"
    md.write_text("\n".join(lines) + "\n")
    return [csv, md], line
