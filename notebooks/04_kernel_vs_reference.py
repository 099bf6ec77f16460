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
# # Triton kernel vs float64 reference (claims C2–C3)
#
# The chunkwise Triton kernel `osdn_theory.kernels.chunk_osdn` runs here at small sizes (under the Triton
# interpreter on a machine without CUDA) and is compared with the token-by-token float64 recurrence
# `osdn_recurrent` and the torch chunk form `osdn_chunkwise`, with the project's one error metric
# $\|out-ref\|/\|ref\|$ and the tolerances of `osdn_theory.tolerances`. GPU timings and accuracies are shown
# from `benchmarks/results/*.json` when such files are present.

# %% tags=["parameters"]
FULL = False
SEED = 0

# %%
import json
import os
from pathlib import Path

import pandas as pd
import torch
from IPython.display import display

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernel module is imported

from osdn_theory import osdn_chunkwise, osdn_recurrent, rel_err
from osdn_theory import tolerances as tol

try:
    from osdn_theory.kernels import chunk_osdn
except ImportError as err:  # degrade with an explicit message
    chunk_osdn = None
    print(f"the Triton kernel is not available ({err}); showing the torch chunk form only")


def find_checkout(marker: str) -> Path | None:
    """The repository checkout holding ``marker`` (a relative path): searched from the working folder upward,
    then beside the imported package; ``None`` when there is none (an installed package run elsewhere)."""
    import osdn_theory

    starts = [Path.cwd(), *Path.cwd().parents, Path(osdn_theory.__file__).resolve().parents[1]]
    return next((p for p in starts if (p / marker).exists()), None)


ROOT = find_checkout("benchmarks/results")  # None outside the repository: no stored GPU results to show
device = "cuda" if torch.cuda.is_available() else "cpu"
print("device:", device, "| TRITON_INTERPRET =", os.environ.get("TRITON_INTERPRET"))

# %%
shapes = [(1, 64, 1, 16, 16), (2, 100, 2, 16, 8)] + ([(2, 256, 2, 32, 32)] if FULL else [])
rows = []
for B, T, H, K, V in shapes:
    g = torch.Generator().manual_seed(SEED)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=torch.float64), dim=-1)
    q = torch.randn(B, T, H, K, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
    beta = 0.1 + 0.9 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    d = torch.exp(0.3 * torch.randn(B, T, H, K, generator=g, dtype=torch.float64))
    ref, ref_h = osdn_recurrent(q, k, v, beta, d, output_final_state=True)
    o, h = osdn_chunkwise(q, k, v, beta, d, output_final_state=True, chunk_size=16)
    rows.append(
        dict(
            impl="torch chunk form",
            shape=f"B{B}-T{T}-H{H}-K{K}-V{V}",
            dtype="float64",
            rel_err_o=rel_err(o, ref),
            rel_err_state=rel_err(h, ref_h),
            tolerance=tol.EXACT_FLOAT64,
        )
    )
    if chunk_osdn is not None:
        for dt, tl in ((torch.float64, tol.KERNEL_INTERP_FLOAT64), (torch.float32, tol.rtol(torch.float32))):
            args = [x.to(device=device, dtype=dt) for x in (q, k, v, beta, d)]
            ko, kh = chunk_osdn(*args, output_final_state=True, chunk_size=16)
            rows.append(
                dict(
                    impl="Triton kernel",
                    shape=f"B{B}-T{T}-H{H}-K{K}-V{V}",
                    dtype=str(dt).split(".")[-1],
                    rel_err_o=rel_err(ko, ref),
                    rel_err_state=rel_err(kh, ref_h),
                    tolerance=tl,
                )
            )
res = pd.DataFrame(rows)
res["passed"] = (res["rel_err_o"] <= res["tolerance"]) & (res["rel_err_state"] <= res["tolerance"])
print(f"seed {SEED}; reference: float64 token-by-token recurrence")
display(res)

# %%
import matplotlib.pyplot as plt
import numpy as np

lab = res["impl"] + " " + res["dtype"] + "\n" + res["shape"]
x = np.arange(len(res))
fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(res)), 4))
ax.bar(x - 0.2, res["rel_err_o"].clip(lower=1e-18), width=0.4, label="outputs o")
ax.bar(x + 0.2, res["rel_err_state"].clip(lower=1e-18), width=0.4, label="final state")
ax.scatter(x, res["tolerance"], marker="_", s=600, color="k", label="tolerance", zorder=3)
ax.set_yscale("log")
ax.set_xticks(x, lab, fontsize=6)
ax.set_ylabel("relative error ‖out − ref‖ / ‖ref‖  (ref: float64 recurrence)")
ax.set_title(f"kernel and chunk form vs the float64 recurrence, seed {SEED}, device {device}")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
assert res["passed"].all(), res[~res["passed"]]

# %% [markdown]
# ## GPU results from `benchmarks/results`

# %%
found = []
for p in sorted((ROOT / "benchmarks" / "results").glob("*.json")) if ROOT is not None else []:
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        continue
    env = data.get("environment", {}) if isinstance(data, dict) else {}
    if env.get("cuda_device"):
        found.append(p)
        print(
            f"{p.name}: {env.get('cuda_device')}, torch {env.get('torch')}, triton {env.get('triton')}, {env.get('date')}"
        )
        if isinstance(data.get("rows"), list):
            display(pd.DataFrame(data["rows"]))
if not found:
    print(
        "no GPU benchmark results in benchmarks/results (run the kernel benchmark on a CUDA machine to add them)"
        if ROOT is not None
        else f"no repository checkout found from {Path.cwd()}: no stored GPU benchmark results to show"
    )
