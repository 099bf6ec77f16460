"""C8: RLS write gain by Sherman–Morrison: s = kᵀ H_t⁻¹ k = a/(1 + a), a = kᵀ(γ H_{t−1})⁻¹ k (K = 2).

Also: the RLS step with write key H_t⁻¹k maps the ridge minimiser at t − 1 to the one at t (one token), and
Longhorn's key β/(1 + βkᵀk) is the case H_{t−1} = I/β, γ = 1.
"""

from __future__ import annotations

import sys

import sympy as sp

from proofs_check import Checker, sym_vector


def main() -> int:
    c = Checker("C8 RLS leverage (Sherman–Morrison) and ridge recursion")
    K, V = 2, 2
    h00, h01, h11 = sp.symbols("h00 h01 h11", real=True)
    gamma = sp.Symbol("gamma", positive=True)
    Hp = sp.Matrix([[h00, h01], [h01, h11]])
    k = sym_vector("k", K)
    H = gamma * Hp + k * k.T
    s = sp.cancel((k.T * H.inv() * k)[0, 0])
    a = sp.cancel((k.T * (gamma * Hp).inv() * k)[0, 0])
    c.zero("kᵀ H_t⁻¹ k = a/(1 + a), a = kᵀ(γH_{t−1})⁻¹k", sp.cancel(s - a / (1 + a)))
    c.true(
        "the spec's leverage kᵀH_{t−1}⁻¹k differs from a when γ ≠ 1 (erratum)",
        sp.cancel(a - (k.T * Hp.inv() * k)[0, 0]) != 0
        and sp.cancel((a - (k.T * Hp.inv() * k)[0, 0]).subs(gamma, 1)) == 0,
    )
    # Ridge recursion: with R_{t−1} = Σ γ^{t−1−i} v_i k_iᵀ, S_{t−1} = R_{t−1} H_{t−1}⁻¹; then
    # S_t = (γ R_{t−1} + v kᵀ) H_t⁻¹ equals S_{t−1} − (S_{t−1} k − v)(H_t⁻¹ k)ᵀ.
    R = sp.Matrix(V, K, lambda i, j: sp.Symbol(f"R_{i}{j}", real=True))
    v = sym_vector("v", V)
    S_prev = R * Hp.inv()
    S_ridge = (gamma * R + v * k.T) * H.inv()
    S_rls = S_prev - (S_prev * k - v) * (H.inv() * k).T
    c.zero(
        "RLS step with write key H_t⁻¹k maps the ridge minimiser at t−1 to the one at t",
        (S_ridge - S_rls).applyfunc(sp.cancel),
    )
    beta = sp.Symbol("beta", positive=True)
    HL = sp.eye(K) / beta + k * k.T
    c.zero(
        "Longhorn: H_{t−1} = I/β, γ = 1 gives write key β k/(1 + β kᵀk)",
        (HL.inv() * k - beta * k / (1 + beta * (k.T * k)[0, 0])).applyfunc(sp.cancel),
    )
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
