"""C1 — the inner loss is exactly quadratic in the memory (spec §2).

``ℓ(S) = ½‖S k − v‖²`` with ``e = S k − v`` satisfies, for every ``Δ ∈ R^{V×K}``,
``ℓ(S + Δ) = ℓ(S) + ⟨e kᵀ, Δ⟩_F + ½‖Δ k‖²`` with no remainder; the Hessian acts on the right,
``Δ ↦ Δ k kᵀ``. Symbolic proof: ``proofs_check/c1_exact_quadratic.py``. Here: a float64 check over
random ``(S, k, v, Δ)`` at many scales of ``Δ`` (a Taylor expansion with a remainder would show a relative
error growing with ``‖Δ‖``), and the Hessian-vector product by autograd against ``Δ k kᵀ``.
"""

from __future__ import annotations

import torch

from ..tolerances import rtol
from ._common import F64, generator, worst
from ._registry import Outcome, Size, claim


def _loss(S: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((S @ k - v) ** 2).sum((-2, -1))


@claim(
    "C1",
    title="Exact quadratic inner loss",
    statement="ℓ(S+Δ) = ℓ(S) + ⟨e kᵀ, Δ⟩_F + ½‖Δk‖² for every Δ (no remainder); Hessian Δ ↦ Δ k kᵀ",
    assumptions=["ℓ_t(S) = ½‖S k_t − v_t‖²", "float64"],
    comparison="equal within tol",
    quick=dict(draws=200, K=8, V=6),
    full=dict(draws=5000, K=32, V=16),
    proof="proofs_check.c1_exact_quadratic",
)
def c1_exact_quadratic(size: Size, seed: int) -> Outcome:
    g = generator(seed, 1)
    n, K, V = size.draws, size.K, size.V
    S = torch.randn(n, V, K, generator=g, dtype=F64)
    k = torch.randn(n, K, 1, generator=g, dtype=F64)
    v = torch.randn(n, V, 1, generator=g, dtype=F64)
    scales = 10.0 ** torch.linspace(-3, 3, n, dtype=F64)  # ‖Δ‖ from tiny to huge
    D = torch.randn(n, V, K, generator=g, dtype=F64) * scales[:, None, None]
    e = S @ k - v
    lhs = _loss(S + D, k, v)
    lin = (e @ k.transpose(-1, -2) * D).sum((-1, -2))
    quad = 0.5 * ((D @ k) ** 2).sum((-1, -2))
    rhs = _loss(S, k, v) + lin + quad
    # Relative to the size of the terms involved (cancellation-aware).
    mag = _loss(S, k, v).abs() + lin.abs() + quad.abs()
    err = ((lhs - rhs).abs() / mag).max().item()
    # Hessian-vector product via autograd: ∇ℓ(S + εΔ) − ∇ℓ(S) is exactly ε Δ k kᵀ (linear gradient).
    Sg = S[:8].clone().requires_grad_(True)
    grad = torch.autograd.grad(_loss(Sg, k[:8], v[:8]).sum(), Sg, create_graph=True)[0]
    hvp = torch.autograd.grad((grad * D[:8]).sum(), Sg)[0]
    hvp_ref = D[:8] @ k[:8] @ k[:8].transpose(-1, -2)
    hvp_err = ((hvp - hvp_ref).norm() / hvp_ref.norm()).item()
    return Outcome(
        measured=worst(err, hvp_err),
        bound=rtol(F64),
        evidence=dict(
            max_rel_err_expansion=err,
            rel_err_hessian_vector=hvp_err,
            draws=n,
            shape_S=[V, K],
            delta_norm_range=[float(scales[0]), float(scales[-1])],
            dtype="float64",
            seed=seed,
        ),
    )
