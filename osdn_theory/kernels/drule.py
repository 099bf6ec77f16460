"""The state-free ``ratio`` rule for the preconditioner ``d`` (spec §5, claim C5), run as a delta rule.

With ``u_t = k_t ⊙ k_t`` and the normalized step ``η_t = c / (2 β_t² ‖u_t‖²)`` the rule is

    d_{t+1} = d_t + c · (1/β_t − u_tᵀ d_t) · u_t / ‖u_t‖²,      d_1 = d_init,

i.e. a delta rule on a one-column memory with key ``û_t = u_t / ‖u_t‖``, strength ``c`` and value
``1 / (β_t ‖u_t‖)`` (tokens with ``u_t = 0`` leave ``d`` unchanged). Token ``t`` is written with ``d_t``
(the value *before* its own update).

The scan runs in four launches:

1. ``_d_prep_kernel``: one pass over ``k`` and ``β`` forms ``û``, the strength and the value (in column 0 of
   a 16-wide value, since ``tl.dot`` needs at least 16 columns).
2. :func:`stages.gram_solve`: ``A⁻¹`` of every chunk (chunks are independent).
3. :func:`stages.wy_factors`: ``W = T Û`` and ``Ũ = T v`` with ``T = A⁻¹ diag(c)`` (only column 0 of ``Ũ``
   is used).
4. ``_d_scan_kernel``: one program per (sequence, head) carries the ``K``-vector state ``h`` (fp32; fp64 for
   fp64 input) in registers through the chunks of its sequence. Per chunk of ``C`` rows::

       U = Ũ₀ − W h                          (one scalar per row)
       d_r = h + Σ_{i<r} U_i û_i              (exclusive cumulative sum over the rows)
       h ← h + Σ_i U_i û_i

   and stores ``max(d_r, d_min)``. The state of a one-column memory is only ``K`` numbers, so the
   inter-chunk recurrence needs no ``[K, V]`` tile and no dot; the state pass and the read-out that it
   replaces ran as two launches and wrote every chunk's state to memory.

The chunk size of the scan (:attr:`DRule.chunk_size`) may differ from that of :func:`chunk_osdn`.
Measured on an H200 (B=4, T=4096, H=16, K=128, bf16; whole :func:`d_ratio_scan`, ms, C = 16/32/64):
0.486/0.436/0.486 (``benchmarks/results/tune_h200_2026-11-27_run8b.json``). Timed separately while the
design was chosen (not kept in a results file): the former state pass + read-out 0.51/0.42/0.42 once the
host synchronisation caused by a host-to-device copy of ``d_init`` was removed from both (0.66/0.53/0.50
with it); fp32 1.01/0.98/4.4 against 1.56/1.45/7.8; the scan kernel alone 0.29/0.23/0.23 ms, the rest is
stages 1–3, of which :func:`stages.gram_solve` is the largest.
Positivity: ``d`` is floored at read-out only, ``max(d_t, d_min)``; the carried state is not floored, which
keeps the scan affine (spec §5).

Gradients: by default ``d`` is differentiable with respect to ``k``, ``β`` and a ``d_init`` tensor. The
forward then also stores the unfloored ``d`` and each token's update coefficient, and the backward is one
three more launches: the adjoint recurrence of the scan in chunk form, with the forward's ``A⁻¹`` — each
chunk's affine map of the adjoint in parallel (``_d_bwd_local_kernel``), a reverse scan that carries only
the ``K``-vector adjoint across chunks (``_d_bwd_scan_kernel``), and the token gradients in parallel
(``_d_bwd_grads_kernel``); exact, no autograd through a loop. ``detach=True`` (:class:`DRule`, :func:`d_ratio_scan`)
makes ``d`` a constant of the keys, like an optimizer's preconditioner state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._validate import as_tensor, check_choice, check_scalar
from . import _checks, stages
from ._checks import check_chunk_size, check_cu_seqlens, check_keys, check_like, check_validate

__all__ = ["DRule", "d_ratio_scan"]

_VPAD = 16

#: Warps of the scan kernel by chunk size (one program per sequence and head, so few programs run at once).
#: H200, B=4, T=4096, H=16, K=128, bf16, whole d_ratio_scan in ms for warps 2/4/8 (tune run 8b, results
#: file above): C=16: 0.486/0.527/0.753; C=32: 0.725/0.436/0.526; C=64: 6.47/0.623/0.486 (at C=64 fewer
#: warps spill).
_SCAN_WARPS = {16: 2, 32: 4, 64: 8}


@triton.jit
def _d_scan_tiles(uhat, w, ut, bos, Tn, n, i_h, H, K, C: tl.constexpr, BK: tl.constexpr, VP: tl.constexpr):
    """Rows of chunk ``n`` of a sequence (zero past its end): ``W``, ``û`` and ``Ũ₀``, in the stored dtype
    (not converted here, so that the loads of the next chunk stay in flight while this one is computed)."""
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    rmask = oc < Tn - n * C
    t = (bos + n * C + oc) * H + i_h
    m = rmask[:, None] & (ok[None, :] < K)
    W = tl.load(w + t[:, None] * K + ok[None, :], mask=m, other=0.0)
    uu = tl.load(uhat + t[:, None] * K + ok[None, :], mask=m, other=0.0)
    u0 = tl.load(ut + t * VP, mask=rmask, other=0.0)
    return W, uu, u0


@triton.jit
def _d_scan_kernel(
    uhat, w, ut, h0, d_out, cu_seqlens, d_min_ptr, h_out, u_out,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, VP: tl.constexpr, ACC: tl.constexpr, STORE_H: tl.constexpr = False,
):  # fmt: skip
    """One program per (sequence, head): the ``K``-vector state ``h`` (from ``h0: [N, H, K]``) is carried in
    registers through the chunks of the sequence; per chunk ``U = Ũ₀ − W h``, ``d_r = h + Σ_{i<r} U_i û_i``
    (stored floored at ``d_min``) and ``h ← h + Σ_i U_i û_i``. ``uhat, w: [tokens, H, K]``, ``ut: [tokens, H,
    VP]`` (column 0 used), ``d_out: [tokens, H, K]``; the tail chunk of a sequence is masked. With ``STORE_H``
    (for the backward) it also stores the unfloored ``d_r`` in ``h_out: [tokens, H, K]`` and the update
    coefficient ``U_r = c (1/(β_r‖u_r‖) − û_rᵀ d_r)`` in ``u_out: [tokens, H]`` (fp32/fp64).

    The tiles of chunk ``n + 1`` are loaded before chunk ``n`` is computed (by hand: Triton's pipeliner left
    these loads alone). On an H200 (B=4, T=4096, H=16, K=128, bf16) this took the kernel from 0.315 to 0.223 ms
    at C = 32 with 4 warps, and from 0.263 to 0.232 ms at C = 64 with 8 warps (timed while the design was
    chosen; not kept in a results file)."""
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    Tn = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    h = tl.load(h0 + i_nh.to(tl.int64) * K + ok, mask=ok < K, other=0.0).to(ACC)
    d_min = tl.load(d_min_ptr).to(ACC)  # from memory: a float argument would arrive rounded to fp32
    W, uu, u0 = _d_scan_tiles(uhat, w, ut, bos, Tn, 0, i_h, H, K, C, BK, VP)
    for n in range(tl.cdiv(Tn, C)):
        W1, uu1, u01 = _d_scan_tiles(uhat, w, ut, bos, Tn, n + 1, i_h, H, K, C, BK, VP)  # next chunk
        U = u0.to(ACC) - tl.sum(W.to(ACC) * h[None, :], 1)  # 0 on masked rows
        inc = U[:, None] * uu.to(ACC)
        D = h[None, :] + tl.cumsum(inc, 0) - inc
        t = (bos + n * C + oc) * H + i_h
        stages._store_rows(d_out, tl.maximum(D, d_min), t, oc < Tn - n * C, K, ok, K)
        if STORE_H:
            stages._store_rows(h_out, D, t, oc < Tn - n * C, K, ok, K)
            tl.store(u_out + t, U.to(u_out.dtype.element_ty), mask=oc < Tn - n * C)
        h += tl.sum(inc, 0)
        W, uu, u0 = W1, uu1, u01


@triton.jit
def _bwd_chunk(
    k, beta, gd, h_raw, ai, t, rmask, c, d_min, K, C: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr
):
    """Rows ``t`` of one chunk for the backward, in ``ACC``: key ``k``, ``û``, ``‖u‖`` (1 where ``u = 0``),
    ``β``, value ``b``, strength, unfloored ``d`` (``h``), the floored-out gradient ``G̃``, ``A⁻¹`` and
    ``Σ_{j>i} G̃_j``."""
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    kk = stages._rows(k, t, rmask, K, ok, K, ACC)
    u = kk * kk
    nrm = tl.sqrt(tl.sum(u * u, 1))
    pos = nrm > 0
    safe = tl.where(pos, nrm, 1.0)
    uh = u / safe[:, None]
    bt = tl.load(beta + t, mask=rmask, other=1.0).to(ACC)
    bval = tl.where(pos, 1.0 / (bt * safe), 0.0)
    cs = tl.where(pos, c, 0.0)
    hr = stages._rows(h_raw, t, rmask, K, ok, K, ACC)
    G = tl.where(hr >= d_min, stages._rows(gd, t, rmask, K, ok, K, ACC), 0.0)
    Ai = stages._rows(ai, t, rmask, C, oc, C, ACC)  # rows r, columns j: (A⁻¹)_{rj}
    S_ex = tl.cumsum(G, 0, reverse=True) - G
    return kk, uh, safe, pos, bt, bval, cs, hr, G, Ai, S_ex


@triton.jit
def _d_bwd_local_kernel(
    k, beta, gd, h_raw, ai, p_out, g0_out, bounds, c_ptr, d_min_ptr,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Backward, part 1 (chunks × heads, in parallel): the chunk's affine map of the adjoint,
    ``λ_start = λ_C + g₀ − Ûᵀ diag(c) P λ_C`` with ``P = A⁻ᵀ Û`` (stored per token) and
    ``g₀ = Σ_i G̃_i − Ûᵀ diag(c) A⁻ᵀ r``, ``r_i = û_iᵀ Σ_{j>i} G̃_j`` (stored per chunk)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    rmask = oc < nv
    t = (t0 + oc) * H + i_h
    c = tl.load(c_ptr).to(ACC)
    d_min = tl.load(d_min_ptr).to(ACC)
    kk, uh, safe, pos, bt, bval, cs, hr, G, Ai, S_ex = _bwd_chunk(
        k, beta, gd, h_raw, ai, t, rmask, c, d_min, K, C, BK, ACC
    )
    r = tl.sum(uh * S_ex, 1)
    x0 = tl.sum(Ai * r[:, None], 0)
    P = tl.dot(tl.trans(Ai), uh, input_precision="ieee", out_dtype=ACC)
    stages._store_rows(p_out, P, t, rmask, K, ok, K)
    g0 = tl.sum(G, 0) - tl.sum((cs * x0)[:, None] * uh, 0)
    tl.store(g0_out + (i_c.to(tl.int64) * H + i_h) * K + ok, g0, mask=ok < K)


@triton.jit
def _d_bwd_scan_kernel(
    k, p, g0, lam_out, gh0_out, cu_seqlens, chunk_offsets, c_ptr,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Backward, part 2 (one program per sequence and head, chunks in reverse): carries the ``K``-vector
    adjoint ``λ`` through the chunk maps of part 1, stores the ``λ_C`` entering each chunk (from the next one)
    and ``λ_1`` (the gradient of ``d_init``)."""
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    Tn = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    boc = tl.load(chunk_offsets + i_n).to(tl.int64)
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    c = tl.load(c_ptr).to(ACC)
    lam = tl.zeros([BK], dtype=ACC)
    nt = tl.cdiv(Tn, C)
    for i in range(nt):
        n = nt - 1 - i
        rmask = oc < Tn - n * C
        t = (bos + n * C + oc) * H + i_h
        kk = stages._rows(k, t, rmask, K, ok, K, ACC)
        u = kk * kk
        nrm = tl.sqrt(tl.sum(u * u, 1))
        cu_ = tl.where(nrm > 0, c / tl.where(nrm > 0, nrm, 1.0), 0.0)  # c / ‖u‖: û = u / ‖u‖
        Pt = stages._rows(p, t, rmask, K, ok, K, ACC)
        ci = ((boc + n) * H + i_h) * K
        tl.store(lam_out + ci + ok, lam.to(lam_out.dtype.element_ty), mask=ok < K)
        xl = tl.sum(Pt * lam[None, :], 1)
        lam += tl.load(g0 + ci + ok, mask=ok < K, other=0.0).to(ACC) - tl.sum((cu_ * xl)[:, None] * u, 0)
    tl.store(gh0_out + i_nh.to(tl.int64) * K + ok, lam.to(gh0_out.dtype.element_ty), mask=ok < K)


