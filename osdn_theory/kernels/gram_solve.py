"""Stage 1 of the chunk pipeline: write key ``k̃ = c·d⊙k`` (clip factor ``c``), in-chunk log-decay ``g`` and
``A⁻¹ = (I + diag(β)·tril₋₁(Γ ⊙ K K̃ᵀ))⁻¹`` per chunk — the Triton kernel, its launcher :func:`gram_solve` and
its torch twin :func:`gram_solve_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    BAD_ALPHA,
    BAD_D,
    _block,
    _flag,
    _mm,
    _mmf,
    _or,
    _or_all,
    _rows,
    _store_rows,
    chunk_rows,
    decay_ref,
    fma_dots,
    wide_dtype,
)
from .config import DEFAULT_LAUNCH, Launch

__all__ = ["gram_solve", "gram_solve_ref"]


@triton.jit
def _unit_lower_inverse16(L, ACC: tl.constexpr, PREC: tl.constexpr = "ieee", NEWTON: tl.constexpr = True):
    """``(I + L)⁻¹`` for a strictly lower 16×16 block ``L``, by products only (no serial substitution).

    ``L`` is nilpotent (``L¹⁶ = 0``), so ``(I + L)⁻¹ = Σ_{m<16} (−L)^m = (I − L)(I + L²)(I + L⁴)(I + L⁸)``
    exactly: three squarings and three products. Rounding in the powers grows with the entries of ``|L|^m``
    (large when the keys of a block are nearly aligned), so one Newton step ``X ← X + X (I − (I + L) X)``
    follows, which squares the relative residual and brings the result to forward-substitution accuracy.
    """
    o16 = tl.arange(0, 16)
    eye = tl.where(o16[:, None] == o16[None, :], 1.0, 0.0).to(ACC)
    L2 = _mmf(L, L, ACC, PREC)
    L4 = _mmf(L2, L2, ACC, PREC)
    L8 = _mmf(L4, L4, ACC, PREC)
    X = _mmf(_mmf(eye - L, eye + L2, ACC, PREC), eye + L4, ACC, PREC)
    X = _mmf(X, eye + L8, ACC, PREC)
    if NEWTON:
        R = eye - X - _mmf(L, X, ACC, PREC)  # I − (I + L) X
        X = X + _mmf(X, R, ACC, PREC)
    return X


@triton.jit
def _keys16(
    k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, sb, g_carry, i_h, flag, code,
    H, K, s_max,
    BK: tl.constexpr, HAS_D: tl.constexpr, CLIP: tl.constexpr, GATED: tl.constexpr, ACC: tl.constexpr,
    CHECK: tl.constexpr, DCHECK: tl.constexpr,
):  # fmt: skip
    """Rows ``16·sb … 16·sb + 15`` of a chunk: read key, write key ``c·d⊙k`` (stored), β and the in-chunk
    cumulative log-decay ``g`` (stored; continues from ``g_carry``, the value at the previous row). With
    ``CHECK``, the value-check bit of ``log α`` of these rows goes straight to ``*flag``. The check bits of
    ``d`` are ORed into ``code`` (returned; the kernel issues it once, at the end): with ``DCHECK = 1``
    (``Launch.d_check = "tile"``) ``code`` is a scalar and each row block's tile is reduced whole; with
    ``DCHECK = 2`` (``"rows"``) ``code`` is a 16-vector, each block is reduced over K only and the rows are
    reduced once at the end; with ``DCHECK = 3`` (``"atomic"``) each bad entry ORs its bit into ``*flag`` with an
    atomic of its own, predicated off for good entries (no reduction, no ``code``); ``DCHECK = 0``: ``d`` is
    not checked here.

    Where the checks sit. ``d`` is checked here, on the tile already loaded for the write key. Checking it in
    stage 2 took a second read of ``d``, which was all of stage 2's check cost (H100, 2026-12-05, K = 128:
    0.211 ms checked with that read, 0.130 without it, 0.129 unchecked). ``k`` and ``β`` are checked by stage
    2, where they cost nothing measurable. Stage 1 is at 255 registers per thread at K = 128: checking ``k``,
    ``β`` and ``d`` here once spilled 1.9 KB per thread (an int32 tile live across the four row blocks), and
    the default call was 1.8–2.0× the unchecked one (H200 run 4). The ``d`` check alone, as a scalar, spills
    68 bytes per thread at K = 128 in bf16 with Triton 3.6 (none without checks) and none at K = 64; with
    Triton 3.8, 12 bytes against 24 unchecked (read offline from ptxas, sm_90a). Timed (H100, 2026-12-05):
    this stage 0.225 ms checked against 0.186 unchecked at (4, 4096, 16, 128), 0.178 against 0.159 at
    (8, 2048, 16, 64); the default call 1.09–1.12× the unchecked one (docs/kernels.md)."""
    o16 = sb * 16 + tl.arange(0, 16)
    ok = tl.arange(0, BK)
    rmask = o16 < nv
    t = (t0 + o16) * H + i_h
    b = tl.load(beta + t, mask=rmask, other=0.0).to(ACC)
    kk = _rows(k, t, rmask, K, ok, K, ACC)
    kt = kk
    if HAS_D:
        dd = _rows(d, t, rmask, K, ok, K, ACC)
        kt = kk * dd
        if DCHECK > 0:  # d > 0 and finite, on the tile already loaded for the write key
            bad = tl.where(rmask[:, None] & (ok[None, :] < K) & ~((dd > 0) & (dd < float("inf"))), BAD_D, 0)
            if DCHECK == 1:
                code |= _or_all(bad)
            elif DCHECK == 2:
                code |= tl.reduce(bad, 1, _or)
            else:  # one atomic per bad entry, predicated off for good ones: no reduction, nothing kept live
                tl.atomic_or(flag + tl.zeros([16, BK], dtype=tl.int32), bad, mask=bad != 0)
    if CLIP:
        s_raw = b * tl.sum(kk * kt, 1)
        c = tl.where(s_raw > s_max, s_max / tl.where(s_raw > s_max, s_raw, 1.0), 1.0)
        kt = kt * c[:, None]
        tl.store(c_out + t, c.to(c_out.dtype.element_ty), mask=rmask)
    if HAS_D or CLIP:  # otherwise the write key is the key itself: nothing to store
        _store_rows(kt_out, kt, t, rmask, K, ok, K)
    kt = kt.to(kt_out.dtype.element_ty)  # later stages see the stored (rounded) write key
    g = tl.zeros([16], dtype=ACC)
    if GATED:
        la = tl.load(log_alpha + t, mask=rmask, other=0.0).to(ACC)
        if CHECK:  # α ∈ (0, 1] ⇔ log α ∈ (−inf, 0]
            _flag(
                flag, tl.reduce(tl.where(rmask & ~((la <= 0) & (la > -float("inf"))), BAD_ALPHA, 0), 0, _or)
            )
        g = g_carry + tl.cumsum(la, 0)
        tl.store(g_out + t, g.to(g_out.dtype.element_ty), mask=rmask)
        g_carry = tl.sum(tl.where(tl.arange(0, 16) == 15, g, 0.0), 0)
    return kk.to(kt_out.dtype.element_ty), kt, b, g, g_carry, code  # both in the input dtype (exact for kk)


@triton.jit
def _lblock(kk_i, kt_j, b_i, g_i, g_j, DIAG: tl.constexpr, GATED: tl.constexpr, DT: tl.constexpr,
            ACC: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    """Block ``(i, j)`` of ``L = diag(β) · tril₋₁(Γ ⊙ K K̃ᵀ)`` (16×16)."""
    G = _mm(kk_i, tl.trans(kt_j), DT, ACC, IEEE)
    o16 = tl.arange(0, 16)
    if GATED:
        G = G * tl.exp(tl.minimum(g_i[:, None] - g_j[None, :], 0.0))
    if DIAG:
        G = tl.where(o16[:, None] > o16[None, :], G, 0.0)
    return b_i[:, None] * G


@triton.jit
def _gram_solve_kernel(
    k, d, beta, log_alpha, kt_out, c_out, g_out, ai_out, bounds, flag,
    H, K, s_max,
    C: tl.constexpr, BK: tl.constexpr, HAS_D: tl.constexpr, CLIP: tl.constexpr, GATED: tl.constexpr,
    SOLVE: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr, PREC: tl.constexpr, NEWTON: tl.constexpr,
    CHECK: tl.constexpr, DCHECK: tl.constexpr,
):  # fmt: skip
    """Stage 1 in 16-row blocks: ``A⁻¹`` by inverting the 16×16 diagonal blocks (product form plus one Newton
    step, :func:`_unit_lower_inverse16`; the four are independent) and assembling the rest with
    ``X_ij = −X_ii Σ_{j ≤ m < i} L_im X_mj`` (block forward substitution, all ``tl.dot``)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    DT: tl.constexpr = k.dtype.element_ty
    NB: tl.constexpr = C // 16
    o16 = tl.arange(0, 16)
    Z = tl.zeros([16, 16], dtype=ACC)
    gz = tl.sum(tl.zeros([16], dtype=ACC), 0)
    # the check bits of d, out once at the end: a scalar ("tile") or one per row of a block ("rows")
    code = tl.zeros([16], dtype=tl.int32)
    if DCHECK != 2:
        code = tl.sum(code, 0)
    # Each Gram block is formed as soon as its two key blocks are loaded, so that only the earlier write keys
    # stay live (not all four key blocks of both kinds).
    kk0, kt0, b0, g0, gc, code = _keys16(k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, 0, gz, i_h, flag,
                                         code, H, K, s_max, BK, HAS_D, CLIP, GATED, ACC, CHECK, DCHECK)  # fmt: skip
    if SOLVE:
        L00 = _lblock(kk0, kt0, b0, g0, g0, True, GATED, DT, ACC, IEEE)
    if NB >= 2:
        kk1, kt1, b1, g1, gc, code = _keys16(k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, 1, gc, i_h,
                                             flag, code, H, K, s_max, BK, HAS_D, CLIP, GATED, ACC, CHECK, DCHECK)  # fmt: skip
        if SOLVE:
            L11 = _lblock(kk1, kt1, b1, g1, g1, True, GATED, DT, ACC, IEEE)
            L10 = _lblock(kk1, kt0, b1, g1, g0, False, GATED, DT, ACC, IEEE)
    if NB >= 4:
        kk2, kt2, b2, g2, gc, code = _keys16(k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, 2, gc, i_h,
                                             flag, code, H, K, s_max, BK, HAS_D, CLIP, GATED, ACC, CHECK, DCHECK)  # fmt: skip
        if SOLVE:
            L22 = _lblock(kk2, kt2, b2, g2, g2, True, GATED, DT, ACC, IEEE)
            L20 = _lblock(kk2, kt0, b2, g2, g0, False, GATED, DT, ACC, IEEE)
            L21 = _lblock(kk2, kt1, b2, g2, g1, False, GATED, DT, ACC, IEEE)
        kk3, kt3, b3, g3, gc, code = _keys16(k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, 3, gc, i_h,
                                             flag, code, H, K, s_max, BK, HAS_D, CLIP, GATED, ACC, CHECK, DCHECK)  # fmt: skip
        if SOLVE:
            L33 = _lblock(kk3, kt3, b3, g3, g3, True, GATED, DT, ACC, IEEE)
            L30 = _lblock(kk3, kt0, b3, g3, g0, False, GATED, DT, ACC, IEEE)
            L31 = _lblock(kk3, kt1, b3, g3, g1, False, GATED, DT, ACC, IEEE)
            L32 = _lblock(kk3, kt2, b3, g3, g2, False, GATED, DT, ACC, IEEE)
    if SOLVE:
        X00 = _unit_lower_inverse16(L00, ACC, PREC, NEWTON)
        t = (t0 + o16) * H + i_h
        _store_rows(ai_out, X00, t, o16 < nv, C, o16, C)
        if NB >= 2:
            X11 = _unit_lower_inverse16(L11, ACC, PREC, NEWTON)
            X10 = -_mmf(X11, _mmf(L10, X00, ACC, PREC), ACC, PREC)
            t = (t0 + 16 + o16) * H + i_h
            m = (16 + o16) < nv
            _store_rows(ai_out, X10, t, m, C, o16, C)
            _store_rows(ai_out, X11, t, m, C, 16 + o16, C)
            _store_rows(ai_out, Z, (t0 + o16) * H + i_h, o16 < nv, C, 16 + o16, C)
        if NB >= 4:
            X22 = _unit_lower_inverse16(L22, ACC, PREC, NEWTON)
            X33 = _unit_lower_inverse16(L33, ACC, PREC, NEWTON)
            X21 = -_mmf(X22, _mmf(L21, X11, ACC, PREC), ACC, PREC)
            X20 = -_mmf(X22, _mmf(L20, X00, ACC, PREC) + _mmf(L21, X10, ACC, PREC), ACC, PREC)
            X32 = -_mmf(X33, _mmf(L32, X22, ACC, PREC), ACC, PREC)
            X31 = -_mmf(X33, _mmf(L31, X11, ACC, PREC) + _mmf(L32, X21, ACC, PREC), ACC, PREC)
            S30 = _mmf(L30, X00, ACC, PREC) + _mmf(L31, X10, ACC, PREC) + _mmf(L32, X20, ACC, PREC)
            X30 = -_mmf(X33, S30, ACC, PREC)
            t = (t0 + o16) * H + i_h
            m = o16 < nv
            _store_rows(ai_out, Z, t, m, C, 32 + o16, C)
            _store_rows(ai_out, Z, t, m, C, 48 + o16, C)
            t = (t0 + 16 + o16) * H + i_h
            m = (16 + o16) < nv
            _store_rows(ai_out, Z, t, m, C, 32 + o16, C)
            _store_rows(ai_out, Z, t, m, C, 48 + o16, C)
            t = (t0 + 32 + o16) * H + i_h
            m = (32 + o16) < nv
            _store_rows(ai_out, X20, t, m, C, o16, C)
            _store_rows(ai_out, X21, t, m, C, 16 + o16, C)
            _store_rows(ai_out, X22, t, m, C, 32 + o16, C)
            _store_rows(ai_out, Z, t, m, C, 48 + o16, C)
            t = (t0 + 48 + o16) * H + i_h
            m = (48 + o16) < nv
            _store_rows(ai_out, X30, t, m, C, o16, C)
            _store_rows(ai_out, X31, t, m, C, 16 + o16, C)
            _store_rows(ai_out, X32, t, m, C, 32 + o16, C)
            _store_rows(ai_out, X33, t, m, C, 48 + o16, C)
    if DCHECK == 1:
        _flag(flag, code)
    if DCHECK == 2:
        _flag(flag, tl.reduce(code, 0, _or))


