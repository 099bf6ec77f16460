"""C1 — the inner loss is exactly quadratic in the memory (spec §2).

``ℓ(S) = ½‖S k − v‖²`` with ``e = S k − v`` satisfies, for every ``Δ ∈ R^{V×K}``,
``ℓ(S + Δ) = ℓ(S) + ⟨e kᵀ, Δ⟩_F + ½‖Δ k‖²`` with no remainder; the Hessian acts on the right,
``Δ ↦ Δ k kᵀ``. Symbolic proof: ``proofs_check/c1_exact_quadratic.py``.

Here the library's own inner loss and gradient are checked — :func:`osdn_theory.recurrences.inner_loss` and
:func:`~osdn_theory.recurrences.inner_grad`, the functions whose gradient :func:`osdn_recurrent` uses for its
write ``S ← S − β ∇ℓ(S) D`` — in float64 over random ``(S, k, v, Δ)`` at many scales of ``Δ`` (a Taylor
expansion with a remainder would show a relative error growing with ``‖Δ‖``):

* the library loss equals ``½‖S k − v‖²`` and its gradient equals ``e kᵀ`` (the statement's formulas), and
  its right-preconditioned gradient equals ``e kᵀ D`` (the form the recurrence writes with, through the same
  code, with the write key ``c d ⊙ k``);
* the expansion holds with the library's loss on both sides and its gradient in the linear term;
* the library gradient equals the autograd gradient of the library loss;
* the Hessian action: ``∇ℓ(S + Δ) − ∇ℓ(S) = Δ k kᵀ`` exactly (the library gradient is affine in ``S``),
  and the autograd Hessian-vector product of the library loss is ``Δ k kᵀ``.

Everything is in the library's state layout ``Sᵀ ∈ R^{K×V}``, where ``Δ k kᵀ`` reads ``k kᵀ Δᵀ``.
"""

from __future__ import annotations

import torch

from ..recurrences import inner_grad, inner_loss
from ..tolerances import rtol
from ._common import F64, generator, worst
from ._registry import Outcome, Size, claim


def _rel(out: torch.Tensor, ref: torch.Tensor, mag: torch.Tensor) -> float:
    """Largest per-draw ``|out − ref| / mag`` (norms over the trailing matrix axes)."""
    diff = (out - ref).reshape(out.shape[0], -1).norm(dim=-1)
    return (diff / mag.reshape(-1)).max().item()


@claim(
    "C1",
    title="Exact quadratic inner loss",
    statement="ℓ(S+Δ) = ℓ(S) + ⟨e kᵀ, Δ⟩_F + ½‖Δk‖² for every Δ (no remainder); Hessian Δ ↦ Δ k kᵀ",
    assumptions=["ℓ_t(S) = ½‖S k_t − v_t‖² (the library's inner_loss / inner_grad)", "float64"],
    comparison="equal within tol",
    quick=dict(draws=200, K=8, V=6),
    full=dict(draws=5000, K=32, V=16),
    proof="proofs_check.c1_exact_quadratic",
)
def c1_exact_quadratic(size: Size, seed: int) -> Outcome:
    g = generator(seed, 1)
    n, K, V = size.draws, size.K, size.V
    M = torch.randn(n, K, V, generator=g, dtype=F64)  # Sᵀ (state layout)
    k = torch.randn(n, K, generator=g, dtype=F64)
    v = torch.randn(n, V, generator=g, dtype=F64)
    scales = 10.0 ** torch.linspace(-3, 3, n, dtype=F64)  # ‖Δ‖ from tiny to huge
    D = torch.randn(n, K, V, generator=g, dtype=F64) * scales[:, None, None]  # Δᵀ
    # The statement's formulas, written here independently of the library.
    e = torch.einsum("nk,nkv->nv", k, M) - v
    loss_ref = 0.5 * (e**2).sum(-1)
    grad_ref = k[:, :, None] * e[:, None, :]  # (e kᵀ)ᵀ
    Dk = torch.einsum("nk,nkv->nv", k, D)  # Δ k
    hess_ref = k[:, :, None] * Dk[:, None, :]  # (Δ k kᵀ)ᵀ
    # The library.
    loss, grad = inner_loss(M, k, v), inner_grad(M, k, v)
    loss_err = ((loss - loss_ref).abs() / loss_ref.abs()).max().item()
    grad_err = _rel(grad, grad_ref, grad_ref.reshape(n, -1).norm(dim=-1))
    d = torch.exp(torch.randn(n, K, generator=g, dtype=F64))
    pre_ref = d[:, :, None] * grad_ref  # (e kᵀ D)ᵀ = D k eᵀ
    pre_err = _rel(inner_grad(M, k, v, d), pre_ref, pre_ref.reshape(n, -1).norm(dim=-1))
    # Exact expansion, relative to the size of the terms involved (cancellation-aware).
    lhs = inner_loss(M + D, k, v)
    lin = (grad * D).sum((-1, -2))
    quad = 0.5 * (Dk**2).sum(-1)
    rhs = loss + lin + quad
    mag = loss.abs() + lin.abs() + quad.abs()
    expansion_err = ((lhs - rhs).abs() / mag).max().item()
    # Hessian action: the gradient is affine in S, so ∇ℓ(S + Δ) − ∇ℓ(S) is exactly Δ k kᵀ.
    grad_D = inner_grad(M + D, k, v)
    hess_err = _rel(
        grad_D - grad, hess_ref, grad_D.reshape(n, -1).norm(dim=-1) + grad.reshape(n, -1).norm(dim=-1)
    )
    # Autograd of the library loss: its gradient is the library gradient, its Hessian-vector product Δ k kᵀ.
    m = min(n, 8)
    Mg = M[:m].clone().requires_grad_(True)
    ag = torch.autograd.grad(inner_loss(Mg, k[:m], v[:m]).sum(), Mg, create_graph=True)[0]
    autograd_err = _rel(ag.detach(), grad[:m], grad[:m].reshape(m, -1).norm(dim=-1))
    hvp = torch.autograd.grad((ag * D[:m]).sum(), Mg)[0]
    hvp_err = ((hvp - hess_ref[:m]).norm() / hess_ref[:m].norm()).item()
    errs = dict(
        loss_vs_definition=loss_err,
        grad_vs_e_kT=grad_err,
        preconditioned_grad_vs_e_kT_D=pre_err,
        expansion=expansion_err,
        grad_difference_vs_hessian_action=hess_err,
        grad_vs_autograd=autograd_err,
        autograd_hvp_vs_hessian_action=hvp_err,
    )
    return Outcome(
        measured=worst(*errs.values()),
        bound=rtol(F64),
        evidence=dict(
            max_rel_err=errs,
            library=["osdn_theory.recurrences.inner_loss", "osdn_theory.recurrences.inner_grad"],
            draws=n,
            shape_S=[V, K],
            delta_norm_range=[float(scales[0]), float(scales[-1])],
            dtype="float64",
            seed=seed,
        ),
    )
