"""Triton stages of the chunkwise OSDN pipeline (spec §3) and their launchers.

Every tensor is in the packed layout: time is flattened to ``N = B·T`` (or the packed length of a
variable-length batch) and sequences are described by ``cu_seqlens``; chunks never straddle two sequences.
Shapes below use ``N`` tokens, ``H`` heads, ``NC`` chunks in total, ``C`` tokens per chunk.

Forward stages (each has a plain-torch twin in :mod:`osdn_theory.kernels.reference`):

1. :func:`gram_solve` — write key ``k̃ = c·d⊙k`` (clip factor ``c``), in-chunk log-decay ``g`` and
   ``A⁻¹ = (I + diag(β)·tril₋₁(Γ ⊙ K K̃ᵀ))⁻¹`` per chunk.
2. :func:`wy_factors` — ``W = A⁻¹ diag(β) diag(e^g) K`` and ``Ũ = A⁻¹ diag(β) V``.
3. :func:`state_pass` — inter-chunk recurrence: start state ``h_n`` of each chunk and ``U = Ũ − W h_n``.
4. :func:`output` — ``O = scale·(diag(e^g) Q h_n + tril₀(Γ ⊙ Q K̃ᵀ) U)``.

Backward stages (each has a twin too): :func:`dv_local`, :func:`dh_pass` (reverse state recurrence),
:func:`bwd_dqk` (gradients through scores and state reads) and :func:`bwd_wy` (gradients through the WY
factors, the triangular solve, the Gram matrix, the decay and the write key).

Under ``TRITON_INTERPRET=1`` every stage runs on the CPU, in float64 too (the dots accumulate in float64).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of carried states and fp32 buffers: float64 for float64 inputs (interpreter), else
    float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_dtype(dtype: torch.dtype):
    """Accumulator dtype inside the kernels (the Triton twin of :func:`wide_dtype`)."""
    return tl.float64 if wide_dtype(dtype) == torch.float64 else tl.float32


#: Register use and spills of the last compiled launch of each stage (GPU only; read by the benchmark).
RESOURCES: dict[str, tuple[int, int]] = {}


def _record(name: str, compiled) -> None:
    n_regs, n_spills = getattr(compiled, "n_regs", None), getattr(compiled, "n_spills", None)
    if n_regs is not None:
        RESOURCES[name] = (int(n_regs), int(n_spills))


def _warps(n: int) -> int:
    return 1 if INTERPRET else n


#: Launch-configuration overrides by stage name (``"gram_solve"``, ``"wy"``, ``"state"``, ``"output"``,
#: ``"dv_local"``, ``"dh"``, ``"bwd_dqk"``, ``"bwd_wy"``), e.g. ``{"state": {"BV": 64, "num_warps": 4}}``.
#: Empty in normal use; the tuning benchmark fills it to time variants. Values change speed and at most the
#: order of floating-point accumulation (results agree to rounding), except ``PREC``/``NEWTON`` of
#: ``gram_solve`` (the solve's dot precision and its Newton step), whose error the tuning run also measures.
TUNE: dict[str, dict] = {}


def _cfg(name: str, dtype: torch.dtype | None = None, **defaults):
    """The launch configuration of stage ``name``: ``defaults`` updated by :data:`TUNE` (warps → 1 under the
    interpreter, which runs one thread per program). With ``dtype`` (the input dtype) it also carries the
    kernels' ``ACC`` (accumulator dtype) and ``IEEE`` (full-precision fp32 dots) constants."""
    cfg = {**defaults, **TUNE.get(name, {})}
    if dtype is not None:
        cfg.update(ACC=acc_dtype(dtype), IEEE=dtype == torch.float32)
    if INTERPRET:
        cfg["num_warps"] = 1
    return cfg


def _block(n: int, cap: int | None = None) -> int:
    """The power-of-two block covering ``n`` (at least 16, the smallest side of a ``tl.dot``), at most ``cap``."""
    b = max(16, triton.next_power_of_2(n))
    return b if cap is None else min(cap, b)


def _stages(dtype: torch.dtype) -> int:
    """Software-pipelining depth of the kernels with a loop: fp32 tiles are twice as large, so one stage."""
    return 1 if dtype in (torch.float32, torch.float64) else 2


def _bv(V: int, progs: int, gpu: bool | None = None) -> int:
    """V block of the sequential passes (state, dh): 64, halved on a GPU while fewer than 128 programs would run.

    Measured on an H200 (bf16, ``benchmarks/tune_kernels.py``, runs 7–8): the fastest state pass had 128
    programs at all three shapes timed — V block 64 with 64 sequence·heads at K = V = 128 (0.111 ms; 32: 0.143),
    16 with 16 sequence·heads (0.201 ms; 32: 0.276), 64 with 128 sequence·heads at K = V = 64 (0.052 ms).
    ``gpu`` (default: not under the interpreter) picks the rule, so the tests can run the GPU choice too."""
    bv = _block(V, 64)
    if not (not INTERPRET if gpu is None else gpu):
        return bv
    while bv > 16 and progs * triton.cdiv(V, bv) < 128:
        bv //= 2
    return bv


#: Shared memory the pipelined loads of one sequential pass may take (an H100/H200 has 227 KiB per block).
_PIPE_BYTES = 192 * 1024