@triton.jit
def _d_bwd_grads_kernel(
    k, beta, gd, h_raw, ucoef, ai, lam_in, gk_out, gb_out, bounds, c_ptr, d_min_ptr,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Backward, part 3 (chunks × heads, in parallel): with the chunk's entering adjoint ``λ_C`` (part 2), the
    scalars ``x_i = û_iᵀ λ_{i+1}`` solve ``Aᵀ x = y``, ``y_i = û_iᵀ (λ_C + Σ_{j>i} G̃_j)``, so ``x = A⁻ᵀ y``;
    ``λ_{i+1} = λ_C + Σ_{j>i} (G̃_j − c x_j û_j)``; then ``∂L/∂b_i = c x_i``,
    ``∂L/∂û_i = U_i λ_{i+1} − c x_i h_i`` (``U_i`` the forward's update coefficient), and through
    ``û = u/‖u‖``, ``b = 1/(β‖u‖)``, ``u = k⊙k`` to ``k`` and ``β``."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    rmask = oc < nv
    t = (t0 + oc) * H + i_h
    c = tl.load(c_ptr).to(ACC)
    d_min = tl.load(d_min_ptr).to(ACC)
    kk, uh, safe, pos, bt, bval, cs, hr, G, Ai, S_ex = _bwd_chunk(
        k, beta, gd, h_raw, ai, t, rmask, c, d_min, K, C, BK, ACC
    )
    lam = tl.load(lam_in + (i_c.to(tl.int64) * H + i_h) * K + ok, mask=ok < K, other=0.0).to(ACC)
    y = tl.sum(uh * (lam[None, :] + S_ex), 1)
    xc = cs * tl.sum(Ai * y[:, None], 0)  # c x, x = A⁻ᵀ y
    Z = xc[:, None] * uh
    lnext = lam[None, :] + S_ex - (tl.cumsum(Z, 0, reverse=True) - Z)  # λ_{i+1}
    U = tl.load(ucoef + t, mask=rmask, other=0.0).to(ACC)
    g_uh = U[:, None] * lnext - xc[:, None] * hr
    proj = tl.sum(uh * g_uh, 1)
    g_u = (g_uh - uh * proj[:, None]) / safe[:, None] - (bval * xc / safe)[:, None] * uh
    stages._store_rows(gk_out, 2.0 * kk * g_u, t, rmask, K, ok, K)
    tl.store(gb_out + t, tl.where(pos, -bval * xc / bt, 0.0).to(gb_out.dtype.element_ty), mask=rmask)


@triton.jit
def _d_prep_kernel(
    k, beta, uhat_out, strength_out, vals_out, c_ptr, flag, R, K,
    BR: tl.constexpr, BK: tl.constexpr, VP: tl.constexpr, ACC: tl.constexpr, CHECK: tl.constexpr = False,
):  # fmt: skip
    """Rows ``r`` of ``k: [R, K]`` (``R = N·H``): key ``û = u/‖u‖`` with ``u = k⊙k``, strength ``c`` and value
    ``1/(β‖u‖)`` in column 0 of ``VP`` (zero elsewhere); all three zero where ``u = 0``. One pass over ``k``.
    With ``CHECK``, non-finite ``k`` and ``β ∉ (0, 1]`` set their bits in ``*flag``."""
    orow = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    ok = tl.arange(0, BK)
    rm = orow < R
    m = rm[:, None] & (ok[None, :] < K)
    kk = tl.load(k + orow[:, None] * K + ok[None, :], mask=m, other=0.0).to(ACC)
    if CHECK:
        bchk = tl.load(beta + orow, mask=rm, other=1.0).to(ACC)
        code = stages._or_all(stages._nonfinite(kk, m, stages.BAD_K))
        code |= tl.reduce(tl.where(rm & ~((bchk > 0) & (bchk <= 1)), stages.BAD_BETA, 0), 0, stages._or)
        stages._flag(flag, code)
    u = kk * kk
    un = tl.sqrt(tl.sum(u * u, 1))
    pos = un > 0
    safe = tl.where(pos, un, 1.0)
    tl.store(
        uhat_out + orow[:, None] * K + ok[None, :], (u / safe[:, None]).to(uhat_out.dtype.element_ty), mask=m
    )
    c = tl.load(c_ptr).to(ACC)  # read from memory: a float argument would arrive as fp32
    tl.store(strength_out + orow, tl.where(pos, c, 0.0).to(strength_out.dtype.element_ty), mask=rm)
    b = tl.load(beta + orow, mask=rm, other=1.0).to(ACC)
    val = tl.where(pos, 1.0 / (b * safe), 0.0)
    ov = tl.arange(0, VP)
    vals = tl.where(ov[None, :] == 0, val[:, None], 0.0)
    tl.store(
        vals_out + orow[:, None] * VP + ov[None, :], vals.to(vals_out.dtype.element_ty), mask=rm[:, None]
    )


def _check_d_init(d_init):
    """``d_init``: a positive finite number or a floating tensor with positive finite entries."""
    if isinstance(d_init, torch.Tensor):
        t = as_tensor("d_init", d_init)
        if t.numel() == 0:
            raise ValueError(f"d_init: expected a non-empty tensor, got shape {tuple(t.shape)}")
        if not bool((torch.isfinite(t) & (t > 0)).all()):
            raise ValueError(
                f"d_init: expected positive finite entries, got min {float(t.min()):.6g}, max {float(t.max()):.6g}"
            )
        return t
    return check_scalar("d_init", d_init, 0.0, None, lo_open=True)


def _scan_forward(k, beta, h0, c: float, d_min: float, C: int, tables, flag, keep: bool):
    """The four launches of the rule on packed ``k: [N, H, K]``, ``beta: [N, H]``, ``h0: [S, H, K]`` (wide
    dtype). Returns ``d`` and, with ``keep``, what the backward needs: ``(A⁻¹, unfloored d, U)``."""
    N, H, K = k.shape
    S = h0.shape[0]
    f = stages.wide_dtype(k.dtype)
    # One pass over the keys forms the scan's key, strength and value (in the dtype of k, so the scan's dots
    # use the tensor cores for bf16/fp16); the carried d is accumulated in fp32 (fp64) inside the scan kernel.
    uhat = torch.empty_like(k)
    strength = torch.empty(N, H, dtype=k.dtype, device=k.device)
    vals = torch.empty(N, H, _VPAD, dtype=k.dtype, device=k.device)
    R = N * H
    c_t = torch.full((1,), c, dtype=f, device=k.device)
    _d_prep_kernel[(triton.cdiv(R, 32),)](
        k, beta, uhat, strength, vals, c_t, flag if flag is not None else c_t, R, K,
        BR=32, BK=stages._block(K), VP=_VPAD, ACC=stages.acc_dtype(f), CHECK=flag is not None,
        num_warps=stages._warps(4),
    )  # fmt: skip
    cu, _, bounds, _ = tables
    _, _, _, ai = stages.gram_solve(uhat, None, strength, None, bounds, None, C)
    w, ut = stages.wy_factors(uhat, vals, strength, None, ai, bounds, C)
    d = torch.empty(N, H, K, dtype=k.dtype, device=k.device)
    # the unfloored d in the wide dtype: its rounding would enter the gradient through b − ûᵀd (cancelling)
    h_raw = torch.empty(N, H, K, dtype=f, device=k.device) if keep else d
    ucoef = torch.empty(N, H, dtype=f, device=k.device) if keep else d
    d_min_t = torch.full((1,), d_min, dtype=f, device=k.device)
    _c = _d_scan_kernel[(S * H,)](
        uhat, w, ut, h0, d, cu, d_min_t, h_raw, ucoef, H, K,
        C=C, BK=stages._block(K), VP=_VPAD, ACC=stages.acc_dtype(f), STORE_H=keep,
        **stages._cfg("d_scan", num_warps=_SCAN_WARPS[C], num_stages=stages._stages(k.dtype)),
    )  # fmt: skip
    stages._record("d_scan", _c)
    return d, ((ai, h_raw, ucoef, c_t, d_min_t) if keep else None)


class _RatioScan(torch.autograd.Function):
    """``d`` of the rule with exact gradients to ``k``, ``β`` and ``d_init`` (see ``_d_bwd_*_kernel``)."""

    @staticmethod
    def forward(ctx, k, beta, h0, c, d_min, C, tables, flag):
        d, saved = _scan_forward(k, beta, h0, c, d_min, C, tables, flag, keep=True)
        ai, h_raw, ucoef, c_t, d_min_t = saved
        ctx.save_for_backward(k, beta, ai, h_raw, ucoef, c_t, d_min_t)
        ctx.meta = (C, tables, h0.shape)
        return d

    @staticmethod
    def backward(ctx, gd):
        """Three launches: the chunk maps of the adjoint (parallel), the reverse scan of the ``K``-vector
        adjoint over the chunks (one program per sequence and head), the token gradients (parallel)."""
        _checks.poll()
        k, beta, ai, h_raw, ucoef, c_t, d_min_t = ctx.saved_tensors
        C, tables, h0_shape = ctx.meta
        cu, offs, bounds, NC = tables
        N, H, K = k.shape
        f = ai.dtype
        gd = gd.contiguous()
        BK = stages._block(K)
        p = torch.empty(N, H, K, dtype=f, device=k.device)
        g0 = torch.empty(NC, H, K, dtype=f, device=k.device)
        lam = torch.empty(NC, H, K, dtype=f, device=k.device)
        gk = torch.empty_like(k)
        gb = torch.empty_like(beta)
        gh0 = torch.empty(h0_shape, dtype=f, device=k.device)
        acc = stages.acc_dtype(f)
        _c = _d_bwd_local_kernel[(NC, H)](
            k, beta, gd, h_raw, ai, p, g0, bounds, c_t, d_min_t, H, K, C=C, BK=BK, ACC=acc,
            **stages._cfg("d_bwd_local", num_warps=4),
        )  # fmt: skip
        stages._record("d_bwd_local", _c)
        _c = _d_bwd_scan_kernel[(h0_shape[0] * H,)](
            k, p, g0, lam, gh0, cu, offs, c_t, H, K, C=C, BK=BK, ACC=acc,
            **stages._cfg("d_bwd_scan", num_warps=_SCAN_WARPS[C], num_stages=stages._stages(k.dtype)),
        )  # fmt: skip
        stages._record("d_bwd_scan", _c)
        _c = _d_bwd_grads_kernel[(NC, H)](
            k, beta, gd, h_raw, ucoef, ai, lam, gk, gb, bounds, c_t, d_min_t, H, K, C=C, BK=BK, ACC=acc,
            **stages._cfg("d_bwd_grads", num_warps=4),
        )  # fmt: skip
        stages._record("d_bwd_grads", _c)
        return gk, gb, (gh0 if ctx.needs_input_grad[2] else None), None, None, None, None, None


def d_ratio_scan(
    k,
    beta,
    *,
    c: float,
    d_init,
    d_min: float,
    cu_seqlens=None,
    chunk_size: int = 64,
    validate=True,
    detach: bool = False,
):
    """``d`` of shape ``[B, T, H, K]`` (dtype of ``k``) from the ratio rule; see the module docstring.

    Args:
        k: keys of shape ``[B, T, H, K]`` (contiguous; CUDA, or CPU under the Triton interpreter).
        beta: write strengths of shape ``[B, T, H]`` in (0, 1], dtype and device of ``k``.
        c: normalized step in (0, 2).
        d_init: ``d_1``: a positive number, or a tensor broadcastable to ``[N, H, K]`` (``N`` sequences:
            ``B``, or the number of packed sequences), e.g. ``[K]`` or ``[H, K]``.
        d_min: read-out floor ``> 0``.
        cu_seqlens: optional ``[N + 1]`` packed-sequence offsets (integer tensor, ``B = 1``). Default ``None``.
        chunk_size: chunk size of the scan, one of 16, 32, 64 (default 64).
        validate: check ``β ∈ (0, 1]`` and finite keys, as :func:`chunk_osdn` does (``True``: in the first
            kernel, reported without a host synchronisation; ``"sync"``: at the call; ``False``: not checked).
        detach: ``False`` (default): ``d`` is differentiable with respect to ``k``, ``β`` and a ``d_init``
            tensor when they require gradients (exact gradients through the rule and its read-out floor, by a
            reverse scan); ``True``: ``d`` is detached (a constant of the keys).
    """
    validate = check_validate(validate)
    if not isinstance(detach, bool):
        raise ValueError(f"detach: expected a bool, got {type(detach).__name__} {detach!r}")
    _checks.poll()
    k = check_keys(k)
    B, T, H, K = k.shape
    beta = check_like("beta", beta, k, [B, T, H], "[B, T, H]", contiguous=False)
    c = check_scalar("c", c, 0.0, 2.0, lo_open=True, hi_open=True)
    d_min = check_scalar("d_min", d_min, 0.0, None, lo_open=True)
    d_init = _check_d_init(d_init)
    chunk_size = check_chunk_size(chunk_size)
    cu_seqlens, N = check_cu_seqlens(cu_seqlens, B, T, k.device)
    if isinstance(d_init, torch.Tensor):
        try:
            torch.broadcast_shapes(tuple(d_init.shape), (N, H, K))
            ok = d_init.ndim <= 3
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"d_init: expected a shape broadcastable to [N, H, K] = {[N, H, K]}, got {tuple(d_init.shape)}"
            )
    from .chunk import _chunk_tables

    f = stages.wide_dtype(k.dtype)
    if isinstance(d_init, torch.Tensor):
        h0 = torch.broadcast_to(d_init.to(dtype=f, device=k.device), (N, H, K)).contiguous()
    else:  # a fill on the device: a host-to-device copy of the number would wait for the queued work
        h0 = torch.full((N, H, K), d_init, dtype=f, device=k.device)
    tables = _chunk_tables(cu_seqlens, B, T, chunk_size, k.device)
    flag = _checks.new_flag(validate, k.device)
    kf = k.reshape(B * T, H, K)
    bf = beta.reshape(B * T, H).contiguous()
    grad = (
        not detach and torch.is_grad_enabled() and (k.requires_grad or beta.requires_grad or h0.requires_grad)
    )
    if grad:
        d = _RatioScan.apply(kf, bf, h0, c, d_min, chunk_size, tables, flag)
    else:
        d, _ = _scan_forward(kf.detach(), bf.detach(), h0.detach(), c, d_min, chunk_size, tables, flag, False)
    _checks.report(flag, "d_ratio_scan", dict(k=k, beta=beta), sync=validate == "sync")
    return d.reshape(B, T, H, K)


@dataclass(frozen=True)
class DRule:
    """Compute ``d`` inside :func:`chunk_osdn` from the keys by the spec's state-free rule.

    Attributes:
        rule: only ``"ratio"`` (the default rule of spec §5) runs in the kernel path.
        c: normalized step in (0, 2): ``1 − s_new = (1 − c)(1 − s_old)`` on the current key. Default 0.5.
        d_init: ``d_1``; a positive scalar or a tensor of shape ``[K]``, ``[H, K]`` or ``[N, H, K]``.
            Default 1.0.
        d_min: read-out floor ``d_t ← max(d_t, d_min)`` keeping ``d > 0``; default 1e-4.
        chunk_size: chunk size of the d scan, one of 16, 32, 64, or ``None`` (the chunk size given to
            :func:`chunk_osdn` / :meth:`compute`). Default 32: the whole scan took 0.436 ms at 32 against 0.483 at
            64 and 0.486 at 16 on an H200 (bf16, B=4, T=4096, H=16, K=128). The scan's chunk size changes only
            its speed and round-off.
        detach: ``False`` (default): gradients flow through the rule into ``k``, ``β`` (and a ``d_init``
            tensor that requires them), so a model learns through it; ``True``: ``d`` is a constant of the keys,
            like an optimizer's preconditioner state.
    """

    rule: str = "ratio"
    c: float = 0.5
    d_init: float | torch.Tensor = 1.0
    d_min: float = 1e-4
    chunk_size: int | None = 32
    detach: bool = False

    def __post_init__(self):
        check_choice("rule", self.rule, ["ratio"])
        check_scalar("c", self.c, 0.0, 2.0, lo_open=True, hi_open=True)
        check_scalar("d_min", self.d_min, 0.0, None, lo_open=True)
        _check_d_init(self.d_init)
        if self.chunk_size is not None:
            object.__setattr__(self, "chunk_size", check_chunk_size(self.chunk_size))
        if not isinstance(self.detach, bool):
            raise ValueError(f"detach: expected a bool, got {type(self.detach).__name__} {self.detach!r}")

    def compute(
        self,
        k: torch.Tensor,
        beta: torch.Tensor,
        *,
        cu_seqlens=None,
        chunk_size: int = 64,
        validate=True,
    ):
        """``d: [B, T, H, K]`` (dtype of ``k``; detached if :attr:`detach`) for keys ``k: [B, T, H, K]`` and
        ``beta: [B, T, H]``; the arguments are those of :func:`d_ratio_scan` (which checks them). The scan runs
        with chunk size :attr:`chunk_size` if set, else ``chunk_size``."""
        return d_ratio_scan(
            k,
            beta,
            c=self.c,
            d_init=self.d_init,
            d_min=self.d_min,
            cu_seqlens=cu_seqlens,
            chunk_size=self.chunk_size or chunk_size,
            validate=validate,
            detach=self.detach,
        )
