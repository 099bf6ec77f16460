"""OSGM on a fixed quadratic: right-preconditioned gradient descent with a diagonal preconditioner learned
online by the ratio feedback (spec §7, the SG-batch setting of claim C7), and the realizable test problems.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._validate import as_tensor, check_range, check_scalar, check_shape

F64 = torch.float64

__all__ = ["EPS_REL", "OSGMBatchRun", "accept_step", "adagrad_step", "osgm_diagonal_gd", "realizable_set"]


@dataclass(frozen=True)
class OSGMBatchRun:
    """Result of :func:`osgm_diagonal_gd`.

    ``rho``: ``[J]`` ratios ``F_{j+1}/F_j`` (1 on null steps); ``feedback``: ``[J]`` the feedback ``r_j(p_j)``
    (the ratio the trial step would have achieved, > 1 on null steps); ``comparator_feedback``: ``[J]``
    ``r_j(p_cmp)`` of the comparator when given; ``p``: ``[J + 1, K]`` the diagonal preconditioners;
    ``null_steps``: number of rejected steps; ``log_F``: ``[J + 1]`` natural log of ``F_j / F_0`` (the running
    sum of ``log ρ_j``); ``eps``: the absolute AdaGrad floor used (``(eps_rel · λ_max(KᵀK))²``).
    """

    rho: np.ndarray
    feedback: np.ndarray
    comparator_feedback: np.ndarray | None
    p: np.ndarray
    null_steps: int
    log_F: np.ndarray
    eps: float


#: Default relative AdaGrad floor: the denominator is ``sqrt(Σ g² + (eps_rel · L)²)`` with ``L = λ_max(KᵀK)``,
#: the natural scale of the feedback gradient ``g`` (``p`` has units ``1/L``). Coordinates whose gradient
#: history is below ``eps_rel · L`` take gradient-proportional (small) steps instead of sign-like AdaGrad
#: steps of size ``eta``; see :func:`osgm_diagonal_gd` for why this matters.
EPS_REL = 1e-5


def adagrad_step(p, g, acc, eta: float, eps: float):
    """One coordinate-wise AdaGrad step on the feedback gradient ``g``: returns ``(p_new, acc_new)`` (numpy arrays
    or tensors alike; the solver passes float64 numpy arrays)."""
    acc = acc + g * g
    return p - eta * g / (acc + eps) ** 0.5, acc


def accept_step(r: float) -> bool:
    """The null-step rule: the trial step is taken iff it does not increase ``F`` (``r_j ≤ 1``)."""
    return r <= 1.0


def osgm_diagonal_gd(
    K_mat,
    E0,
    *,
    iters: int,
    eta: float,
    p0=None,
    p_comparator=None,
    eps_rel: float = EPS_REL,
    p_box: tuple[float, float] | None = None,
    learn: bool = True,
) -> OSGMBatchRun:
    """Right-preconditioned GD with a diagonal preconditioner learned by OSGM ratio feedback (AdaGrad).

    The objective is ``F(S) = ½‖S Kᵀ − Vᵀ‖²_F`` on a realizable set (``V = K S*ᵀ``). The iteration is run on
    the error ``E = S − S*`` (``∇F(S) = E KᵀK``), rescaled to ``F = 1`` after every accepted step: the update
    and the ratio feedback are invariant to that scaling, so the run can follow ``F`` far below the float64
    round-off of ``‖S Kᵀ − Vᵀ‖²``. Per iteration ``j``::

        G = ∇F(S_j),  S⁺ = S_j − G diag(p_j),  r_j = F(S⁺)/F(S_j)
        g_j = ∇_p r_j = −colsum(∇F(S⁺) ⊙ G) / F(S_j)
        p_{j+1} = Π_box(p_j − eta · g_j / sqrt(Σ_{i≤j} g_i² + (eps_rel · L)²))   (coordinate-wise AdaGrad)
        S_{j+1} = S⁺ if r_j ≤ 1 else S_j                                        (null step)

    What is exact and what is not: each ratio ``ρ_j`` is computed in float64 from the rescaled state, and
    ``log F_j = Σ log ρ_i`` is their exact running sum. The *state* is not resolved below float64: a column of
    ``E`` whose share of ``F`` falls below about ``ε_mach²`` of the largest one is dominated by the round-off of
    ``KᵀK`` (cross-talk from the large columns), so its gradient is noise. With a vanishing AdaGrad floor such a
    column's first non-negligible gradient produces a sign-like step of size ``eta`` — a jump of ``ρ`` to ≫ 1,
    followed by null steps — and where that happens depends on BLAS rounding. The floor ``eps_rel · L``
    (``L = λ_max(KᵀK)``) makes such columns take gradient-proportional, negligible steps, so the run — and the
    verdict on it — no longer depends on rounding (checked under several BLAS modes and 1e-15 input
    perturbations in the tests).

    Args:
        K_mat: keys stacked as rows, shape ``[N, K]``.
        E0: initial error ``S_0 − S*`` in math layout, shape ``[V, K]``, nonzero.
        iters: number of iterations ``J ≥ 1``.
        eta: AdaGrad step ``> 0``.
        p0: initial diagonal ``[K]``; default ``1/λ_max(KᵀK)`` (plain GD's safe step).
        p_comparator: optional fixed diagonal ``[K]`` whose feedback ``r_j(p_cmp)`` is recorded.
        eps_rel: relative AdaGrad floor ``> 0`` (see above).
        p_box: optional ``(lo, hi)`` with ``0 < lo ≤ hi``: ``p`` is projected onto the box after every step
            (a class that may exclude the right-Newton comparator; a negative control).
        learn: ``False`` keeps ``p = p0`` (a solver that learns nothing; a negative control).
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
    eps_rel = check_scalar("eps_rel", eps_rel, 0.0, None, lo_open=True)
    if not isinstance(learn, bool):
        raise ValueError(f"learn: expected a bool, got {learn!r}")
    lo = hi = None
    if p_box is not None:
        if not isinstance(p_box, tuple | list) or len(p_box) != 2:
            raise ValueError(f"p_box: expected a pair (lo, hi), got {p_box!r}")
        lo = check_scalar("p_box[0]", p_box[0], 0.0, None, lo_open=True)
        hi = check_scalar("p_box[1]", p_box[1], lo, None)
    H = Km.T @ Km
    L = float(torch.linalg.eigvalsh(H).max())
    if not L > 0:
        raise ValueError("K_mat: expected a nonzero key matrix (λ_max(KᵀK) > 0), got KᵀK = 0")
    eps = (eps_rel * L) ** 2
    if p0 is None:
        p = torch.full((K,), 1.0 / L, dtype=F64)
    else:
        p = as_tensor("p0", p0, dtype=F64).clone()
        check_shape("p0", p, [K], "[K]")
        check_range("p0", p)
    if lo is not None:
        p = p.clamp(lo, hi)
    pc = None
    if p_comparator is not None:
        pc = as_tensor("p_comparator", p_comparator, dtype=F64)
        check_shape("p_comparator", pc, [K], "[K]")
        check_range("p_comparator", pc)

    # The loop runs on float64 numpy arrays with ``F(E) = ½ Σ E ⊙ (E KᵀK)`` (= ½‖E Kᵀ‖²; the product with
    # ``KᵀK`` is needed for the gradient anyway): the same mathematics with less overhead per small product
    # (the claims run thousands of these 16 × 16 solves).
    Hn = H.numpy()
    E, p = E.numpy().copy(), p.numpy().copy()
    pcn = None if pc is None else pc.numpy()

    def F(E_, EH_):
        return 0.5 * float((E_ * EH_).sum())

    f = F(E, E @ Hn)
    if not f > 0:
        raise ValueError("E0: expected a nonzero initial objective F(S_0) > 0, got F = 0")
    E = E / np.sqrt(f)
    f = 1.0
    acc = np.zeros(K)
    rho, fb, cfb, ps, logF = [], [], [], [p.copy()], [0.0]
    nulls = 0
    for _ in range(iters):
        G = E @ Hn  # ∇F(S) = E KᵀK, math layout [V, K]
        Ep = E - G * p
        EpH = Ep @ Hn  # ∇F(S⁺)
        fp = F(Ep, EpH)
        r = fp / f
        g = -(EpH * G).sum(0) / f  # −colsum(∇F(S⁺) ⊙ ∇F(S)) / F(S)
        if pcn is not None:
            Ec = E - G * pcn
            cfb.append(F(Ec, Ec @ Hn) / f)
        if learn:
            p, acc = adagrad_step(p, g, acc, eta, eps)
            if lo is not None:
                p = np.clip(p, lo, hi)
        fb.append(r)
        if fp == 0:  # solved exactly: the ratio is 0 and nothing is left to do
            rho.append(0.0)
            logF.append(-np.inf)
            ps.append(p.copy())
            break
        if accept_step(r):
            rho.append(r)
            logF.append(logF[-1] + float(np.log(r)))
            E = Ep / np.sqrt(fp)
        else:
            nulls += 1
            rho.append(1.0)
            logF.append(logF[-1])
        ps.append(p.copy())
    return OSGMBatchRun(
        rho=np.asarray(rho),
        feedback=np.asarray(fb),
        comparator_feedback=None if pc is None else np.asarray(cfb),
        p=np.stack(ps),
        null_steps=nulls,
        log_F=np.asarray(logF),
        eps=eps,
    )


def _hadamard_signs(g: torch.Generator, N: int, K: int) -> torch.Tensor:
    """``[N, K]`` of ``±1`` with exactly orthogonal columns (``N`` a power of two): ``K`` distinct random columns
    of the Sylvester–Hadamard matrix, ``(−1)^popcount(i & j)``, with a random sign per row."""
    i = torch.arange(N)
    cols = torch.randperm(N, generator=g)[:K]
    bits = torch.bitwise_and(i[:, None], cols[None, :])
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    signs = torch.where(torch.randn(N, generator=g, dtype=F64) < 0, -1.0, 1.0).to(F64)
    return (1.0 - 2.0 * parity.to(F64)) * signs[:, None]


def realizable_set(
    g: torch.Generator,
    N: int,
    K: int,
    V: int,
    *,
    log10_cond: float,
    rotated: bool,
    angle: float | None = None,
):
    """Keys ``K_mat = Q diag(σ) Rᵀ`` ``[N, K]`` (``Q`` orthonormal columns, ``σ`` log-spaced over
    ``10^{log10_cond/2}``, so ``cond(KᵀK) = 10^{log10_cond}``) and an initial error ``E_0 = −S*`` ``[V, K]``.

    ``R = I`` unless ``rotated``: then ``R`` is a Haar-random rotation, or, with ``angle = θ``, the near-diagonal
    rotation ``exp(θ A)`` for a random skew ``A`` of unit spectral norm (``θ → 0`` is the diagonal class'
    boundary). Returns ``(K_mat, E0, sigma, R)``; needs ``N ≥ K`` (orthonormal columns).

    When ``N`` is a power of two, ``Q diag(σ)`` is built *exactly diagonal-Gram* in floating point: ``Q`` is
    ``K`` distinct random columns of the Sylvester–Hadamard matrix of order ``N`` with a random sign per row,
    over ``√N``, and each column scale ``σ_k/√N`` is rounded to a float32 number (so ``σ`` is log-spaced to
    float32 precision and is returned as realised). Every product of two entries of ``Q diag(σ)`` is then
    exact in float64, and each off-diagonal entry of ``KᵀK`` is a sum of equal exact terms of opposite signs:
    exactly 0, with or without fused multiply–adds. With ``R = I`` the computed ``KᵀK`` is exactly diagonal,
    i.e. the problem is in the diagonal class itself and not at distance ``ε_mach`` from it: the solver
    follows ``F`` a thousand decades down, and a ``1e-16`` off-diagonal acts as the near-diagonal rotation of
    the negative control, whose super-geometric phase ends (docs/theory.md §8). Other ``N``: ``Q`` from the QR
    factorisation of a Gaussian matrix (orthonormal to round-off only)."""
    if not isinstance(g, torch.Generator):
        raise ValueError(f"g: expected a torch.Generator, got {type(g).__name__}")
    K = check_scalar("K", K, 1, None, integer=True)
    N = check_scalar("N", N, K, None, integer=True)
    V = check_scalar("V", V, 1, None, integer=True)
    log10_cond = check_scalar("log10_cond", log10_cond, 0.0, None)
    sigma = torch.logspace(0, log10_cond / 2, K, dtype=F64)
    if N & (N - 1) == 0:
        scale = (sigma / np.sqrt(N)).to(torch.float32).to(F64)  # products of two scales are exact in float64
        QS = _hadamard_signs(g, N, K) * scale  # Q diag(σ), Q = signs/√N
        sigma = scale * np.sqrt(N)
    else:
        Q, _ = torch.linalg.qr(torch.randn(N, K, generator=g, dtype=F64))
        QS = Q * sigma
    R = torch.eye(K, dtype=F64)
    if angle is not None:
        angle = check_scalar("angle", angle, 0.0, None, lo_open=True)
        if not rotated:
            raise ValueError("angle: a rotation angle needs rotated=True")
    if rotated:
        if angle is None:
            R, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=F64))
        else:
            A = torch.randn(K, K, generator=g, dtype=F64)
            A = A - A.T
            A = A / torch.linalg.matrix_norm(A, ord=2)
            R = torch.linalg.matrix_exp(angle * A)
    Km = QS @ R.T if rotated else QS
    S_star = torch.randn(V, K, generator=g, dtype=F64)
    return Km, -S_star, sigma, R
