"""OSGM on a fixed quadratic: right-preconditioned gradient descent with a diagonal preconditioner learned
online by the ratio feedback (spec §7, the SG-batch setting of claim C7), and the realizable test problems.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._validate import as_tensor, check_range, check_scalar, check_shape

F64 = torch.float64

__all__ = ["OSGMBatchRun", "osgm_diagonal_gd", "realizable_set"]


@dataclass(frozen=True)
class OSGMBatchRun:
    """Result of :func:`osgm_diagonal_gd`.

    ``rho``: ``[J]`` ratios ``F_{j+1}/F_j`` (1 on null steps); ``feedback``: ``[J]`` the feedback ``r_j(p_j)``
    (the ratio the trial step would have achieved, > 1 on null steps); ``comparator_feedback``: ``[J]``
    ``r_j(p_cmp)`` of the comparator when given; ``p``: ``[J + 1, K]`` the diagonal preconditioners;
    ``null_steps``: number of rejected steps; ``log_F``: ``[J + 1]`` natural log of ``F_j / F_0``.
    """

    rho: np.ndarray
    feedback: np.ndarray
    comparator_feedback: np.ndarray | None
    p: np.ndarray
    null_steps: int
    log_F: np.ndarray


def osgm_diagonal_gd(
    K_mat,
    E0,
    *,
    iters: int,
    eta: float,
    p0=None,
    p_comparator=None,
    eps: float = 1e-300,
) -> OSGMBatchRun:
    """Right-preconditioned GD with a diagonal preconditioner learned by OSGM ratio feedback (AdaGrad).

    The objective is ``F(S) = ½‖S Kᵀ − Vᵀ‖²_F`` on a realizable set (``V = K S*ᵀ``). The iteration is run on
    the error ``E = S − S*`` (``∇F(S) = E KᵀK``), rescaled to ``F = 1`` after every accepted step: both the
    update and the ratio feedback are invariant to that scaling, so ``F`` is resolved far below the float64
    round-off of ``‖S Kᵀ − Vᵀ‖²`` and ``log F_j`` is tracked exactly. Per iteration ``j``::

        G = ∇F(S_j),  S⁺ = S_j − G diag(p_j),  r_j = F(S⁺)/F(S_j)
        g_j = ∇_p r_j = −colsum(∇F(S⁺) ⊙ G) / F(S_j)
        p_{j+1} = p_j − eta · g_j / sqrt(Σ_{i≤j} g_i²)          (coordinate-wise AdaGrad)
        S_{j+1} = S⁺ if r_j ≤ 1 else S_j                         (null step)

    Args:
        K_mat: keys stacked as rows, shape ``[N, K]``.
        E0: initial error ``S_0 − S*`` in math layout, shape ``[V, K]``, nonzero.
        iters: number of iterations ``J ≥ 1``.
        eta: AdaGrad step ``> 0``.
        p0: initial diagonal ``[K]``; default ``1/λ_max(KᵀK)`` (plain GD's safe step).
        p_comparator: optional fixed diagonal ``[K]`` whose feedback ``r_j(p_cmp)`` is recorded.
        eps: floor inside the AdaGrad square root.
    """
    Km = as_tensor("K_mat", K_mat, dtype=F64)
    check_shape("K_mat", Km, [None, None], "[N, K]")
    check_range("K_mat", Km)
    K = Km.shape[1]
    E = as_tensor("E0", E0, dtype=F64)
    check_shape("E0", E, [None, K], "[V, K]")
    check_range("E0", E)
    iters = check_scalar("iters", iters, 1, None, integer=True)
    eta = check_scalar("eta", eta, 0.0, None, lo_open=True)
    eps = check_scalar("eps", eps, 0.0, None, lo_open=True)
    H = Km.T @ Km
    if p0 is None:
        p = torch.full((K,), 1.0 / float(torch.linalg.eigvalsh(H).max()), dtype=F64)
    else:
        p = as_tensor("p0", p0, dtype=F64).clone()
        check_shape("p0", p, [K], "[K]")
        check_range("p0", p)
    pc = None
    if p_comparator is not None:
        pc = as_tensor("p_comparator", p_comparator, dtype=F64)
        check_shape("p_comparator", pc, [K], "[K]")
        check_range("p_comparator", pc)

    def F(E_):
        return 0.5 * float(((E_ @ Km.T) ** 2).sum())

    f = F(E)
    if not f > 0:
        raise ValueError("E0: expected a nonzero initial objective F(S_0) > 0, got F = 0")
    E = E / np.sqrt(f)
    f = 1.0
    acc = torch.zeros(K, dtype=F64)
    rho, fb, cfb, ps, logF = [], [], [], [p.numpy().copy()], [0.0]
    nulls = 0
    for _ in range(iters):
        G = E @ H  # ∇F(S) = E KᵀK, math layout [V, K]
        Ep = E - G * p
        fp = F(Ep)
        r = fp / f
        g = -((Ep @ H) * G).sum(0) / f  # −colsum(∇F(S⁺) ⊙ ∇F(S)) / F(S)
        if pc is not None:
            cfb.append(F(E - G * pc) / f)
        acc = acc + g * g
        p = p - eta * g / torch.sqrt(acc + eps)
        fb.append(r)
        if r <= 1.0 and fp > 0:
            rho.append(r)
            logF.append(logF[-1] + float(np.log(r)))
            E = Ep / np.sqrt(fp)
        elif fp == 0:  # solved exactly: the ratio is 0 and nothing is left to do
            rho.append(0.0)
            logF.append(-np.inf)
            ps.append(p.numpy().copy())
            break
        else:
            nulls += 1
            rho.append(1.0)
            logF.append(logF[-1])
        ps.append(p.numpy().copy())
    return OSGMBatchRun(
        rho=np.asarray(rho),
        feedback=np.asarray(fb),
        comparator_feedback=None if pc is None else np.asarray(cfb),
        p=np.stack(ps),
        null_steps=nulls,
        log_F=np.asarray(logF),
    )


def realizable_set(g: torch.Generator, N: int, K: int, V: int, *, log10_cond: float, rotated: bool):
    """Keys ``K_mat = Q diag(σ) Rᵀ`` ``[N, K]`` (``Q`` orthonormal columns, ``σ`` log-spaced over
    ``10^{log10_cond/2}``, so ``cond(KᵀK) = 10^{log10_cond}``; ``R = I`` unless ``rotated``) and an initial
    error ``E_0 = −S*`` ``[V, K]``. Returns ``(K_mat, E0, sigma, R)``; needs ``N ≥ K`` (orthonormal columns)."""
    if not isinstance(g, torch.Generator):
        raise ValueError(f"g: expected a torch.Generator, got {type(g).__name__}")
    K = check_scalar("K", K, 1, None, integer=True)
    N = check_scalar("N", N, K, None, integer=True)
    V = check_scalar("V", V, 1, None, integer=True)
    log10_cond = check_scalar("log10_cond", log10_cond, 0.0, None)
    Q, _ = torch.linalg.qr(torch.randn(N, K, generator=g, dtype=F64))
    sigma = torch.logspace(0, log10_cond / 2, K, dtype=F64)
    R = torch.eye(K, dtype=F64)
    if rotated:
        R, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=F64))
    Km = (Q * sigma) @ R.T
    S_star = torch.randn(V, K, generator=g, dtype=F64)
    return Km, -S_star, sigma, R
