"""C3: the chunkwise UT/WY form equals the recurrence, symbolically, for chunk sizes C = 2 and 3.

Per chunk (math layout ``S ∈ R^{V×K}``): ``A = I + B·tril₋₁(Γ ⊙ K K̃ᵀ)``, ``T = A⁻¹B``,
``W = T diag(e^g) K``, ``Ũ = T V``, ``U = Ũ − W S_0ᵀ`` (here ``S_0ᵀ`` is the fla state), next state
``S_C = e^{g_C} S_0 + Uᵀ diag(e^{g_C − g}) K̃`` and outputs ``O = diag(e^g) Q S_0ᵀ + tril₀(Γ ⊙ Q K̃ᵀ) U``
(scale 1), with ``e^{g_r} = Π_{j≤r} α_j`` and ``Γ_{r,i} = e^{g_r − g_i}``; ungated is ``α ≡ 1``.
K = 2, V = 1 and every entry symbolic (keys, write keys, values, queries, β, α, S_0).
"""

from __future__ import annotations

import sys

import sympy as sp

from proofs_check import Checker, sym_matrix


def _recurrence(S0, Kr, Kw, Vm, Q, beta, alpha):
    S, outs = S0, []
    for r in range(Kr.rows):
        S = alpha[r] * S
        k, kt, v = Kr[r, :].T, Kw[r, :].T, Vm[r, :].T
        S = S - beta[r] * (S * k - v) * kt.T
        outs.append((S * Q[r, :].T).T)
    return S, sp.Matrix.vstack(*outs)


def _chunk(S0, Kr, Kw, Vm, Q, beta, alpha):
    C = Kr.rows
    eg = [sp.Mul(*alpha[: r + 1]) for r in range(C)]  # e^{g_r}
    Gam = sp.Matrix(C, C, lambda r, i: eg[r] / eg[i] if i <= r else 0)
    B = sp.diag(*beta)
    G = (Kr * Kw.T).multiply_elementwise(Gam)
    A = sp.eye(C) + B * sp.Matrix(C, C, lambda r, i: G[r, i] if i < r else 0)
    T = A.inv() * B
    W = T * sp.diag(*eg) * Kr
    U = T * Vm - W * S0.T
    SC = eg[-1] * S0 + U.T * sp.diag(*[eg[-1] / x for x in eg]) * Kw
    P = (Q * Kw.T).multiply_elementwise(Gam)
    O = sp.diag(*eg) * Q * S0.T + sp.Matrix(C, C, lambda r, i: P[r, i] if i <= r else 0) * U
    return SC, O


def main() -> int:
    c = Checker("C3 chunk form = recurrence (symbolic, C = 2, 3)")
    K, V = 2, 1
    for C in (2, 3):
        Kr, Kw, Q = sym_matrix("k", C, K), sym_matrix("kt", C, K), sym_matrix("q", C, K)
        Vm, S0 = sym_matrix("v", C, V), sym_matrix("S0", V, K)
        beta = list(sp.symbols(f"beta0:{C}", positive=True))
        alpha = list(sp.symbols(f"alpha0:{C}", positive=True))
        for name, al in (("ungated", [1] * C), ("gated", alpha)):
            S_rec, O_rec = _recurrence(S0, Kr, Kw, Vm, Q, beta, al)
            S_chk, O_chk = _chunk(S0, Kr, Kw, Vm, Q, beta, al)
            c.zero(f"C = {C}, {name}: chunk state S_C equals the recurrence", S_chk - S_rec)
            c.zero(f"C = {C}, {name}: chunk outputs O equal the recurrence", O_chk - O_rec)
    return c.done()


if __name__ == "__main__":
    sys.exit(main())