def _pass_stages(dtype: torch.dtype, bv: int, stage_bytes: int) -> int:
    """Software-pipelining depth of the sequential passes: one for fp32/fp64 (shared memory); for 16-bit
    inputs 3, or 4 with V blocks of at most 32 (measured best in the same runs), and never more stages of
    ``stage_bytes`` each than fit in :data:`_PIPE_BYTES` (at K = 256, 4 stages of the state pass needed 280 KB)."""
    if dtype in (torch.float32, torch.float64):
        return 1
    return max(1, min(4 if bv <= 32 else 3, _PIPE_BYTES // stage_bytes))


# ------------------------------------------------------------------------------------------------ helpers


@triton.jit
def _mm(a, b, DT: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr):
    """``a @ b`` with operands in the input dtype ``DT`` and ``ACC`` accumulation (IEEE for float32)."""
    if IEEE:
        return tl.dot(a.to(DT), b.to(DT), input_precision="ieee", out_dtype=ACC)
    else:
        return tl.dot(a.to(DT), b.to(DT), out_dtype=ACC)


@triton.jit
def _rows(ptr, t, rmask, stride, offs, ncols, ACC: tl.constexpr):
    """Load rows ``t`` (int64 row offsets) × columns ``offs`` of a row-major matrix, zero outside."""
    m = rmask[:, None] & (offs[None, :] < ncols)
    return tl.load(ptr + t[:, None] * stride + offs[None, :], mask=m, other=0.0).to(ACC)


#: Bits of the device-side value check (one int32 word per call, see :mod:`._checks`): each stage that
#: loads an input anyway tests its values in registers and ORs a bit into the word when one is out of range.
#: (``tl.constexpr`` so that the kernels may read them; ``.value`` is the int.)
BAD_Q, BAD_K, BAD_V, BAD_BETA, BAD_D, BAD_ALPHA = (tl.constexpr(1 << i) for i in range(6))


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _or_all(code):
    """OR of all entries of the int32 tile ``code [R, S]`` (a scalar)."""
    return tl.reduce(tl.reduce(code, 1, _or), 0, _or)


@triton.jit
def _flag(flag, bits):
    """OR the scalar ``bits`` into ``*flag`` (one atomic, issued only when non-zero)."""
    tl.atomic_or(flag, bits, mask=bits != 0)


@triton.jit
def _nonfinite(x, m, BIT: tl.constexpr):
    """``BIT`` where ``x`` is NaN or ±inf (and ``m``), else 0 (int32 tile)."""
    return tl.where(m & ~(tl.abs(x) < float("inf")), BIT, 0)


@triton.jit
def _store_rows(ptr, x, t, rmask, stride, offs, ncols):
    m = rmask[:, None] & (offs[None, :] < ncols)
    tl.store(ptr + t[:, None] * stride + offs[None, :], x.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _decay(g, rows, cols, STRICT: tl.constexpr):
    """``Γ_{r,i} = exp(g_r − g_i)`` on the (strictly, if ``STRICT``) lower triangle, 0 above."""
    if STRICT:
        m = rows[:, None] > cols[None, :]
    else:
        m = rows[:, None] >= cols[None, :]
    diff = tl.where(m, g[:, None] - g[None, :], 0.0)
    return tl.where(m, tl.exp(diff), 0.0)


@triton.jit
def _last(x, offs, nv):
    """The entry of vector ``x`` at index ``nv − 1`` (last valid row of a chunk)."""
    return tl.sum(tl.where(offs == nv - 1, x, 0.0), 0)


@triton.jit
def _mmf(a, b, ACC: tl.constexpr, PREC: tl.constexpr = "ieee"):
    """Small fp32 product (16×16 blocks of the inverse); ``PREC`` is Triton's ``input_precision``."""
    return tl.dot(a, b, input_precision=PREC, out_dtype=ACC)


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


# ------------------------------------------------------------------------- stage 1: write key, Gram, solve


@triton.jit
def _keys16(
    k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, sb, g_carry, i_h, flag,
    H, K, s_max,
    BK: tl.constexpr, HAS_D: tl.constexpr, CLIP: tl.constexpr, GATED: tl.constexpr, ACC: tl.constexpr,
    CHECK: tl.constexpr,
):  # fmt: skip
    """Rows ``16·sb … 16·sb + 15`` of a chunk: read key, write key ``c·d⊙k`` (stored), β and the in-chunk
    cumulative log-decay ``g`` (stored; continues from ``g_carry``, the value at the previous row). With
    ``CHECK`` the value-check bit of ``log α`` of these rows goes straight to ``*flag``. ``k``, ``β`` and ``d``
    are checked by stage 2, which has registers to spare: stage 1 is at 255 registers per thread at K = 128,
    and checking them here made it spill (read offline from ptxas: 1.9 KB per thread with an int32 tile kept
    live across the four row blocks, 52–92 bytes with a scalar or per-block flags), and with the spills the
    default call was 1.8–2.0× the unchecked one in H200 run 4."""
    o16 = sb * 16 + tl.arange(0, 16)
    ok = tl.arange(0, BK)
    rmask = o16 < nv
    t = (t0 + o16) * H + i_h
    b = tl.load(beta + t, mask=rmask, other=0.0).to(ACC)
    kk = _rows(k, t, rmask, K, ok, K, ACC)
    kt = kk
    if HAS_D:
        kt = kk * _rows(d, t, rmask, K, ok, K, ACC)
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
    return kk.to(kt_out.dtype.element_ty), kt, b, g, g_carry  # both in the input dtype (exact for kk)


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
    CHECK: tl.constexpr,
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
    # Each Gram block is formed as soon as its two key blocks are loaded, so that only the earlier write keys
    # stay live (not all four key blocks of both kinds).
    kk0, kt0, b0, g0, gc = _keys16(k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, 0, gz, i_h, flag, H, K, s_max,
                                   BK, HAS_D, CLIP, GATED, ACC, CHECK)  # fmt: skip
    if SOLVE:
        L00 = _lblock(kk0, kt0, b0, g0, g0, True, GATED, DT, ACC, IEEE)
    if NB >= 2:
        kk1, kt1, b1, g1, gc = _keys16(k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, 1, gc, i_h, flag, H, K,
                                       s_max, BK, HAS_D, CLIP, GATED, ACC, CHECK)  # fmt: skip
        if SOLVE:
            L11 = _lblock(kk1, kt1, b1, g1, g1, True, GATED, DT, ACC, IEEE)
            L10 = _lblock(kk1, kt0, b1, g1, g0, False, GATED, DT, ACC, IEEE)
    if NB >= 4:
        kk2, kt2, b2, g2, gc = _keys16(k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, 2, gc, i_h, flag, H, K,
                                       s_max, BK, HAS_D, CLIP, GATED, ACC, CHECK)  # fmt: skip
        if SOLVE:
            L22 = _lblock(kk2, kt2, b2, g2, g2, True, GATED, DT, ACC, IEEE)
            L20 = _lblock(kk2, kt0, b2, g2, g0, False, GATED, DT, ACC, IEEE)
            L21 = _lblock(kk2, kt1, b2, g2, g1, False, GATED, DT, ACC, IEEE)
        kk3, kt3, b3, g3, gc = _keys16(k, d, beta, log_alpha, kt_out, c_out, g_out, t0, nv, 3, gc, i_h, flag, H, K,
                                       s_max, BK, HAS_D, CLIP, GATED, ACC, CHECK)  # fmt: skip
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


def gram_solve(k, d, beta, log_alpha, bounds, s_max, C, solve=True, flag=None):
    """Stage 1. ``k, d: [N, H, K]``, ``beta, log_alpha: [N, H]``, ``bounds: [NC, 2]`` int32 (chunk start
    token, end of its sequence). Returns ``(kt [N,H,K], c [N,H] fp32 or None, g [N,H] fp32 or None,
    Ai [N,H,C] fp32/fp64 or None when ``solve`` is False)``. With ``flag`` (an int32 ``[1]`` tensor) the
    values of ``log α ∈ (−inf, 0]`` are checked as they are loaded (:data:`BAD_ALPHA`; the other inputs are
    checked by :func:`wy_factors`)."""
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
    wide = k.dtype in (torch.float32, torch.float64)
    cfg = _cfg("gram_solve", k.dtype, num_warps=2, PREC="ieee", NEWTON=wide)
    if wide:
        cfg["PREC"] = "ieee"  # tf32 variants only for 16-bit inputs (fp32 promises IEEE dots)
    _c = _gram_solve_kernel[(NC, H)](
        k, d if d is not None else k, beta, log_alpha if log_alpha is not None else beta, kt,
        c if c is not None else ai, g if g is not None else ai, ai, bounds, flag if flag is not None else bounds,
        H, K, float(s_max) if s_max is not None else 1.0,
        C=C, BK=_block(K), HAS_D=d is not None, CLIP=s_max is not None,
        GATED=log_alpha is not None, SOLVE=solve, CHECK=flag is not None, **cfg,
    )  # fmt: skip
    _record("gram_solve" if solve else "gram_keys_only", _c)
    return kt, c, g, (ai if solve else None)


# ----------------------------------------------------------------------------------- stage 2: WY factors


@triton.jit
def _wy_kernel(
    k, v, beta, g, ai, w_out, u_out, bounds, flag, d,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr,
    ACC: tl.constexpr, IEEE: tl.constexpr, CHECK: tl.constexpr, HAS_D: tl.constexpr,
):  # fmt: skip
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    DT: tl.constexpr = k.dtype.element_ty
    oc = tl.arange(0, C)
    rmask = oc < nv
    t = (t0 + oc) * H + i_h
    b = tl.load(beta + t, mask=rmask, other=0.0).to(ACC)
    code = tl.sum(tl.zeros([16], dtype=tl.int32), 0)  # scalar 0
    if CHECK:
        code |= tl.reduce(tl.where(rmask & ~((b > 0) & (b <= 1)), BAD_BETA, 0), 0, _or)
    Tm = _rows(ai, t, rmask, C, oc, C, ACC) * b[None, :]  # T = A⁻¹ diag(β)
    if GATED:
        eg = tl.exp(tl.load(g + t, mask=rmask, other=0.0).to(ACC))
    for i_k in range(tl.cdiv(K, BK)):
        ok = i_k * BK + tl.arange(0, BK)
        kk = _rows(k, t, rmask, K, ok, K, DT)  # dot operands stay in the input dtype
        if CHECK:
            mk = rmask[:, None] & (ok[None, :] < K)
            code |= _or_all(_nonfinite(kk.to(ACC), mk, BAD_K))
            if HAS_D:  # one more read of d (stage 1 has no registers left for its check)
                dd = _rows(d, t, rmask, K, ok, K, ACC)
                code |= _or_all(tl.where(mk & ~((dd > 0) & (dd < float("inf"))), BAD_D, 0))
        if GATED:
            kk = kk.to(ACC) * eg[:, None]
        _store_rows(w_out, _mm(Tm, kk, DT, ACC, IEEE), t, rmask, K, ok, K)
    for i_v in range(tl.cdiv(V, BV)):
        ov = i_v * BV + tl.arange(0, BV)
        vv = _rows(v, t, rmask, V, ov, V, DT)
        if CHECK:
            code |= _or_all(_nonfinite(vv.to(ACC), rmask[:, None] & (ov[None, :] < V), BAD_V))
        _store_rows(u_out, _mm(Tm, vv, DT, ACC, IEEE), t, rmask, V, ov, V)
    if CHECK:
        _flag(flag, code)


def wy_factors(k, v, beta, g, ai, bounds, C, inter_dtype=None, flag=None, d=None):
    """Stage 2. Returns ``W: [N, H, K]`` and ``Ũ: [N, H, V]`` (in ``inter_dtype``, default the input dtype).
    With ``flag``, non-finite ``k`` or ``v``, ``β ∉ (0, 1]`` and (given ``d``) ``d`` not finite and positive
    set :data:`BAD_K`, :data:`BAD_V`, :data:`BAD_BETA`, :data:`BAD_D` in it (as they are loaded)."""
    N, H, K = k.shape
    V = v.shape[-1]
    dt = inter_dtype or k.dtype
    w = torch.empty(N, H, K, device=k.device, dtype=dt)
    u = torch.empty(N, H, V, device=k.device, dtype=dt)
    cfg = _cfg(
        "wy",
        k.dtype,
        BK=_block(K, 64),
        BV=_block(V, 64),
        num_warps=4,
    )
    _c = _wy_kernel[(bounds.shape[0], H)](
        k, v, beta, g if g is not None else beta, ai, w, u, bounds, flag if flag is not None else bounds,
        d if d is not None else k, H, K, V, C=C, GATED=g is not None, CHECK=flag is not None,
        HAS_D=d is not None and flag is not None, **cfg,
    )  # fmt: skip
    _record("wy", _c)
    return w, u


# ------------------------------------------------------------------------- stage 3: inter-chunk recurrence


@triton.jit
def _state_kernel(
    kt, w, u, g, h0, h_out, vnew_out, ht_out, cu_seqlens, chunk_offsets,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr, USE_H0: tl.constexpr,
    STORE_HT: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr, KSPLIT: tl.constexpr,
):  # fmt: skip
    """Stage 3, one program per (V block, sequence·head). With ``KSPLIT`` the state block is kept as two
    halves over the key dimension (rows ``[0, BK/2)`` and ``[BK/2, BK)``), so each product is half as deep and
    the two halves' products are independent. Dot operands are loaded in the input dtype (no fp32 round trip)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    Tn = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    boc = tl.load(chunk_offsets + i_n).to(tl.int64)
    DT: tl.constexpr = kt.dtype.element_ty
    BH: tl.constexpr = BK // 2 if KSPLIT else BK
    oc = tl.arange(0, C)
    ov = i_v * BV + tl.arange(0, BV)
    ok1 = tl.arange(0, BH)
    kv1 = (ok1[:, None] < K) & (ov[None, :] < V)
    off1 = ok1[:, None] * V + ov[None, :]
    M1 = tl.zeros([BH, BV], dtype=ACC)  # Sᵀ block: rows key dim, columns value dim
    if USE_H0:
        M1 += tl.load(h0 + i_nh.to(tl.int64) * K * V + off1, mask=kv1, other=0.0).to(ACC)
    if KSPLIT:
        ok2 = BH + tl.arange(0, BH)
        kv2 = (ok2[:, None] < K) & (ov[None, :] < V)
        off2 = ok2[:, None] * V + ov[None, :]
        M2 = tl.zeros([BH, BV], dtype=ACC)
        if USE_H0:
            M2 += tl.load(h0 + i_nh.to(tl.int64) * K * V + off2, mask=kv2, other=0.0).to(ACC)
    for n in range(tl.cdiv(Tn, C)):
        nv = tl.minimum(Tn - n * C, C)
        rmask = oc < nv
        t = (bos + n * C + oc) * H + i_h
        hbase = h_out + ((boc + n) * H + i_h) * K * V
        tl.store(hbase + off1, M1.to(h_out.dtype.element_ty), mask=kv1)
        WM = _mm(_rows(w, t, rmask, K, ok1, K, DT), M1, DT, ACC, IEEE)
        if KSPLIT:
            tl.store(hbase + off2, M2.to(h_out.dtype.element_ty), mask=kv2)
            WM += _mm(_rows(w, t, rmask, K, ok2, K, DT), M2, DT, ACC, IEEE)
        U = _rows(u, t, rmask, V, ov, V, ACC) - WM
        _store_rows(vnew_out, U, t, rmask, V, ov, V)
        Ud = U.to(DT)
        if GATED:
            gg = tl.load(g + t, mask=rmask, other=0.0).to(ACC)
            g_last = _last(gg, oc, nv)
            # the decay of each row to the chunk end goes on U (rows), the same product as on the key rows
            Ud = (U * tl.where(rmask, tl.exp(g_last - gg), 0.0)[:, None]).to(DT)
            M1 = M1 * tl.exp(g_last)
            if KSPLIT:
                M2 = M2 * tl.exp(g_last)
        M1 += _mm(tl.trans(_rows(kt, t, rmask, K, ok1, K, DT)), Ud, DT, ACC, IEEE)
        if KSPLIT:
            M2 += _mm(tl.trans(_rows(kt, t, rmask, K, ok2, K, DT)), Ud, DT, ACC, IEEE)
    if STORE_HT:
        tl.store(ht_out + i_nh.to(tl.int64) * K * V + off1, M1.to(ht_out.dtype.element_ty), mask=kv1)
        if KSPLIT:
            tl.store(ht_out + i_nh.to(tl.int64) * K * V + off2, M2.to(ht_out.dtype.element_ty), mask=kv2)


def state_pass(kt, w, u, g, h0, cu_seqlens, chunk_offsets, NC, C, output_final_state, inter_dtype=None):
    """Stage 3. Returns ``h: [NC, H, K, V]`` (start state of each chunk), ``U: [N, H, V]`` (``v_new``) and the
    final state ``[S, H, K, V]`` (fp32/fp64, ``S`` sequences) or None. ``h0: [S, H, K, V]`` or None."""
    N, H, K = kt.shape
    V = u.shape[-1]
    S = cu_seqlens.numel() - 1
    dt = inter_dtype or kt.dtype
    f = wide_dtype(kt.dtype)
    h = torch.empty(NC, H, K, V, device=kt.device, dtype=dt)
    vnew = torch.empty(N, H, V, device=kt.device, dtype=dt)
    ht = torch.empty(S, H, K, V, device=kt.device, dtype=f) if output_final_state else None
    BK = _block(K)
    bv = _bv(V, S * H)
    es = kt.element_size()
    nst = _pass_stages(kt.dtype, bv, C * (2 * BK + bv) * es)  # per chunk: rows of W and k̃, a block of Ũ
    cfg = _cfg("state", kt.dtype, BV=bv, num_stages=nst, num_warps=4, KSPLIT=False)
    if BK < 32:
        cfg["KSPLIT"] = False  # halves below 16 rows are not a dot shape
    _c = _state_kernel[(triton.cdiv(V, cfg["BV"]), S * H)](
        kt, w, u, g if g is not None else u, h0 if h0 is not None else h, h, vnew, ht if ht is not None else h,
        cu_seqlens, chunk_offsets, H, K, V,
        C=C, BK=BK, GATED=g is not None, USE_H0=h0 is not None,
        STORE_HT=output_final_state, **cfg,
    )  # fmt: skip
    _record("state", _c)
    return h, vnew, ht


# ------------------------------------------------------------------------------------------ stage 4: output


@triton.jit
def _chunk_scores(q, kt, g, i_c, i_h, bounds, H, K,
                  C: tl.constexpr, BK: tl.constexpr, GATED: tl.constexpr,
                  ACC: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    """Rows of one chunk and its masked intra-chunk scores ``Γ ⊙ tril₀(Q K̃ᵀ)`` (shared by output and dv)."""
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    DT: tl.constexpr = q.dtype.element_ty
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    rmask = oc < nv
    t = (t0 + oc) * H + i_h
    qq = _rows(q, t, rmask, K, ok, K, DT)  # dot operands stay in the input dtype
    ktc = _rows(kt, t, rmask, K, ok, K, DT)
    P = _mm(qq, tl.trans(ktc), DT, ACC, IEEE)
    if GATED:
        gg = tl.load(g + t, mask=rmask, other=0.0).to(ACC)
        P = P * _decay(gg, oc, oc, False)
    else:
        gg = tl.zeros([C], dtype=ACC)
        P = tl.where(oc[:, None] >= oc[None, :], P, 0.0)
    return t, rmask, ok, qq, P, gg


@triton.jit
def _output_kernel(
    q, kt, vnew, h, g, o, bounds, flag, scale,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr,
    ACC: tl.constexpr, IEEE: tl.constexpr, CHECK: tl.constexpr,
):  # fmt: skip
    """Stage 4. With ``CHECK``: non-finite ``q`` sets :data:`BAD_Q` (tested by the first V block), and if an
    earlier stage of this call flagged an input, the output is NaN (a bad input never gives a plausible
    output, even before the flag is read on the host)."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    DT: tl.constexpr = q.dtype.element_ty
    ov = i_v * BV + tl.arange(0, BV)
    t, rmask, ok, qq, P, gg = _chunk_scores(q, kt, g, i_c, i_h, bounds, H, K, C, BK, GATED, ACC, IEEE)
    if CHECK:
        if i_v == 0:
            _flag(flag, _or_all(_nonfinite(qq.to(ACC), rmask[:, None] & (ok[None, :] < K), BAD_Q)))
    if GATED:
        qq = (qq.to(ACC) * tl.exp(gg)[:, None]).to(DT)
    kv = (ok[:, None] < K) & (ov[None, :] < V)
    M = tl.load(h + (i_c.to(tl.int64) * H + i_h) * K * V + ok[:, None] * V + ov[None, :], mask=kv, other=0.0)
    U = _rows(vnew, t, rmask, V, ov, V, DT)
    O = scale * (_mm(qq, M, DT, ACC, IEEE) + _mm(P, U, DT, ACC, IEEE))
    if CHECK:
        O = tl.where(tl.load(flag) != 0, float("nan"), O)
    _store_rows(o, O, t, rmask, V, ov, V)


def output(q, kt, vnew, h, g, bounds, scale, C, flag=None):
    """Stage 4. Returns ``o: [N, H, V]`` in the input dtype. With ``flag``: non-finite ``q`` sets
    :data:`BAD_Q`, and the output is NaN where an earlier stage has set a bit."""
    N, H, K = q.shape
    V = vnew.shape[-1]
    NC = bounds.shape[0]
    o = torch.empty(N, H, V, device=q.device, dtype=q.dtype)
    cfg = _cfg("output", q.dtype, BV=_block(V, 64), num_warps=4)
    _c = _output_kernel[(triton.cdiv(V, cfg["BV"]), NC, H)](
        q, kt, vnew, h, g if g is not None else q, o, bounds, flag if flag is not None else bounds,
        float(scale), H, K, V, C=C, BK=_block(K), GATED=g is not None, CHECK=flag is not None, **cfg,
    )  # fmt: skip
    _record("output", _c)
    return o


# ---------------------------------------------------------------------------------------------- backward


@triton.jit
def _dv_local_kernel(
    q, kt, g, do, dv_out, bounds, scale,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr,
    ACC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    DT: tl.constexpr = q.dtype.element_ty
    ov = i_v * BV + tl.arange(0, BV)
    t, rmask, ok, qq, P, gg = _chunk_scores(q, kt, g, i_c, i_h, bounds, H, K, C, BK, GATED, ACC, IEEE)
    dO = _rows(do, t, rmask, V, ov, V, DT)
    _store_rows(dv_out, scale * _mm(tl.trans(P), dO, DT, ACC, IEEE), t, rmask, V, ov, V)


def dv_local(q, kt, g, do, bounds, scale, C, inter_dtype=None):
    """``scale · tril₀(Γ ⊙ Q K̃ᵀ)ᵀ dO``: the part of ``dU`` that does not depend on later chunks."""
    N, H, K = q.shape
    V = do.shape[-1]
    dv = torch.empty(N, H, V, device=q.device, dtype=inter_dtype or q.dtype)
    # V block up to 128 (H200, K = V = 128: 0.073 ms against 0.085 at 64)
    cfg = _cfg("dv_local", q.dtype, BV=_block(V, 128), num_warps=4)
    _c = _dv_local_kernel[(triton.cdiv(V, cfg["BV"]), bounds.shape[0], H)](
        q, kt, g if g is not None else q, do, dv, bounds, float(scale), H, K, V,
        C=C, BK=_block(K), GATED=g is not None, **cfg,
    )  # fmt: skip
    _record("dv_local", _c)
    return dv


@triton.jit
def _dh_kernel(
    q, kt, w, g, do, dvl, dht, dh_out, du_out, dh0_out, cu_seqlens, chunk_offsets, scale,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr, USE_DHT: tl.constexpr,
    STORE_DH0: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    Tn = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    boc = tl.load(chunk_offsets + i_n).to(tl.int64)
    DT: tl.constexpr = q.dtype.element_ty
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    kv = (ok[:, None] < K) & (ov[None, :] < V)
    kvoff = ok[:, None] * V + ov[None, :]
    dM = tl.zeros([BK, BV], dtype=ACC)
    if USE_DHT:
        dM += tl.load(dht + i_nh.to(tl.int64) * K * V + kvoff, mask=kv, other=0.0).to(ACC)
    NT = tl.cdiv(Tn, C)
    for j in range(NT):
        n = NT - 1 - j
        nv = tl.minimum(Tn - n * C, C)
        rmask = oc < nv
        t = (bos + n * C + oc) * H + i_h
        tl.store(dh_out + ((boc + n) * H + i_h) * K * V + kvoff, dM.to(dh_out.dtype.element_ty), mask=kv)
        # dot operands in the input dtype (no fp32 round trip); the gate scales rows of fp32 values
        qq = _rows(q, t, rmask, K, ok, K, DT)
        ktc = _rows(kt, t, rmask, K, ok, K, DT)
        W = _rows(w, t, rmask, K, ok, K, DT)
        dO = _rows(do, t, rmask, V, ov, V, DT)
        KdM = _mm(ktc, dM, DT, ACC, IEEE)
        if GATED:
            gg = tl.load(g + t, mask=rmask, other=0.0).to(ACC)
            g_last = _last(gg, oc, nv)
            KdM = KdM * tl.where(rmask, tl.exp(g_last - gg), 0.0)[:, None]
            qq = (qq.to(ACC) * tl.exp(gg)[:, None]).to(DT)
        dU = _rows(dvl, t, rmask, V, ov, V, ACC) + KdM
        _store_rows(du_out, dU, t, rmask, V, ov, V)
        if GATED:
            dM = dM * tl.exp(g_last)
        dM += scale * _mm(tl.trans(qq), dO, DT, ACC, IEEE) - _mm(tl.trans(W), dU, DT, ACC, IEEE)
    if STORE_DH0:
        tl.store(dh0_out + i_nh.to(tl.int64) * K * V + kvoff, dM.to(dh0_out.dtype.element_ty), mask=kv)


def dh_pass(q, kt, w, g, do, dvl, dht, cu_seqlens, chunk_offsets, NC, scale, C, need_dh0, inter_dtype=None):
    """Reverse state recurrence. Returns ``dh: [NC, H, K, V]`` (gradient w.r.t. each chunk's end state),
    ``dU: [N, H, V]`` and ``dh0: [S, H, K, V]`` (fp32/fp64) or None."""
    N, H, K = q.shape
    V = do.shape[-1]
    S = cu_seqlens.numel() - 1
    dt = inter_dtype or q.dtype
    f = wide_dtype(q.dtype)
    dh = torch.empty(NC, H, K, V, device=q.device, dtype=dt)
    du = torch.empty(N, H, V, device=q.device, dtype=dt)
    dh0 = torch.empty(S, H, K, V, device=q.device, dtype=f) if need_dh0 else None
    # H200, K = V = 128, 64 sequence·heads: V block 64 with 8 warps and 3 stages 0.254 ms (32, 2 stages: 0.390)
    bv = _bv(V, S * H)
    BK = _block(K)
    nst = min(3, _pass_stages(q.dtype, bv, C * (3 * BK + 2 * bv) * q.element_size()))  # q, k̃, W; dO, dv
    # 8 warps pay only with wide V blocks: 16 sequence·heads (V block 16) took 0.510 ms at 4 warps, 0.557 at 8
    cfg = _cfg("dh", q.dtype, BV=bv, num_stages=nst, num_warps=8 if K > 64 and bv >= 32 else 4)
    _c = _dh_kernel[(triton.cdiv(V, cfg["BV"]), S * H)](
        q, kt, w, g if g is not None else q, do, dvl, dht if dht is not None else dh, dh, du,
        dh0 if dh0 is not None else dh, cu_seqlens, chunk_offsets, float(scale), H, K, V,
        C=C, BK=BK, GATED=g is not None, USE_DHT=dht is not None,
        STORE_DH0=need_dh0, **cfg,
    )  # fmt: skip
    _record("dh", _c)
    return dh, du, dh0


@triton.jit
def _bwd_dqk_kernel(
    q, kt, g, vnew, h, do, dh, du, dq_out, dkt_out, dw_out, dg_out, bounds, scale,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr,
    ACC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    DT: tl.constexpr = q.dtype.element_ty
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    rmask = oc < nv
    t = (t0 + oc) * H + i_h
    hb = (i_c.to(tl.int64) * H + i_h) * K * V
    dQ = tl.zeros([C, BK], dtype=ACC)  # dO Mᵀ
    dKe = tl.zeros([C, BK], dtype=ACC)  # U dM'ᵀ  (gradient w.r.t. the decayed write key)
    dW = tl.zeros([C, BK], dtype=ACC)  # −dU Mᵀ
    dP = tl.zeros([C, C], dtype=ACC)  # dO Uᵀ
    hdh = tl.zeros([BK], dtype=ACC)  # Σ_v M ⊙ dM' (decay of the carried state)
    for i_v in range(tl.cdiv(V, BV)):
        ov = i_v * BV + tl.arange(0, BV)
        kv = (ok[:, None] < K) & (ov[None, :] < V)
        M = tl.load(h + hb + ok[:, None] * V + ov[None, :], mask=kv, other=0.0).to(ACC)
        dM = tl.load(dh + hb + ok[:, None] * V + ov[None, :], mask=kv, other=0.0).to(ACC)
        U = _rows(vnew, t, rmask, V, ov, V, ACC)
        dO = _rows(do, t, rmask, V, ov, V, ACC)
        dU = _rows(du, t, rmask, V, ov, V, ACC)
        dQ += _mm(dO, tl.trans(M), DT, ACC, IEEE)
        dKe += _mm(U, tl.trans(dM), DT, ACC, IEEE)
        dW -= _mm(dU, tl.trans(M), DT, ACC, IEEE)
        dP += _mm(dO, tl.trans(U), DT, ACC, IEEE)
        if GATED:
            hdh += tl.sum(M * dM, 1)
    qq = _rows(q, t, rmask, K, ok, K, ACC)
    ktc = _rows(kt, t, rmask, K, ok, K, ACC)
    S = _mm(qq, tl.trans(ktc), DT, ACC, IEEE)
    if GATED:
        gg = tl.load(g + t, mask=rmask, other=0.0).to(ACC)
        g_last = _last(gg, oc, nv)
        dP = scale * dP * _decay(gg, oc, oc, False)
        dQ = scale * dQ * tl.exp(gg)[:, None]
        ke = tl.where(rmask, tl.exp(g_last - gg), 0.0)
        Z = dP * S
        Y = tl.sum(dKe * ktc, 1) * ke
        dg = tl.sum(qq * dQ, 1) + tl.sum(Z, 1) - tl.sum(Z, 0) - Y
        dg += tl.where(oc == nv - 1, tl.sum(Y, 0) + tl.exp(g_last) * tl.sum(hdh, 0), 0.0)
        tl.store(dg_out + t, dg.to(dg_out.dtype.element_ty), mask=rmask)
        dKe = dKe * ke[:, None]
    else:
        dP = scale * tl.where(oc[:, None] >= oc[None, :], dP, 0.0)
        dQ = scale * dQ
    dQ += _mm(dP, ktc, DT, ACC, IEEE)
    dKe += _mm(tl.trans(dP), qq, DT, ACC, IEEE)
    _store_rows(dq_out, dQ, t, rmask, K, ok, K)
    _store_rows(dkt_out, dKe, t, rmask, K, ok, K)
    _store_rows(dw_out, dW, t, rmask, K, ok, K)


def bwd_dqk(q, kt, g, vnew, h, do, dh, du, bounds, scale, C):
    """Gradients through the reads: ``dq`` (complete) and ``dW`` in the input dtype; partial ``dk̃`` and ``dg``
    in fp32/fp64."""
    N, H, K = q.shape
    V = do.shape[-1]
    f = wide_dtype(q.dtype)
    dq = torch.empty(N, H, K, device=q.device, dtype=q.dtype)
    dkt = torch.empty(N, H, K, device=q.device, dtype=f)
    dw = torch.empty(N, H, K, device=q.device, dtype=q.dtype)  # only ever used as a dot operand
    dg = torch.empty(N, H, device=q.device, dtype=f) if g is not None else None
    cfg = _cfg(
        "bwd_dqk",
        q.dtype,
        BV=_block(V, 64),
        num_stages=_stages(q.dtype),
        num_warps=4 if K <= 64 else 8,
    )
    _c = _bwd_dqk_kernel[(bounds.shape[0], H)](
        q, kt, g if g is not None else q, vnew, h, do, dh, du, dq, dkt, dw, dg if dg is not None else dq,
        bounds, float(scale), H, K, V,
        C=C, BK=_block(K), GATED=g is not None, **cfg,
    )  # fmt: skip
    _record("bwd_dqk", _c)
    return dq, dkt, dw, dg


@triton.jit
def _bwd_wy_kernel(
    k, d, c, kt, v, beta, g, ai, dw, du, dkt, dg, dk_out, dd_out, dv_out, db_out, dla_out, bounds,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_D: tl.constexpr, CLIP: tl.constexpr,
    GATED: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Loops over K blocks (``BK`` columns) so that only ``[C, BK]`` key tiles are live at once: pass 1 sums
    the ``C×C`` products over K, the solve/Gram gradients are ``C×C``, (pass 2 forms the clip's row sum of
    ``dk̃ ⊙ d ⊙ k``,) and the last pass writes ``dk`` and ``dd`` block by block."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    DT: tl.constexpr = k.dtype.element_ty
    oc = tl.arange(0, C)
    rmask = oc < nv
    t = (t0 + oc) * H + i_h
    b = tl.load(beta + t, mask=rmask, other=0.0).to(ACC)
    Ai = _rows(ai, t, rmask, C, oc, C, ACC)
    Tm = Ai * b[None, :]
    if GATED:
        gg = tl.load(g + t, mask=rmask, other=0.0).to(ACC)
        eg = tl.where(rmask, tl.exp(gg), 0.0)
    dT = tl.zeros([C, C], dtype=ACC)
    G = tl.zeros([C, C], dtype=ACC)
    dgk = tl.zeros([C], dtype=ACC)  # Σ_k (Tᵀ dW) ⊙ e^g K: the decay term of dg through W
    dsum = tl.zeros([C], dtype=ACC)  # Σ_k d k², the clip's s_raw / β
    for i_k in range(tl.cdiv(K, BK)):
        ok = i_k * BK + tl.arange(0, BK)
        kk = _rows(k, t, rmask, K, ok, K, ACC)
        ktc = _rows(kt, t, rmask, K, ok, K, ACC)
        dW = _rows(dw, t, rmask, K, ok, K, ACC)
        kg = kk
        if GATED:
            kg = kk * eg[:, None]
            dgk += tl.sum(_mm(tl.trans(Tm), dW, DT, ACC, IEEE) * kg, 1)
        dT += _mm(dW, tl.trans(kg), DT, ACC, IEEE)
        G += _mm(kk, tl.trans(ktc), DT, ACC, IEEE)
        if CLIP:
            if HAS_D:
                dsum += tl.sum(_rows(d, t, rmask, K, ok, K, ACC) * kk * kk, 1)
            else:
                dsum += tl.sum(kk * kk, 1)
    for i_v in range(tl.cdiv(V, BV)):
        ov = i_v * BV + tl.arange(0, BV)
        dU = _rows(du, t, rmask, V, ov, V, ACC)
        vv = _rows(v, t, rmask, V, ov, V, ACC)
        dT += _mm(dU, tl.trans(vv), DT, ACC, IEEE)
        _store_rows(dv_out, _mm(tl.trans(Tm), dU, DT, ACC, IEEE), t, rmask, V, ov, V)
    db = tl.sum(dT * Ai, 0)  # through T = A⁻¹ diag(β)
    dAi = dT * b[None, :]
    # A⁻¹ = X: dA = −Xᵀ dX Xᵀ, kept on the strictly lower triangle where A depends on β and the Gram.
    dA = -_mm(_mm(tl.trans(Ai), dAi, DT, ACC, IEEE), tl.trans(Ai), DT, ACC, IEEE)
    dL = tl.where(oc[:, None] > oc[None, :], dA, 0.0)
    if GATED:
        G = G * _decay(gg, oc, oc, True)
    db += tl.sum(dL * G, 1)
    dGe = dL * b[:, None]  # gradient w.r.t. (Γ ⊙ K K̃ᵀ)
    if GATED:
        Z2 = dGe * G
        dgt = tl.load(dg + t, mask=rmask, other=0.0).to(ACC) + dgk + tl.sum(Z2, 1)
        dgt -= tl.sum(Z2, 0)
        dla = tl.cumsum(tl.where(rmask, dgt, 0.0), 0, reverse=True)  # g = in-chunk cumsum of log α
        tl.store(dla_out + t, dla.to(dla_out.dtype.element_ty), mask=rmask)
        dGe = dGe * _decay(gg, oc, oc, True)
    # write key k̃ = c · d ⊙ k with s_raw = β Σ d k² and c = min(1, s_max / s_raw)
    if CLIP:
        cc = tl.load(c + t, mask=rmask, other=1.0).to(ACC)
        dc = tl.zeros([C], dtype=ACC)
        for i_k in range(tl.cdiv(K, BK)):
            ok = i_k * BK + tl.arange(0, BK)
            kk = _rows(k, t, rmask, K, ok, K, ACC)
            dKt = _rows(dkt, t, rmask, K, ok, K, ACC) + _mm(tl.trans(dGe), kk, DT, ACC, IEEE)
            if HAS_D:
                dc += tl.sum(dKt * _rows(d, t, rmask, K, ok, K, ACC) * kk, 1)
            else:
                dc += tl.sum(dKt * kk, 1)
        s_raw = b * dsum
        gam = tl.where(cc < 1.0, -dc * cc / tl.where(cc < 1.0, s_raw, 1.0), 0.0)  # ∂L/∂s_raw
        db += gam * dsum
    else:
        cc = tl.where(rmask, 1.0, 0.0).to(ACC)
    for i_k in range(tl.cdiv(K, BK)):
        ok = i_k * BK + tl.arange(0, BK)
        kk = _rows(k, t, rmask, K, ok, K, ACC)
        ktc = _rows(kt, t, rmask, K, ok, K, ACC)
        dKg = _mm(tl.trans(Tm), _rows(dw, t, rmask, K, ok, K, ACC), DT, ACC, IEEE)
        if GATED:
            dKg = dKg * eg[:, None]
        dK = dKg + _mm(dGe, ktc, DT, ACC, IEEE)
        dKt = _rows(dkt, t, rmask, K, ok, K, ACC) + _mm(tl.trans(dGe), kk, DT, ACC, IEEE)
        if HAS_D:
            dd = _rows(d, t, rmask, K, ok, K, ACC)
        else:
            dd = tl.where(rmask[:, None] & (ok[None, :] < K), 1.0, 0.0).to(ACC)
        dK += cc[:, None] * dd * dKt
        grad_d = cc[:, None] * kk * dKt
        if CLIP:
            dK += (2.0 * gam * b)[:, None] * dd * kk
            grad_d += (gam * b)[:, None] * kk * kk
        if HAS_D:
            _store_rows(dd_out, grad_d, t, rmask, K, ok, K)
        _store_rows(dk_out, dK, t, rmask, K, ok, K)
    tl.store(db_out + t, db.to(db_out.dtype.element_ty), mask=rmask)


def _bk_wy(K: int, gpu: bool | None = None) -> int:
    """K block of :func:`bwd_wy`: on a GPU at most 64 (H200, K = 128, bf16, run 8: two blocks of 64 with 4 warps
    0.393 ms against 0.476 ms for one block of 128 with 8 warps; run 5 had timed two blocks at 8 warps only,
    0.533 ms); 16 under the interpreter, so that the tests run the multi-block loops. ``gpu`` (default: not
    under the interpreter) picks the rule, so the tests can run the GPU choice too."""
    return _block(K, 64) if (not INTERPRET if gpu is None else gpu) else 16


def bwd_wy(k, d, c, kt, v, beta, g, ai, dw, du, dkt, dg, bounds, C):
    """Gradients through WY factors, solve, Gram, decay and write key: returns ``dk, dd (or None), dv`` in the
    input dtype and ``dβ, d log α (or None)`` in fp32/fp64."""
    N, H, K = k.shape
    V = v.shape[-1]
    f = wide_dtype(k.dtype)
    dk = torch.empty(N, H, K, device=k.device, dtype=k.dtype)
    dd = torch.empty(N, H, K, device=k.device, dtype=k.dtype) if d is not None else None
    dv = torch.empty(N, H, V, device=k.device, dtype=k.dtype)
    db = torch.empty(N, H, device=k.device, dtype=f)
    dla = torch.empty(N, H, device=k.device, dtype=f) if g is not None else None
    cfg = _cfg(
        "bwd_wy",
        k.dtype,
        BK=_bk_wy(K),
        BV=_block(V, 64),
        num_stages=_stages(k.dtype),
        num_warps=4,
    )
    _c = _bwd_wy_kernel[(bounds.shape[0], H)](
        k, d if d is not None else k, c if c is not None else db, kt, v, beta, g if g is not None else db, ai,
        dw, du, dkt, dg if dg is not None else db, dk, dd if dd is not None else dk, dv, db,
        dla if dla is not None else db, bounds, H, K, V,
        C=C, HAS_D=d is not None, CLIP=c is not None, GATED=g is not None, **cfg,
    )  # fmt: skip
    _record("bwd_wy", _c)
    return dk, dd, dv, db, dla
