"""C6: for k_i ~ N(0, a_i) independent, argmin_d E(1 − β uᵀd)² = a⁻¹/(β(K + 2)) and E s = K/(K + 2) (K = 2, 3).

The Gaussian moments ``E k_i² = a_i``, ``E k_i⁴ = 3a_i²`` and the expected feedback itself are computed by
``sympy.stats`` from the joint law of the independent features, not expanded by hand.
"""

from __future__ import annotations

import sys

import sympy as sp
from sympy.stats import E, Normal

from proofs_check import Checker


def main() -> int:
    c = Checker("C6 fixed point of the ratio rule for Gaussian keys")
    beta = sp.Symbol("beta", positive=True)
    for K in (2, 3):
        a = sp.symbols(f"a0:{K}", positive=True)
        d = sp.symbols(f"d0:{K}", real=True)
        X = [Normal(f"k{i}", 0, sp.sqrt(a[i])) for i in range(K)]
        m2 = [sp.simplify(E(X[i] ** 2)) for i in range(K)]
        m4 = [sp.simplify(E(X[i] ** 4)) for i in range(K)]
        c.true(
            f"K = {K}: E k_i² = a_i and E k_i⁴ = 3a_i² (sympy.stats)",
            all(sp.simplify(m2[i] - a[i]) == 0 and sp.simplify(m4[i] - 3 * a[i] ** 2) == 0 for i in range(K)),
        )
        # E(1 − β uᵀd)² with u_i = k_i², taken by sympy.stats over the joint law of independent k_i (not
        # expanded by hand); then compared with the closed form used by comparators.expected_feedback.
        obj = sp.expand(E(sp.expand((1 - beta * sum(X[i] ** 2 * d[i] for i in range(K))) ** 2)))
        ad = sum(a[i] * d[i] for i in range(K))
        closed = 1 - 2 * beta * ad + beta**2 * (ad**2 + 2 * sum(a[i] ** 2 * d[i] ** 2 for i in range(K)))
        c.zero(f"K = {K}: E(1 − β uᵀd)² = 1 − 2β aᵀd + β²((aᵀd)² + 2Σ a_i² d_i²)", obj - closed)
        sol = sp.solve([sp.diff(obj, di) for di in d], d, dict=True)
        c.true(f"K = {K}: the stationary point is unique", len(sol) == 1)
        star = [1 / (a[i] * beta * (K + 2)) for i in range(K)]
        c.zero(f"K = {K}: d* = a⁻¹/(β(K + 2))", sp.Matrix([sol[0][d[i]] - star[i] for i in range(K)]))
        Hs = sp.hessian(obj, d)
        c.true(
            f"K = {K}: the objective is strictly convex (Hessian positive definite)",
            all(sp.simplify(Hs[:m, :m].det()).is_positive for m in range(1, K + 1)),
        )
        Es = beta * sum(m2[i] * star[i] for i in range(K))
        c.zero(f"K = {K}: E s at d* is K/(K + 2)", Es - sp.Rational(K, K + 2))
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
