"""The d rule's forward (see :mod:`.drule` for the rule): the preparation kernel (key ``û``, strength, value), stages
1–2 of the chunk pipeline on them, and the scan kernel that carries the ``K``-vector state through the chunks —
kernels, launcher :func:`scan_forward` and the scan's torch twin :func:`d_scan_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    BAD_BETA,
    BAD_K,
    _block,
    _chunk_rows,
    _flag,
    _mm,
    _nonfinite,
    _or,
    _or_all,
    _rows,
    _stages,
    _store_rows,
    _warps,
    acc_dtype,
    wide_dtype,
)
from .config import DEFAULT_LAUNCH, Launch
from .gram_solve import gram_solve
from .wy_factors import wy_factors

__all__ = ["rule_factors", "scan_chunks", "scan_forward", "seg_carry", "d_scan_ref"]


_VPAD = 16


#: Warps of the scan kernel by chunk size (one program per sequence and head, so few programs run at once).
#: H200, B=4, T=4096, H=16, K=128, bf16, whole d_ratio_scan in ms for warps 2/4/8 (tune run 8b, results
#: file above): C=16: 0.486/0.527/0.753; C=32: 0.725/0.436/0.526; C=64: 6.47/0.623/0.486 (at C=64 fewer
#: warps spill).
_SCAN_WARPS = {16: 2, 32: 4, 64: 8}


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
        code = _or_all(_nonfinite(kk, m, BAD_K))
        code |= tl.reduce(tl.where(rm & ~((bchk > 0) & (bchk <= 1)), BAD_BETA, 0), 0, _or)
        _flag(flag, code)
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
    uhat, w, ut, h0, d_out, cu_seqlens, d_min_ptr, h_out, u_out, chunk_offs, h_chunks,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, VP: tl.constexpr, ACC: tl.constexpr, STORE_H: tl.constexpr = False,
    SEPARATE: tl.constexpr = False,
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
    chosen; not kept in a results file).

    With ``SEPARATE`` (``Launch(rule_readout="separate")``) the scan writes no ``d``: it stores the state
    entering each chunk in ``h_chunks: [NC, H, K]`` (chunk numbering of :func:`.tables.chunk_tables`, the
    sequence's first chunk in ``chunk_offs``) and ``U`` in ``u_out``, and :func:`_d_readout_kernel` forms ``d``
    in parallel: the cumulative sum over the rows and the ``C × K`` stores leave the sequential path."""
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    Tn = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    h = tl.load(h0 + i_nh.to(tl.int64) * K + ok, mask=ok < K, other=0.0).to(ACC)
    d_min = tl.load(d_min_ptr).to(ACC)  # from memory: a float argument would arrive rounded to fp32
    if SEPARATE:
        c0 = tl.load(chunk_offs + i_n).to(tl.int64)
    W, uu, u0 = _d_scan_tiles(uhat, w, ut, bos, Tn, 0, i_h, H, K, C, BK, VP)
    for n in range(tl.cdiv(Tn, C)):
        W1, uu1, u01 = _d_scan_tiles(uhat, w, ut, bos, Tn, n + 1, i_h, H, K, C, BK, VP)  # next chunk
        U = u0.to(ACC) - tl.sum(W.to(ACC) * h[None, :], 1)  # 0 on masked rows
        inc = U[:, None] * uu.to(ACC)
        t = (bos + n * C + oc) * H + i_h
        if SEPARATE:
            tl.store(h_chunks + ((c0 + n) * H + i_h) * K + ok, h, mask=ok < K)
            tl.store(u_out + t, U.to(u_out.dtype.element_ty), mask=oc < Tn - n * C)
        else:
            D = h[None, :] + tl.cumsum(inc, 0) - inc
            _store_rows(d_out, tl.maximum(D, d_min), t, oc < Tn - n * C, K, ok, K)
            if STORE_H:
                _store_rows(h_out, D, t, oc < Tn - n * C, K, ok, K)
                tl.store(u_out + t, U.to(u_out.dtype.element_ty), mask=oc < Tn - n * C)
        h += tl.sum(inc, 0)
        W, uu, u0 = W1, uu1, u01


