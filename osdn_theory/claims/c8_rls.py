"""C8 — RLS (cumulative right-Newton) reproduces the weighted ridge minimiser at every t (spec §6).

``H_t = γH_{t−1} + k_t k_tᵀ``, ``H_0 = λI``, ``β = 1``, write key ``H_t⁻¹k_t``: the state after every token equals
``argmin_S ½Σ_{i≤t} γ^{t−i}‖S k_i − v_i‖² + ½λγ^t‖S‖²``, and the write gain is ``s_t = a_t/(1 + a_t)`` with
leverage ``a_t = k_tᵀ(γH_{t−1})⁻¹k_t`` (spec erratum: the spec writes ``H_{t−1}⁻¹``, equal only for γ = 1).
Proofs: ``proofs_check/c8_rls_sherman_morrison.py``. ``C8-neg-erratum``: the spec's literal leverage with
γ < 1 does not reproduce the ridge minimiser.
"""

from __future__ import annotations

import math

import torch

from ..comparators import ridge_solution, rls
from ..tolerances import NEG_CONTROL_SEPARATION, rel_err, rtol
from ._common import F64, generator, worst
from ._registry import Outcome, Size, claim


def _ridge_errors(size: Size, seed: int, gamma: float, variant: str):
    g = generator(seed, 8, int(gamma * 1000))
    B, T, H, K, V = size.B, size.T, size.H, size.K, size.V
    k = torch.randn(B, T, H, K, generator=g, dtype=F64) / K**0.5
    v = torch.randn(B, T, H, V, generator=g, dtype=F64)
    _, _, diag = rls(k, k, v, gamma=gamma, lam=size.lam, diagnostics=True, keep_states=True, variant=variant)
    errs = [
        rel_err(diag.states[:, t - 1], ridge_solution(k, v, t, gamma=gamma, lam=size.lam))
        for t in range(1, T + 1)
    ]
    gain_err = rel_err(diag.write_gain, diag.leverage / (1 + diag.leverage))
    return worst(*errs), gain_err


@claim(
    "C8",
    title="RLS = weighted ridge at every t",
    statement="RLS with write key H_t⁻¹k_t equals the weighted ridge minimiser at every t; s_t = a_t/(1 + a_t)",
    assumptions=["β = 1, H_0 = λI", "leverage a_t = k_tᵀ(γH_{t−1})⁻¹k_t (corrected from the spec)"],
    comparison="equal within tol",
    quick=dict(B=2, T=24, H=2, K=6, V=4, lam=0.5, gammas=(1.0, 0.9)),
    full=dict(B=2, T=128, H=2, K=16, V=8, lam=0.5, gammas=(1.0, 0.97, 0.8)),
    proof="proofs_check.c8_rls_sherman_morrison",
)
def c8_rls_ridge(size: Size, seed: int) -> Outcome:
    ev = {}
    for gamma in size.gammas:
        e, ge = _ridge_errors(size, seed, gamma, "exact")
        ev[f"gamma={gamma}: max_t rel err vs ridge"] = e
        ev[f"gamma={gamma}: rel err s vs a/(1+a)"] = ge
    return Outcome(
        measured=worst(*ev.values()),
        bound=rtol(F64),
        evidence=dict(
            ev, shape=[size.B, size.T, size.H, size.K, size.V], lam=size.lam, dtype="float64", seed=seed
        ),
    )


@claim(
    "C8-neg-erratum",
    title="Spec's literal RLS leverage with γ < 1 misses the ridge minimiser",
    statement="with a_t = k_tᵀH_{t−1}⁻¹k_t (no γ) and γ < 1 the RLS states deviate from the weighted ridge minimiser",
    assumptions=["γ < 1 (the erratum matters only there)", "variant='erratum' of comparators.rls"],
    comparison="lower bound",
    negative_control=True,
    quick=dict(B=2, T=24, H=2, K=6, V=4, lam=0.5, gamma=0.9),
    full=dict(B=2, T=128, H=2, K=16, V=8, lam=0.5, gamma=0.8),
)
def c8_neg_erratum(size: Size, seed: int) -> Outcome:
    e, _ = _ridge_errors(size, seed, size.gamma, "erratum")
    e1, _ = _ridge_errors(size, seed, 1.0, "erratum")
    # Deviation must be far above the tolerance for γ < 1, while at γ = 1 the two variants coincide.
    bound = NEG_CONTROL_SEPARATION * rtol(F64)
    return Outcome(
        measured=e,
        bound=bound,
        # rel_err gives inf for non-finite states: a variant that blew up must not count as "deviates".
        passed=math.isfinite(e) and e >= bound and e1 <= rtol(F64),
        evidence=dict(
            max_rel_err_gamma_lt_1=e, gamma=size.gamma, max_rel_err_gamma_1=e1, dtype="float64", seed=seed
        ),
    )
