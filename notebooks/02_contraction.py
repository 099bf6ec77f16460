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
# # Token-local contraction bounds (claim C4)
#
# After writing token $t$ the residual on that token is $r_t^+=(1-s_t)\,e_t$ with write gain
# $s_t=\beta_t k_t^\top D_t k_t$ (spec §4). For $d_{t,i}\in[d_{\min},d_{\max}]$:
#
# $$\|r_t^+\|\le\max\big(|1-\beta_t d_{\min}\|k_t\|^2|,\ |1-\beta_t d_{\max}\|k_t\|^2|\big)\,\|e_t\|.$$
#
# Caveats shown, not hidden: the transition $I-\beta k\tilde k^\top$ is not symmetric (its spectral norm can
# exceed 1 while $0<s<2$; it contracts in the weighted norm $\|E D^{-1/2}\|_F$), and raw Jacobi
# $d=\mathrm{diag}(H)^{-1}$ gives $s\approx K$ and diverges without the clip.

# %% tags=["parameters"]
FULL = False
SEED = 0

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from osdn_theory import osdn_recurrent
from osdn_theory import tolerances as tol
from osdn_theory.claims import get_claim, run_claim
from osdn_theory.metrics import contraction_factor_bound

budget = "full" if FULL else "quick"
labels = ("C4", "C4-bound", "C4-neg-jacobi", "C4-neg-nonsym")
results = {lab: run_claim(get_claim(lab), budget=budget, seed=SEED) for lab in labels}
display(
    pd.DataFrame(
        [
            {
                "claim": r.label,
                "verdict": r.verdict,
                "measured": r.measured,
                "bound": r.bound,
                "title": r.title,
            }
            for r in results.values()
        ]
    )
)

# %% [markdown]
# ## Measured contraction vs the box bound, token by token
#
# Keys with random norms, $\beta\in[0.2,1]$, $d$ drawn uniformly in a box; the float64 reference recurrence
# gives $e_t$ and $r^+_t$.

# %%
B, T, H, K, V = 4, (1024 if FULL else 256), 2, 8, 4
g = torch.Generator().manual_seed(SEED)
k = torch.randn(B, T, H, K, generator=g, dtype=torch.float64) / K**0.5
v = torch.randn(B, T, H, V, generator=g, dtype=torch.float64)
beta = 0.2 + 0.8 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
d_min, d_max = 0.3, 1.6
d = d_min + (d_max - d_min) * torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
_, _, diag = osdn_recurrent(k, k, v, beta, d, diagnostics=True)
ratio = (diag.residual_post.norm(dim=-1) / diag.residual_pre.norm(dim=-1)).flatten()
bound = contraction_factor_bound(k, beta, d_min, d_max).flatten()  # the same formula claim C4-bound checks
exact = (1 - diag.write_gain).abs().flatten()
print(f"max measured/bound = {float((ratio / bound).max()):.6f} (≤ 1 required)")
print(f"max |measured − |1 − s_t|| = {float((ratio - exact).abs().max()):.2e} (identity r⁺ = (1 − s) e)")
print(f"fraction of tokens with bound < 1 (guaranteed contraction): {float((bound < 1).double().mean()):.3f}")
assert float((ratio / bound).max()) <= 1 + tol.rtol(torch.float64)

fig, ax = plt.subplots(1, 2, figsize=(11, 4))
ax[0].scatter(bound, ratio, s=3, alpha=0.4)
lim = float(max(bound.max(), ratio.max())) * 1.05
ax[0].plot([0, lim], [0, lim], "k--", lw=0.8, label="measured = bound")
ax[0].set_xlabel("bound factor max(|1 − β d_min‖k‖²|, |1 − β d_max‖k‖²|)")
ax[0].set_ylabel("measured ‖r⁺_t‖ / ‖e_t‖  [dimensionless]")
ax[0].set_title(f"B·H·T = {B * H * T} tokens, K = {K}, seed {SEED}")
ax[0].legend(fontsize=8)
cb = results["C4-bound"].series
ax[1].plot(cb["bound_factor"], label="bound factor", lw=0.8)
ax[1].plot(cb["contraction"], label="measured contraction", lw=0.8)
ax[1].set_xlabel("token index, flattened over (b, t, h) (claim C4-bound run, no clip)")
ax[1].set_ylabel("‖r⁺_t‖ / ‖e_t‖  [dimensionless]")
ax[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Caveats: non-symmetric transition and raw Jacobi

# %%
ns = results["C4-neg-nonsym"].evidence
jac = results["C4-neg-jacobi"].evidence
print(
    f"spectral norm of I − β k k̃ᵀ: up to {ns['max_spectral_norm']:.2f} although s = {ns['write_gain_s']:.3f}"
)
print(f"weighted operator norm (‖E D^(-1/2)‖): {ns['max_weighted_operator_norm']:.6f}")
print(
    f"raw Jacobi: mean write gain {jac['mean_write_gain_raw']:.2f} (≈ K), final relative memory error {jac['final_rel_memory_error_raw']:.2e}"
)
print(
    f"with clip s_max = 1: mean write gain {jac['mean_write_gain_clipped']:.2f}, error {jac['final_rel_memory_error_clipped_smax1']:.3f}"
)
failed = [lab for lab, r in results.items() if not r.passed]
print("claims that did not pass:", failed or "none")
assert not failed, f"C4 claims failed: {failed}"