@triton.jit
def _d_readout_kernel(
    uhat, u_in, h_chunks, bounds, d_out, d_min_ptr, h_out,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, STORE_H: tl.constexpr = False,
):  # fmt: skip
    """The separate read-out (``Launch(rule_readout="separate")``), one program per chunk and head, all in
    parallel: ``d_r = h + Σ_{i<r} U_i û_i`` from the chunk's entering state and the ``U`` that
    :func:`_d_scan_kernel` stored with ``SEPARATE``, stored floored at ``d_min`` (and unfloored in ``h_out`` with
    ``STORE_H``), the same arithmetic as :func:`_d_scan_kernel`."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    oc, rmask, t, _ = _chunk_rows(bounds, i_c, i_h, H, C)
    ok = tl.arange(0, BK)
    h = tl.load(h_chunks + (i_c.to(tl.int64) * H + i_h) * K + ok, mask=ok < K, other=0.0).to(ACC)
    uu = _rows(uhat, t, rmask, K, ok, K, ACC)
    U = tl.load(u_in + t, mask=rmask, other=0.0).to(ACC)
    inc = U[:, None] * uu
    D = h[None, :] + tl.cumsum(inc, 0) - inc
    d_min = tl.load(d_min_ptr).to(ACC)
    _store_rows(d_out, tl.maximum(D, d_min), t, rmask, K, ok, K)
    if STORE_H:
        _store_rows(h_out, D, t, rmask, K, ok, K)


@triton.jit
def _seg_update(M, r, X, Y, z, ACC: tl.constexpr, IEEE: tl.constexpr):
    """One chunk of a segment map: ``M ← M − Xᵀ (Y M)`` (a ``[BK, BV]`` block of the ``K × K`` map) and
    ``r ← r − Xᵀ (Y r) + z`` (``X, Y: [C, BK]`` and ``M`` in ``ACC``; dots in ``ACC``, i.e. tf32 for 16-bit
    inputs' fp32 maps, IEEE for float32, fp64 for float64)."""
    M -= _mm(tl.trans(X), _mm(Y, M, ACC, ACC, IEEE), ACC, ACC, IEEE)
    r += z - tl.sum(X * tl.sum(Y * r[None, :], 1)[:, None], 0)
    return M, r


@triton.jit
def _seg_init(ok, ov, BK: tl.constexpr, ACC: tl.constexpr):
    """The identity's column block ``ov`` (``M``, ``[BK, BV]``) and ``r = 0``: a segment map before its chunks."""
    return tl.where(ok[:, None] == ov[None, :], 1.0, 0.0).to(ACC), tl.zeros([BK], dtype=ACC)


@triton.jit
def _seg_store(M, r, m_out, r_out, i_sh, i_v, ok, ov, K):
    """Store a segment map's column block into ``m_out: [NS, H, K, K]`` and (column block 0) ``r`` into
    ``r_out: [NS, H, K]``; ``i_sh`` is the segment·head index."""
    base = i_sh.to(tl.int64) * K
    tl.store(m_out + (base + ok[:, None]) * K + ov[None, :], M, mask=(ok[:, None] < K) & (ov[None, :] < K))
    if i_v == 0:
        tl.store(r_out + base + ok, r, mask=ok < K)


@triton.jit
def _d_seg_map_kernel(
    uhat, w, ut, seg_cu, m_out, r_out,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, VP: tl.constexpr, ACC: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    """Segment-parallel scan, part 1 (one program per column block of ``BV`` × segment·head): the segment's
    affine map ``h_end = M h_start + r`` with ``M = Π_n (I − Ûₙᵀ Wₙ)`` (chunks in order) and ``r`` the end
    state from ``h_start = 0``; ``m_out: [NS, H, K, K]``, ``r_out: [NS, H, K]`` (fp32/fp64; ``r`` stored by
    column block 0)."""
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    i_s, i_h = i_sh // H, i_sh % H
    bos = tl.load(seg_cu + i_s).to(tl.int64)
    Tn = tl.load(seg_cu + i_s + 1).to(tl.int64) - bos
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    M, r = _seg_init(ok, ov, BK, ACC)
    for n in range(tl.cdiv(Tn, C)):
        rmask = oc < Tn - n * C
        t = (bos + n * C + oc) * H + i_h
        Y = _rows(w, t, rmask, K, ok, K, ACC)
        X = _rows(uhat, t, rmask, K, ok, K, ACC)
        u0 = tl.load(ut + t * VP, mask=rmask, other=0.0).to(ACC)
        M, r = _seg_update(M, r, X, Y, tl.sum(X * u0[:, None], 0), ACC, IEEE)
    _seg_store(M, r, m_out, r_out, i_sh, i_v, ok, ov, K)


@triton.jit
def _d_seg_carry_kernel(
    m, r, h0, h_out, seg_offs, H, K,
    BK: tl.constexpr, ACC: tl.constexpr, REVERSE: tl.constexpr,
):  # fmt: skip
    """Segment-parallel scan, part 2 (one program per sequence·head): carries the ``K``-vector state through
    the sequence's segment maps (``h ← M h + r``; last segment first with ``REVERSE``), storing the state
    entering each segment in ``h_out: [NS, H, K]``; ``h0: [S, H, K]`` is the state entering the sequence."""
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    s0 = tl.load(seg_offs + i_n)
    ns = tl.load(seg_offs + i_n + 1) - s0
    ok = tl.arange(0, BK)
    km = ok < K
    h = tl.load(h0 + i_nh.to(tl.int64) * K + ok, mask=km, other=0.0).to(ACC)
    for i in range(ns):
        if REVERSE:
            j = s0 + ns - 1 - i
        else:
            j = s0 + i
        base = (j.to(tl.int64) * H + i_h) * K
        tl.store(h_out + base + ok, h, mask=km)
        Mj = tl.load(m + (base + ok[:, None]) * K + ok[None, :], mask=km[:, None] & km[None, :], other=0.0)
        h = tl.sum(Mj.to(ACC) * h[None, :], 1) + tl.load(r + base + ok, mask=km, other=0.0).to(ACC)


def seg_carry(m, r, h0, seg_offs, reverse: bool, launch: Launch = DEFAULT_LAUNCH):
    """Part 2 of the segment-parallel scans (forward and adjoint): the state entering each segment."""
    NS, H, K = r.shape
    h_out = torch.empty_like(r)
    cfg = launch.cfg("d_seg_carry", num_warps=_warps(8))
    _c = _d_seg_carry_kernel[(h0.shape[0] * H,)](
        m, r, h0, h_out, seg_offs, H, K, BK=_block(K), ACC=acc_dtype(r.dtype), REVERSE=reverse, **cfg
    )
    launch.note("d_seg_carry", _c, cfg)
    return h_out


def _seg_starts(uhat, w, ut, h0, segs, C, launch: Launch):
    """Parts 1–2 of the forward's segment-parallel scan: the state ``h`` entering each segment ``[NS, H, K]``."""
    seg_cu, seg_offs, _, NS = segs
    N, H, K = uhat.shape
    f = h0.dtype
    m = torch.empty(NS, H, K, K, dtype=f, device=uhat.device)
    r = torch.empty(NS, H, K, dtype=f, device=uhat.device)
    BK = _block(K)
    cfg = launch.cfg("d_seg_map", uhat.dtype, BV=_block(K, 64), num_warps=_warps(8))
    _c = _d_seg_map_kernel[(triton.cdiv(K, cfg["BV"]), NS * H)](
        uhat, w, ut, seg_cu, m, r, H, K, C=C, BK=BK, VP=_VPAD, **cfg
    )  # fmt: skip
    launch.note("d_seg_map", _c, cfg)
    return seg_carry(m, r, h0, seg_offs, False, launch)


def rule_factors(k, beta, c: float, C: int, tables, flag, launch: Launch = DEFAULT_LAUNCH):
    """The parallel part of the rule on packed ``k: [N, H, K]``, ``beta: [N, H]``: one pass over the keys forms
    the scan's key ``û``, strength and value (in the dtype of ``k``, so the dots use the tensor cores for
    bf16/fp16), then stages 1–2 on them. Returns ``(û, W, Ũ, A⁻¹, c)`` (``c`` as a one-element tensor)."""
    N, H, K = k.shape
    f = wide_dtype(k.dtype)
    uhat = torch.empty_like(k)
    strength = torch.empty(N, H, dtype=k.dtype, device=k.device)
    vals = torch.empty(N, H, _VPAD, dtype=k.dtype, device=k.device)
    R = N * H
    c_t = torch.full((1,), c, dtype=f, device=k.device)
    _d_prep_kernel[(triton.cdiv(R, 32),)](
        k, beta, uhat, strength, vals, c_t, flag if flag is not None else c_t, R, K,
        BR=32, BK=_block(K), VP=_VPAD, ACC=acc_dtype(f), CHECK=flag is not None,
        num_warps=_warps(4),
    )  # fmt: skip
    _, _, bounds, _ = tables
    _, _, _, ai = gram_solve(uhat, None, strength, None, bounds, None, C, launch=launch)
    w, ut = wy_factors(uhat, vals, strength, None, ai, bounds, C, launch=launch)
    return uhat, w, ut, ai, c_t


def scan_chunks(uhat, w, ut, h0, d_min: float, C: int, tables, keep: bool, launch: Launch = DEFAULT_LAUNCH,
                segs=None):  # fmt: skip
    """The sequential part: the scan over the chunks (segment-parallel with ``segs``) of the factors of
    :func:`rule_factors`. Returns ``(d, unfloored d, U, d_min)`` (the middle two only with ``keep``)."""
    N, H, K = uhat.shape
    f = h0.dtype
    d = torch.empty(N, H, K, dtype=uhat.dtype, device=uhat.device)
    # the unfloored d in the wide dtype: its rounding would enter the gradient through b − ûᵀd (cancelling)
    h_raw = torch.empty(N, H, K, dtype=f, device=uhat.device) if keep else d
    ucoef = torch.empty(N, H, dtype=f, device=uhat.device) if keep else d
    d_min_t = torch.full((1,), d_min, dtype=f, device=uhat.device)
    cu, S = tables[0], h0.shape[0]
    separate = launch.rule_readout == "separate"
    if separate and segs is not None:
        raise ValueError(
            "launch: rule_readout='separate' does not combine with the segment-parallel scan "
            "(segment_chunks); use one or the other"
        )
    _, offs, bounds, NC = tables
    # the separate read-out: each chunk's entering state, and U in the wide dtype whether or not the backward
    # keeps it (the read-out reads it back)
    h_chunks = torch.empty(NC, H, K, dtype=f, device=uhat.device) if separate else d
    u_run = ucoef if (keep or not separate) else torch.empty(N, H, dtype=f, device=uhat.device)
    if segs is not None:  # restart the scan in every segment from its entering state
        h0 = _seg_starts(uhat, w, ut, h0, segs, C, launch)
        cu, S = segs[0], segs[3]
    cfg = launch.cfg("d_scan", num_warps=_SCAN_WARPS[C], num_stages=_stages(uhat.dtype))
    _c = _d_scan_kernel[(S * H,)](
        uhat, w, ut, h0, d, cu, d_min_t, h_raw, u_run, offs, h_chunks, H, K,
        C=C, BK=_block(K), VP=_VPAD, ACC=acc_dtype(f), STORE_H=keep, SEPARATE=separate,
        **cfg,
    )  # fmt: skip
    launch.note("d_scan", _c, cfg)
    if separate:
        cfg = launch.cfg("d_readout", num_warps=_warps(4))
        _c = _d_readout_kernel[(NC, H)](
            uhat, u_run, h_chunks, bounds, d, d_min_t, h_raw, H, K, C=C, BK=_block(K), ACC=acc_dtype(f),
            STORE_H=keep, **cfg,
        )  # fmt: skip
        launch.note("d_readout", _c, cfg)
    return d, h_raw, ucoef, d_min_t


def scan_forward(
    k, beta, h0, c: float, d_min: float, C: int, tables, flag, keep: bool, launch: Launch = DEFAULT_LAUNCH,
    segs=None,
):  # fmt: skip
    """The launches of the rule on packed ``k: [N, H, K]``, ``beta: [N, H]``, ``h0: [S, H, K]`` (wide dtype):
    :func:`rule_factors`, then :func:`scan_chunks`. With ``segs`` (:func:`.tables.segment_tables`) the scan runs
    segment-parallel: each segment's affine map (parallel), the state carried across the segments (one program
    per sequence·head, ``K × K`` matrix-vector products), then the chunk scan restarted in every segment
    (parallel). Returns ``d`` and, with ``keep``, what the backward needs: ``(A⁻¹, unfloored d, U, c, d_min)``."""
    uhat, w, ut, ai, c_t = rule_factors(k, beta, c, C, tables, flag, launch)
    d, h_raw, ucoef, d_min_t = scan_chunks(uhat, w, ut, h0, d_min, C, tables, keep, launch, segs)
    return d, ((ai, h_raw, ucoef, c_t, d_min_t) if keep else None)


def d_scan_ref(uhat, w, ut, h0, cu_seqlens, C, d_min):
    """Twin of the d rule's scan kernel: per sequence, the state ``h`` (from ``h0: [S, H, K]``) goes through
    its chunks of ``C`` tokens: ``U = Ũ₀ − W h``, ``d_r = max(h + Σ_{i<r} U_i û_i, d_min)``,
    ``h ← h + Σ_i U_i û_i``. ``uhat, w: [N, H, K]``, ``ut: [N, H, V]`` (column 0 used); returns ``d: [N, H, K]``."""
    d = torch.zeros_like(uhat)
    cu = cu_seqlens.tolist()
    for s in range(len(cu) - 1):
        h = h0[s].clone()  # [H, K]
        for t0 in range(cu[s], cu[s + 1], C):
            t1 = min(t0 + C, cu[s + 1])
            U = ut[t0:t1, :, 0] - (w[t0:t1] * h).sum(-1)  # [n, H]
            inc = U[..., None] * uhat[t0:t1]  # [n, H, K]
            d[t0:t1] = h + torch.cumsum(inc, 0) - inc
            h = h + inc.sum(0)
    return d.clamp_min(d_min)