_D_CHECK_IN_STAGE = ("tile", "rows", "atomic")  # Launch.d_check values checked here, as DCHECK = 1, 2, 3


def gram_solve(
    k, d, beta, log_alpha, bounds, s_max, C, solve=True, flag=None, launch: Launch = DEFAULT_LAUNCH
):
    """Stage 1. ``k, d: [N, H, K]``, ``beta, log_alpha: [N, H]``, ``bounds: [NC, 2]`` int32 (chunk start
    token, end of its sequence). Returns ``(kt [N,H,K], c [N,H] fp32 or None, g [N,H] fp32 or None,
    Ai [N,H,C] fp32/fp64 or None when ``solve`` is False)``. With ``flag`` (an int32 ``[1]`` tensor) the
    values of ``log α ∈ (−inf, 0]`` and of ``d`` (finite and positive) are checked as they are loaded
    (:data:`BAD_ALPHA`, :data:`BAD_D`; ``k``, ``β`` and ``v`` are checked by :func:`wy_factors`); ``d`` only
    where ``launch.d_check_for(K)`` is ``"tile"``, ``"rows"`` or ``"atomic"`` (``"pass"``: the caller checks it with
    :func:`.d_check.check_d`)."""
    N, H, K = k.shape
    NC = bounds.shape[0]
    f = wide_dtype(k.dtype)
    # without d and clip the write key is k itself (DeltaNet, and the d rule's scan): no copy is written
    kt = torch.empty_like(k) if (d is not None or s_max is not None) else k
    c = torch.empty(N, H, device=k.device, dtype=f) if s_max is not None else None
    g = torch.empty(N, H, device=k.device, dtype=f) if log_alpha is not None else None
    ai = torch.empty(N, H, C, device=k.device, dtype=f) if solve else kt
    # Measured on an H200 (bf16, K = 128; benchmarks/tune_kernels.py, run 6): 2 warps 0.190 ms, 4 warps 0.240, 8 warps
    # 0.399; tf32 or tf32x3 dots spill and are no faster. The Newton step (2 of the 8 dots of each diagonal
    # block) is kept for fp32/fp64 inputs, where it brings the inverse to substitution accuracy; for 16-bit
    # inputs its effect on the output is far below their rounding (end-to-end error vs float64 0.00734 with
    # and 0.00736 without it on nearly aligned keys), so it is skipped there.
    wide = fma_dots(k.dtype)
    # float32 (FMA dots): 2 warps left a 1.1 KB stack frame at K = 64 and 9.5 KB at K = 128 (sm_90, triton 3.6)
    warps = (4 if K <= 64 else 8) if wide else 2
    cfg = launch.cfg("gram_solve", k.dtype, num_warps=warps, PREC="ieee", NEWTON=wide)
    if wide:
        cfg["PREC"] = "ieee"  # tf32 variants only for 16-bit inputs (fp32 promises IEEE dots)
    where = launch.d_check_for(K)
    checked_here = flag is not None and d is not None and where in _D_CHECK_IN_STAGE
    dcheck = 1 + _D_CHECK_IN_STAGE.index(where) if checked_here else 0
    _c = _gram_solve_kernel[(NC, H)](
        k, d if d is not None else k, beta, log_alpha if log_alpha is not None else beta, kt,
        c if c is not None else ai, g if g is not None else ai, ai, bounds, flag if flag is not None else bounds,
        H, K, float(s_max) if s_max is not None else 1.0,
        C=C, BK=_block(K), HAS_D=d is not None, CLIP=s_max is not None,
        GATED=log_alpha is not None, SOLVE=solve, CHECK=flag is not None,
        DCHECK=dcheck, **cfg,
    )  # fmt: skip
    launch.note("gram_solve" if solve else "gram_keys_only", _c, cfg)
    return kt, c, g, (ai if solve else None)


