"""C4: r⁺ = S_t k − v = (1 − s) e with s = β kᵀ D k (gated: e = α S_{t−1} k − v)."""

from __future__ import annotations

import sys

import sympy as sp

from proofs_check import Checker, sym_matrix, sym_vector


def main() -> int:
    c = Checker("C4 token-local residual identity")
    V, K = 2, 3
    S = sym_matrix("S", V, K)
    k, v = sym_vector("k", K), sym_vector("v", V)
    d = sym_vector("d", K, positive=True)
    beta, alpha = sp.symbols("beta alpha", positive=True)
    kt = sp.Matrix(K, 1, lambda i, _: d[i] * k[i])
    s = beta * (k.T * kt)[0, 0]
    for name, a in (("ungated", 1), ("gated", alpha)):
        e = a * S * k - v
        St = a * S - beta * e * kt.T
        c.zero(f"{name}: S_t k − v = (1 − s) e", St * k - v - (1 - s) * e)
    c.true(
        "s = β Σ_i d_i k_i² (the write gain)",
        sp.expand(s - beta * sum(d[i] * k[i] ** 2 for i in range(K))) == 0,
    )
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
