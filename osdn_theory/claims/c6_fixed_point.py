"""C6 — the learned preconditioner converges to the diagonal (Jacobi) right-Newton direction (spec §5).

For stationary keys with independent zero-mean Gaussian features of variances ``a``, the ratio rule's
expected feedback ``E(1 − β uᵀd)²`` is minimised by ``d* = a⁻¹ / (β(K + 2))`` (proof:
``proofs_check/c6_fixed_point.py``), i.e. the direction of ``diag(E kkᵀ)⁻¹`` scaled so that
``E s = K/(K+2)``. Checked: :func:`osdn_theory.preconditioners.d_scan` (ratio rule, ``η_t = η_0/√t``) on
anisotropic Gaussian teacher streams; the Polyak average of ``d_t`` over the second half must have cosine
``≥ 0.99`` with ``d*`` and a least-squares scale within 5% of 1, for every seed (realisation).
"""

from __future__ import annotations

import torch

from ..comparators import best_fixed_diagonal, fixed_point_d
from ..preconditioners import ScheduledStep, d_scan
from ..schedules import inverse_sqrt
from ..streams import TeacherStream
from ._registry import Outcome, Size, claim

#: Acceptance thresholds of C6 (from the claim's statement).
C6_MIN_COSINE = 0.99
C6_MAX_SCALE_ERROR = 0.05


@claim(
    "C6",
    title="Learned d converges to the Jacobi right-Newton direction",
    statement=(
        "ratio rule on stationary Gaussian keys (variances a): the averaged d_t has cosine ≥ 0.99 with "
        "d* = a⁻¹/(β(K+2)) and scale within 5%, for every seed"
    ),
    assumptions=[
        "stationary keys, independent zero-mean Gaussian features",
        "step η_t = η_0/√t (decaying), Polyak average over the second half",
    ],
    comparison="lower bound",
    quick=dict(T=24000, K=8, seeds=4, condition=10.0, beta=1.0, eta0=8.0),
    full=dict(T=40000, K=16, seeds=8, condition=10.0, beta=1.0, eta0=8.0),
    proof="proofs_check.c6_fixed_point",
)
def c6_fixed_point(size: Size, seed: int) -> Outcome:
    st = TeacherStream(
        T=size.T, K=size.K, V=1, cov="anisotropic", condition=size.condition, beta=size.beta, batch=size.seeds
    )
    data = st.build(seed)
    scan = d_scan(data.k, data.beta, rule="ratio", step=ScheduledStep(inverse_sqrt(size.eta0)))
    dbar = scan.d[:, size.T // 2 :].mean(1)  # [B, H, K]
    dstar = fixed_point_d(data.a, size.beta)
    cos = torch.nn.functional.cosine_similarity(dbar, dstar, dim=-1).flatten()
    scale = ((dbar * dstar).sum(-1) / (dstar * dstar).sum(-1)).flatten()
    # For context: the empirical best fixed diagonal in hindsight on the same second half.
    mask = torch.zeros_like(data.beta, dtype=torch.bool)
    mask[:, size.T // 2 :] = True
    best = best_fixed_diagonal(data.k, data.beta, mask=mask)
    cos_best = torch.nn.functional.cosine_similarity(best.d, dstar, dim=-1).flatten()
    min_cos = float(cos.min())
    max_scale_err = float((scale - 1).abs().max())
    passed = min_cos >= C6_MIN_COSINE and max_scale_err <= C6_MAX_SCALE_ERROR
    return Outcome(
        measured=min_cos,
        bound=C6_MIN_COSINE,
        passed=passed,
        evidence=dict(
            per_seed_cosine=cos.tolist(),
            per_seed_scale=scale.tolist(),
            max_scale_error=max_scale_err,
            scale_tolerance=C6_MAX_SCALE_ERROR,
            hindsight_best_fixed_cosine=cos_best.tolist(),
            floor_active_fraction=float(scan.floor_active.double().mean()),
            d_star_seed0=dstar[0, 0].tolist(),
            d_avg_seed0=dbar[0, 0].tolist(),
            step=f"eta_t = {size.eta0}/sqrt(t)",
            T=size.T,
            K=size.K,
            condition=size.condition,
            beta=size.beta,
            stream_seed=seed,
            realisations=size.seeds,
            dtype="float64",
        ),
    )