def gram_solve_ref(k, d, beta, log_alpha, bounds, s_max, C):
    """Stage 1 twin: ``(kt, c, g, Ai)`` with ``Ai`` rows stored per token ``[N, H, C]`` (padded columns zero)."""
    N, H, K = k.shape
    kt = k if d is None else d * k
    c = g = None
    if s_max is not None:
        s_raw = beta * (k * kt).sum(-1)
        c = torch.where(s_raw > s_max, s_max / torch.where(s_raw > s_max, s_raw, 1.0), 1.0)
        kt = kt * c[..., None]
    ai = torch.zeros(N, H, C, dtype=k.dtype, device=k.device)
    if log_alpha is not None:
        g = torch.zeros(N, H, dtype=k.dtype, device=k.device)
    for _, t0, t1 in chunk_rows(bounds, C):
        n = t1 - t0
        kc, ktc, bc = k[t0:t1].transpose(0, 1), kt[t0:t1].transpose(0, 1), beta[t0:t1].transpose(0, 1)
        G = kc @ ktc.transpose(-1, -2)  # [H, n, n]
        if log_alpha is not None:
            gc = log_alpha[t0:t1].transpose(0, 1).cumsum(-1)
            g[t0:t1] = gc.transpose(0, 1)
            G = G * decay_ref(gc, True)
        A = torch.eye(n, dtype=k.dtype, device=k.device) + bc[..., :, None] * G.tril(-1)
        ai[t0:t1, :, :n] = torch.linalg.inv(A).transpose(0, 1)
    return kt, c, g, ai
