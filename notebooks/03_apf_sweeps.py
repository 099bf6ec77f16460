# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Adaptive Preconditioner Forgetting: sweep results (spec §8)
#
# Loads a sweep results folder written by `osdn sweep` (default `results/apf_piecewise`, produced by
# `osdn sweep sweeps/apf_piecewise.toml --out results/apf_piecewise --workers 2`). If that folder does not
# exist, the notebook runs a small sweep itself: a tiny one in quick mode (`FULL = False`, seconds), the
# full example file with `FULL = True` (a few minutes on 2 cores).
#
# Metrics (per run, averaged over the segments that start with a shift): calibration loss $(1-s_t)^2$ early
# (first `window` tokens) and late (last `window` tokens) in a segment; $\|d-d^*_{seg}\|/\|d^*_{seg}\|$ at the
# segment end; recovery time (tokens until that error is ≤ `recovery_tol` and stays so for `window` tokens;
# the segment length when never);
# trigger count; R1 (stored-set residual ratio of each segment under the state at its end).

# %% tags=["parameters"]
FULL = False
RESULTS = "results/apf_piecewise"

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from osdn_theory.plots import load_results, plot_sweep
from osdn_theory.sweeps.runner import run_sweep
from osdn_theory.sweeps.spec import load_spec, parse_spec


def find_checkout(marker: str) -> Path | None:
    """The repository checkout holding ``marker`` (a relative path): searched from the working folder upward,
    then beside the imported package; ``None`` when there is none (an installed package run elsewhere)."""
    import osdn_theory

    starts = [Path.cwd(), *Path.cwd().parents, Path(osdn_theory.__file__).resolve().parents[1]]
    return next((p for p in starts if (p / marker).exists()), None)


# the example sweep file and results folder live in the repository; from any other folder (or with an installed
# package) the notebook runs its own small sweep in a temporary folder
ROOT = find_checkout("sweeps/apf_piecewise.toml")
out = Path(RESULTS) if Path(RESULTS).is_absolute() or ROOT is None else ROOT / RESULTS
if (out / "results.jsonl").exists():
    print(f"loading existing results from {out}")
else:
    if FULL:
        if ROOT is None:
            raise FileNotFoundError(
                "FULL = True runs sweeps/apf_piecewise.toml from the repository, which is not found from "
                f"{Path.cwd()}; run the notebook inside the checkout, or set RESULTS to an existing sweep folder"
            )
        spec = load_spec(ROOT / "sweeps" / "apf_piecewise.toml")
    else:
        jacobi = {"name": "running_jacobi", "c": 0.1, "ema": 0.95}
        base = {"name": "osdn", "step": {"name": "normalized", "c": 0.1}, "s_max": 1.5}
        spec = parse_spec(
            {
                "name": "apf_tiny",
                "seeds": [0, 1, 2],
                "metrics": {"window": 16, "profile_before": 16, "profile_after": 96},
                "stream": [
                    {"family": "piecewise", "T": 768, "K": 8, "V": 4, "segment_len": 256, "condition": 100.0}
                ],
                "method": [
                    {"name": "deltanet"},
                    base,
                    dict(base, apf={"prior": jacobi, "rate": {"name": "constant_forgetting", "lam": 0.03}}),
                    dict(
                        base,
                        apf={
                            "prior": jacobi,
                            "rate": {
                                "name": "spike_trigger",
                                "fast": 0.8,
                                "slow": 0.99,
                                "tau": 3.0,
                                "warmup": 32,
                            },
                        },
                        grid={"apf.rate.tau": [2.0, 3.0]},
                    ),
                    dict(
                        base,
                        apf={
                            "prior": jacobi,
                            "rate": {
                                "name": "decay_after_trigger",
                                "lam0": 1.0,
                                "half_life": 64.0,
                                "trigger": {
                                    "name": "spike_trigger",
                                    "fast": 0.8,
                                    "slow": 0.99,
                                    "tau": 3.0,
                                    "warmup": 32,
                                },
                            },
                        },
                    ),
                ],
            }
        )
    out = Path(tempfile.mkdtemp(prefix="apf_sweep_"))
    print(
        f"no results at {RESULTS}: running sweep '{spec.name}' ({len(spec.runs)} runs) in a temporary folder"
    )
    summary = run_sweep(spec, out, executor="serial" if not FULL else "local", progress=False)
    print(f"{summary.executed} runs executed, {summary.failed} failed, {summary.elapsed_s:.1f} s")

# %%
df = load_results(out)
cols = ["cal_early", "cal_late", "d_err_end", "recovery_time", "recovered_frac", "triggers", "r1"]
g = df.groupby("method_label")
table = g[cols].mean()
table["recovery_sd"] = g["recovery_time"].std()
table["seeds"] = g["seed"].nunique()
table["diverged"] = g["status"].apply(lambda st: int((st == "diverged").sum()))  # memory blew up (R1 > 1e6)
display(table.sort_values(["recovery_time", "cal_late"]).round(3))

# %% [markdown]
# ## Calibration loss per segment (mean over seeds)

# %%
segs = np.array(df["series.cal_seg_early"].tolist())
late = np.array(df["series.cal_seg_late"].tolist())
fig, ax = plt.subplots(figsize=(9, 4))
for i, (lab, idx) in enumerate(df.groupby("method_label").indices.items()):
    x = np.arange(segs.shape[1])
    ax.semilogy(x - 0.1, segs[idx].mean(0), "o-", color=plt.cm.tab10(i % 10), label=f"{lab[:70]} early")
    ax.semilogy(x + 0.1, late[idx].mean(0), "s--", color=plt.cm.tab10(i % 10), alpha=0.6)
ax.set_xlabel("segment index (a shift starts every segment after the first)")
ax.set_ylabel("calibration loss (1 − s_t)²  [dimensionless]; o early, s late")
ax.set_title(f"mean over {df['seed'].nunique()} seeds")
ax.legend(fontsize=5)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Standard figures (`osdn plot`)

# %%
for p in plot_sweep(out):
    print(p.name)
    display(Image(filename=str(p)))
