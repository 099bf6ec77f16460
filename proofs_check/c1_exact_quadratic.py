"""C1: ℓ(S+Δ) = ℓ(S) + ⟨e kᵀ, Δ⟩_F + ½‖Δk‖² exactly, and the Hessian is Δ ↦ Δ k kᵀ (V = 2, K = 3)."""

from __future__ import annotations

import sys

import sympy as sp

from proofs_check import Checker, sym_matrix, sym_vector


def main() -> int:
    c = Checker("C1 exact quadratic inner loss")
    V, K = 2, 3
    S, D = sym_matrix("S", V, K), sym_matrix("Delta", V, K)
    k, v = sym_vector("k", K), sym_vector("v", V)

    def loss(M):
        r = M * k - v
        return sp.Rational(1, 2) * (r.T * r)[0, 0]

    e = S * k - v
    inner = sum((e * k.T)[i, j] * D[i, j] for i in range(V) for j in range(K))
    quad = sp.Rational(1, 2) * ((D * k).T * (D * k))[0, 0]
    c.zero("ℓ(S+Δ) − ℓ(S) − ⟨e kᵀ, Δ⟩_F − ½‖Δk‖² = 0 (no remainder)", loss(S + D) - loss(S) - inner - quad)
    grad = sp.Matrix(V, K, lambda i, j: sp.diff(loss(S), S[i, j]))
    c.zero("∇ℓ(S) = e kᵀ", grad - e * k.T)
    # Hessian-vector product: directional derivative of the gradient along Δ equals Δ k kᵀ.
    eps = sp.Symbol("eps")
    hvp = sp.Matrix(
        V,
        K,
        lambda i, j: sp.diff(
            grad[i, j].subs({S[a, b]: S[a, b] + eps * D[a, b] for a in range(V) for b in range(K)}), eps
        ),
    )
    c.zero("Hessian acts on the right: ∇²ℓ[Δ] = Δ k kᵀ", hvp - D * k * k.T)
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
