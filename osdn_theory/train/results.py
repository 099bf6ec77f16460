"""Read an ``osdn train`` results folder: a tidy table, the accuracy summary with spread, the standard figure."""

from __future__ import annotations

from pathlib import Path

from ..layers.lm import model_from_dict
from ..sweeps.store import ResultsStore
from ..tasks import task_from_dict
from .spec import optim_settings, train_settings

__all__ = ["best_lr", "load_train_results", "plot_accuracy_vs_pairs", "summary_table", "write_report"]


def load_train_results(out: str | Path, *, finished_only: bool = True):
    """One row per run of the folder ``out`` (read-only; a run still being written is ignored).

    Columns: ``hash``, ``status``, ``model`` (``deltanet``, ``osdn-rule``, ``osdn-learned``, peer kinds),
    ``hidden_size``, ``num_layers``, ``task``, ``num_kv_pairs``, ``seq_len``, ``seed``, every final metric
    (``accuracy``, ``eval_loss``, ...) and the curves as list columns (``series.eval_accuracy``, ...).
    ``finished_only``: keep ``ok`` and ``diverged`` runs only (default).
    """
    import pandas as pd

    p = Path(out)
    if not (p / "results.jsonl").is_file():
        raise ValueError(f"out: expected a results folder with results.jsonl, got {str(out)!r}")
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


def best_lr(df, keys=("task", "hidden_size", "num_kv_pairs", "seq_len", "model")):
    """Rows of each model's best learning rate per cell (highest mean held-out accuracy over seeds; ties: the
    smaller rate). With one rate per cell this returns ``df`` unchanged."""
    keys = list(keys)
    mean = df.groupby([*keys, "lr"])["accuracy"].mean().reset_index()
    mean = mean.sort_values([*keys, "accuracy", "lr"], ascending=[True] * len(keys) + [False, True])
    best = mean.drop_duplicates(keys)[[*keys, "lr"]]
    return df.merge(best, on=[*keys, "lr"])


def summary_table(df, baseline: str = "deltanet"):
    """Accuracy per (task, width, pairs, model) at the model's best learning rate (:func:`best_lr`): mean,
    standard deviation, seeds, the rate, the mean of the layers' own residual ratio ``r1_mean`` (where recorded),
    and the mean relative change against ``baseline`` over the seeds both have (``acc / acc_baseline − 1``, paired by seed; ``NaN`` where the baseline's accuracy is 0)."""
    import numpy as np
    import pandas as pd

    keys = ["task", "hidden_size", "num_kv_pairs", "seq_len"]
    df = best_lr(df)
    g = df.groupby([*keys, "model"])
    out = pd.DataFrame(
        {
            "mean": g["accuracy"].mean(),
            "std": g["accuracy"].std(ddof=1),
            "seeds": g["accuracy"].count(),
            "lr": g["lr"].first(),
        }
    )
    if "r1_mean" in df:
        out["r1_mean"] = g["r1_mean"].mean()
    out = out.reset_index()
    base = df[df["model"] == baseline][[*keys, "seed", "accuracy"]].rename(columns={"accuracy": "base"})
    paired = df.merge(base, on=[*keys, "seed"])
    paired["rel_change"] = np.where(
        paired["base"] > 0, paired["accuracy"] / paired["base"].where(paired["base"] > 0) - 1.0, np.nan
    )
    rel = paired.groupby([*keys, "model"])["rel_change"].mean().reset_index()
    return out.merge(rel, on=[*keys, "model"], how="left")


def plot_accuracy_vs_pairs(df, path: str | Path | None = None):
    """Held-out accuracy against key–value pairs, one panel per (task, width), one line per model at its best
    learning rate (mean over seeds, band from the lowest to the highest seed). Saves to ``path`` when given;
    returns the figure."""
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
            ax.plot(s.index, s["mean"], marker="o", label=model)
            ax.fill_between(s.index, s["min"], s["max"], alpha=0.2)
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
        "Mean and standard deviation over seeds at each model's best learning rate; rel_change: accuracy "
        "over DeltaNet's minus 1, paired by seed.",
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
