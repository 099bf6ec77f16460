"""C4 caveat: D^{1/2}(I − β k kᵀ D)D^{−1/2} = I − β w wᵀ with w = D^{1/2}k; its eigenvalues are 1 and 1 − s."""

from __future__ import annotations

import sys

import sympy as sp

from proofs_check import Checker, sym_vector


def main() -> int:
    c = Checker("weighted-norm similarity of the OSDN transition")
    K = 3
    k = sym_vector("k", K)
    d = sym_vector("d", K, positive=True)
    beta = sp.Symbol("beta", positive=True)
    I = sp.eye(K)
    D = sp.diag(*d)
    Dh = sp.diag(*[sp.sqrt(x) for x in d])
    Dmh = sp.diag(*[1 / sp.sqrt(x) for x in d])
    w = Dh * k
    M = I - beta * k * k.T * D
    c.zero("D^{1/2} (I − β k kᵀ D) D^{−1/2} = I − β w wᵀ", Dh * M * Dmh - (I - beta * w * w.T))
    s = beta * (k.T * D * k)[0, 0]
    P = I - beta * w * w.T
    c.zero("(I − β w wᵀ) w = (1 − s) w", P * w - (1 - s) * w)
    # Any x ⟂ w is fixed: take the two cross products with w as a basis of w^⊥ (K = 3).
    e1, e2 = sp.Matrix([1, 0, 0]), sp.Matrix([0, 1, 0])
    for i, e in enumerate((e1, e2)):
        x = w.cross(e)
        c.zero(f"x_{i} = w × e_{i} ⟂ w is fixed: (I − β w wᵀ) x = x", P * x - x)
    c.zero("I − β w wᵀ is symmetric (so its 2-norm is max(1, |1 − s|) ≤ 1 for 0 < s < 2)", P - P.T)
    c.zero("M − Mᵀ = β(D k kᵀ − k kᵀ D) for M = I − β k kᵀD", (M - M.T) - beta * (D * k * k.T - k * k.T * D))
    # That identity alone does not show asymmetry: check that M − Mᵀ is not identically zero, and that it
    # vanishes when D = δI (the assumption whose removal the caveat is about).
    asym = (M - M.T)[0, 1]
    c.true(
        "the unweighted transition is not symmetric for generic d: (M − Mᵀ)_{01} = β k_0 k_1 (d_0 − d_1) ≢ 0",
        sp.expand(asym) != 0 and sp.expand(asym - beta * k[0] * k[1] * (d[0] - d[1])) == 0,
    )
    delta = sp.Symbol("delta", positive=True)
    c.zero("with D = δI the transition is symmetric: M − Mᵀ = 0", (M - M.T).subs({x: delta for x in d}))
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
