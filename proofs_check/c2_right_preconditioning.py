"""C2: S − β ∇ℓ(S) D = S(I − β k k̃ᵀ) + β v k̃ᵀ with k̃ = d ⊙ k (also gated; d ≡ 1 is DeltaNet)."""

from __future__ import annotations

import sys

import sympy as sp

from proofs_check import Checker, sym_matrix, sym_vector


def main() -> int:
    c = Checker("C2 right-preconditioning = write-key scaling")
    V, K = 2, 3
    S = sym_matrix("S", V, K)
    k, v = sym_vector("k", K), sym_vector("v", V)
    d = sym_vector("d", K, positive=True)
    beta, alpha = sp.symbols("beta alpha", positive=True)
    D = sp.diag(*d)
    kt = sp.Matrix(K, 1, lambda i, _: d[i] * k[i])
    I = sp.eye(K)
    grad = (S * k - v) * k.T
    c.zero(
        "S − β (S k − v) kᵀ D = S (I − β k k̃ᵀ) + β v k̃ᵀ",
        S - beta * grad * D - (S * (I - beta * k * kt.T) + beta * v * kt.T),
    )
    Sa = alpha * S
    grad_a = (Sa * k - v) * k.T
    c.zero(
        "gated: αS − β ∇ℓ(αS) D = αS (I − β k k̃ᵀ) + β v k̃ᵀ",
        Sa - beta * grad_a * D - (Sa * (I - beta * k * kt.T) + beta * v * kt.T),
    )
    ones = {di: 1 for di in d}
    c.zero(
        "d ≡ 1 gives DeltaNet S (I − β k kᵀ) + β v kᵀ",
        (S * (I - beta * k * kt.T) + beta * v * kt.T).subs(ones)
        - (S * (I - beta * k * k.T) + beta * v * k.T),
    )
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
