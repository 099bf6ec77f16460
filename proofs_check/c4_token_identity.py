"""C4: r⁺ = S_t k − v = (1 − s) e with s = β kᵀ D k (gated: e = α S_{t−1} k − v; clipped: s = s_max)."""

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
    # Clipped write: k̃ = c · d ⊙ k with c = s_max/s_raw (when s_raw > s_max). The identity above holds with
    # the effective gain s = β kᵀk̃, which equals s_max exactly; so the clipped residual is (1 − s_max) e.
    s_max = sp.Symbol("s_max", positive=True)
    kc = kt * (s_max / s)
    s_eff = beta * (k.T * kc)[0, 0]
    c.zero(
        "clipped: the effective gain β kᵀ(c d ⊙ k) with c = s_max/s_raw is s_max", sp.cancel(s_eff - s_max)
    )
    e = S * k - v
    c.zero(
        "clipped: S_t k − v = (1 − s_max) e",
        ((S - beta * e * kc.T) * k - v - (1 - s_max) * e).applyfunc(sp.cancel),
    )
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
