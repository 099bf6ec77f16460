"""C2 — right-preconditioning equals write-key scaling (spec §2).

``S_t = S_{t−1} − β_t ∇ℓ_t(S_{t−1}) D_t`` with ``∇ℓ_t = e_t k_tᵀ`` equals the OSDN recurrence
``S_{t−1}(I − β_t k_t k̃_tᵀ) + β_t v_t k̃_tᵀ`` with write key ``k̃_t = d_t ⊙ k_t``; ``d ≡ 1`` is DeltaNet.
Checked: :func:`osdn_theory.osdn_recurrent` against an explicit matrix loop ``S ← S − β (e kᵀ) diag(d)``
written here in the math layout (``S ∈ R^{V×K}``), with and without decay, and ``d ≡ 1`` against
:func:`osdn_theory.delta_rule_recurrent`. Symbolic proof: ``proofs_check/c2_right_preconditioning.py``.
"""

from __future__ import annotations

import torch

from ..recurrences import delta_rule_recurrent, osdn_recurrent
from ..tolerances import rel_err, rtol
from ._common import F64, generator, random_inputs, worst
from ._registry import Outcome, Size, claim


def _explicit_gd(q, k, v, beta, d, alpha, scale):
    """Right-preconditioned online GD written as matrices: S ← α S − β (α S k − v) kᵀ diag(d)."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    S = torch.zeros(B, H, V, K, dtype=F64)
    o = torch.zeros(B, T, H, V, dtype=F64)
    for t in range(T):
        a = 1.0 if alpha is None else alpha[:, t, :, None, None]
        S = a * S
        kk = k[:, t, :, :, None]  # [B,H,K,1]
        e = S @ kk - v[:, t, :, :, None]  # [B,H,V,1]
        grad = e @ kk.transpose(-1, -2)  # ∇ℓ = e kᵀ, [B,H,V,K]
        S = S - beta[:, t, :, None, None] * grad @ torch.diag_embed(d[:, t])
        o[:, t] = scale * (S @ q[:, t, :, :, None])[..., 0]
    return o, S.transpose(-1, -2)


@claim(
    "C2",
    title="Right-preconditioning = write-key scaling",
    statement="S − β∇ℓ(S) D equals S(I − β k k̃ᵀ) + β v k̃ᵀ with k̃ = d ⊙ k; d ≡ 1 is DeltaNet",
    assumptions=["D = diag(d), d > 0", "∇ℓ_t(S) = e_t k_tᵀ", "float64"],
    comparison="equal within tol",
    quick=dict(B=2, T=24, H=2, K=6, V=5),
    full=dict(B=2, T=200, H=3, K=16, V=12),
    proof="proofs_check.c2_right_preconditioning",
)
def c2_right_preconditioning(size: Size, seed: int) -> Outcome:
    g = generator(seed, 2)
    errs = {}
    for gated in (False, True):
        q, k, v, beta, d, alpha = random_inputs(
            g, size.B, size.T, size.H, size.K, size.V, normalize=False, d_box=(0.2, 2.0), gated=gated
        )
        scale = size.K**-0.5
        o_ref, s_ref = _explicit_gd(q, k, v, beta, d, alpha, scale)
        o, s = osdn_recurrent(q, k, v, beta, d, alpha=alpha, output_final_state=True)
        tag = "gated" if gated else "ungated"
        errs[f"{tag}_output"] = rel_err(o, o_ref)
        errs[f"{tag}_state"] = rel_err(s, s_ref)
        o_dn, s_dn = delta_rule_recurrent(q, k, v, beta, alpha=alpha, output_final_state=True)
        o_one, s_one = osdn_recurrent(q, k, v, beta, torch.ones_like(d), alpha=alpha, output_final_state=True)
        errs[f"{tag}_d1_vs_deltanet"] = worst(rel_err(o_one, o_dn), rel_err(s_one, s_dn))
    return Outcome(
        measured=worst(*errs.values()),
        bound=rtol(F64),
        evidence=dict(errs, shape=[size.B, size.T, size.H, size.K, size.V], dtype="float64", seed=seed),
    )
