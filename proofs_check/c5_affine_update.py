"""C5: the ratio and hyper feedbacks are state-free, their d-updates affine; the raw hypergradient is not.

Ratio: ``r(d) = ‖r⁺(d)‖²/‖e‖² = (1 − β uᵀd)²`` with ``u = k ⊙ k``; the memory ``S`` cancels;
``∇r = −2β(1 − β uᵀd) u`` and one gradient step is ``d⁺ = (I − 2ηβ² u uᵀ) d + 2ηβ u`` (a delta rule on d with
key u, target 1/β, step 2ηβ²). Hyper: ``h(d) = (ℓ(S_t(d)) − ℓ(S_{t−1}))/‖∇ℓ‖²_F = ((1 − s)² − 1)/(2‖k‖²)``.
Raw (Baydin): ``∂ℓ(S_t(d))/∂d = −β‖e‖²(1 − s) u`` depends on S.
"""

from __future__ import annotations

import sys

import sympy as sp

from proofs_check import Checker, sym_matrix, sym_vector


def main() -> int:
    c = Checker("C5 state-free affine preconditioner update")
    V, K = 2, 3
    S = sym_matrix("S", V, K)
    k, v = sym_vector("k", K), sym_vector("v", V)
    d = sym_vector("d", K, positive=True)
    beta, eta = sp.symbols("beta eta", positive=True)
    u = sp.Matrix(K, 1, lambda i, _: k[i] ** 2)
    kt = sp.Matrix(K, 1, lambda i, _: d[i] * k[i])
    s = beta * (u.T * d)[0, 0]
    e = S * k - v
    St = S - beta * e * kt.T
    rplus = St * k - v
    n2 = lambda x: (x.T * x)[0, 0]
    ratio = sp.cancel(n2(rplus) / n2(e))
    c.zero("r(d) = ‖r⁺‖²/‖e‖² = (1 − β uᵀd)²", ratio - (1 - s) ** 2)
    c.true("the memory S and the value v cancel from r(d)", not (ratio.free_symbols & (set(S) | set(v))))
    grad = sp.Matrix(K, 1, lambda i, _: sp.diff((1 - s) ** 2, d[i]))
    c.zero("∇_d r = −2β(1 − β uᵀd) u", grad + 2 * beta * (1 - s) * u)
    step = d - eta * grad
    affine = (sp.eye(K) - 2 * eta * beta**2 * u * u.T) * d + 2 * eta * beta * u
    c.zero("d − η∇r = (I − 2ηβ² u uᵀ) d + 2ηβ u (affine, coefficients from (k, β) only)", step - affine)
    c.zero(
        "delta-rule form: d⁺ = d − 2ηβ² (uᵀd − 1/β) u",
        step - (d - 2 * eta * beta**2 * ((u.T * d)[0, 0] - 1 / beta) * u),
    )
    loss = lambda M: sp.Rational(1, 2) * n2(M * k - v)
    gnorm2 = n2(e) * n2(k)  # ‖e kᵀ‖²_F
    hyper = sp.cancel((loss(St) - loss(S)) / gnorm2)
    c.zero(
        "h(d) = (ℓ(S_t) − ℓ(S_{t−1}))/‖∇ℓ‖²_F = ((1 − s)² − 1)/(2‖k‖²)",
        hyper - ((1 - s) ** 2 - 1) / (2 * n2(k)),
    )
    c.true("the memory S cancels from h(d)", not (hyper.free_symbols & (set(S) | set(v))))
    ghyper = sp.Matrix(K, 1, lambda i, _: sp.diff(((1 - s) ** 2 - 1) / (2 * n2(k)), d[i]))
    c.zero(
        "hyper step: d − η∇h = d + ηβ(1 − s)u/‖k‖² (the update d_scan implements)",
        (d - eta * ghyper - (d + eta * beta * (1 - s) * u / n2(k))).applyfunc(sp.cancel),
    )
    c.true(
        "∇_d h is affine in d (its Jacobian in d is constant)",
        all(sp.diff(ghyper[i], d[j], d[m]) == 0 for i in range(K) for j in range(K) for m in range(K)),
    )
    raw = sp.Matrix(K, 1, lambda i, _: sp.diff(loss(St), d[i]))
    c.zero("raw hypergradient ∂ℓ(S_t(d))/∂d = −β‖e‖²(1 − s) u", raw + beta * n2(e) * (1 - s) * u)
    c.true(
        "the raw hypergradient depends on the memory S (negative control)",
        bool(sp.expand(raw[0]).free_symbols & set(S)),
    )
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
