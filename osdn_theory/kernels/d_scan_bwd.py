"""The d rule's backward (the adjoint recurrence of the scan in chunk form, see :mod:`.drule`): three kernels and
their launcher :func:`d_scan_backward`. It has no stage twin; it is tested through every gradient against
float64 autograd of the token loop (``tests/test_kernels_drule.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import _block, _chunk_rows, _rows, _stages, _store_rows, _warps, acc_dtype
from .config import DEFAULT_LAUNCH, Launch
from .d_scan import _SCAN_WARPS, _seg_init, _seg_store, _seg_update, seg_carry

__all__ = ["d_scan_backward"]


@triton.jit
def _bwd_chunk(
    k, beta, gd, h_raw, ai, t, rmask, c, d_min, K, C: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr
):
    """Rows ``t`` of one chunk for the backward, in ``ACC``: key ``k``, ``û``, ``‖u‖`` (1 where ``u = 0``),
    ``β``, value ``b``, strength, unfloored ``d`` (``h``), the floored-out gradient ``G̃``, ``A⁻¹`` and
    ``Σ_{j>i} G̃_j``."""
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    kk = _rows(k, t, rmask, K, ok, K, ACC)
    u = kk * kk
    nrm = tl.sqrt(tl.sum(u * u, 1))
    pos = nrm > 0
    safe = tl.where(pos, nrm, 1.0)
    uh = u / safe[:, None]
    bt = tl.load(beta + t, mask=rmask, other=1.0).to(ACC)
    bval = tl.where(pos, 1.0 / (bt * safe), 0.0)
    cs = tl.where(pos, c, 0.0)
    hr = _rows(h_raw, t, rmask, K, ok, K, ACC)
    G = tl.where(hr >= d_min, _rows(gd, t, rmask, K, ok, K, ACC), 0.0)
    Ai = _rows(ai, t, rmask, C, oc, C, ACC)  # rows r, columns j: (A⁻¹)_{rj}
    S_ex = tl.cumsum(G, 0, reverse=True) - G
    return kk, uh, safe, pos, bt, bval, cs, hr, G, Ai, S_ex


@triton.jit
def _adjoint_rows(k, p, t, rmask, c, K, ok, ACC: tl.constexpr):
    """Rows of one chunk's adjoint map ``λ ← (I − Xᵀ P) λ + g₀``: ``X_i = c u_i / ‖u_i‖`` (``u = k⊙k``; 0 where
    ``u = 0``) and ``P`` (stored by ``_d_bwd_local_kernel``), both ``[C, BK]`` in ``ACC``."""
    kk = _rows(k, t, rmask, K, ok, K, ACC)
    u = kk * kk
    nrm = tl.sqrt(tl.sum(u * u, 1))
    X = tl.where(nrm > 0, c / tl.where(nrm > 0, nrm, 1.0), 0.0)[:, None] * u
    return X, _rows(p, t, rmask, K, ok, K, ACC)


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
    oc, rmask, t, _ = _chunk_rows(bounds, i_c, i_h, H, C)
    ok = tl.arange(0, BK)
    c = tl.load(c_ptr).to(ACC)
    d_min = tl.load(d_min_ptr).to(ACC)
    kk, uh, safe, pos, bt, bval, cs, hr, G, Ai, S_ex = _bwd_chunk(
        k, beta, gd, h_raw, ai, t, rmask, c, d_min, K, C, BK, ACC
    )
    r = tl.sum(uh * S_ex, 1)
    x0 = tl.sum(Ai * r[:, None], 0)
    P = tl.dot(tl.trans(Ai), uh, input_precision="ieee", out_dtype=ACC)
    _store_rows(p_out, P, t, rmask, K, ok, K)
    g0 = tl.sum(G, 0) - tl.sum((cs * x0)[:, None] * uh, 0)
    tl.store(g0_out + (i_c.to(tl.int64) * H + i_h) * K + ok, g0, mask=ok < K)


@triton.jit
def _d_bwd_scan_kernel(
    k, p, g0, lam_out, gh0_out, cu_seqlens, chunk_offsets, c_ptr, lam0,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, ACC: tl.constexpr, USE_LAM0: tl.constexpr = False,
):  # fmt: skip
    """Backward, part 2 (one program per sequence and head, chunks in reverse): carries the ``K``-vector
    adjoint ``λ`` through the chunk maps of part 1, stores the ``λ_C`` entering each chunk (from the next one)
    and ``λ_1`` (the gradient of ``d_init``). Segment-parallel (``cu_seqlens`` and ``chunk_offsets`` of the
    segments), ``λ`` starts from ``lam0`` (the adjoint entering each segment from its right) with ``USE_LAM0``."""
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    Tn = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    boc = tl.load(chunk_offsets + i_n).to(tl.int64)
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    c = tl.load(c_ptr).to(ACC)
    lam = tl.zeros([BK], dtype=ACC)
    if USE_LAM0:
        lam += tl.load(lam0 + i_nh.to(tl.int64) * K + ok, mask=ok < K, other=0.0).to(ACC)
    nt = tl.cdiv(Tn, C)
    for i in range(nt):
        n = nt - 1 - i
        rmask = oc < Tn - n * C
        t = (bos + n * C + oc) * H + i_h
        X, Pt = _adjoint_rows(k, p, t, rmask, c, K, ok, ACC)
        ci = ((boc + n) * H + i_h) * K
        tl.store(lam_out + ci + ok, lam.to(lam_out.dtype.element_ty), mask=ok < K)
        xl = tl.sum(Pt * lam[None, :], 1)
        lam += tl.load(g0 + ci + ok, mask=ok < K, other=0.0).to(ACC) - tl.sum(X * xl[:, None], 0)
    tl.store(gh0_out + i_nh.to(tl.int64) * K + ok, lam.to(gh0_out.dtype.element_ty), mask=ok < K)


@triton.jit
def _d_bwd_seg_map_kernel(
    k, p, g0, seg_cu, chunk0, c_ptr, m_out, r_out,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Segment-parallel adjoint scan, part 1 (one program per column block × segment·head): the segment's affine
    map of the adjoint, ``λ_start = M λ_end + r``, composed from the chunk maps of ``_d_bwd_local_kernel``
    (``λ ← (I − Xᵀ P) λ + g₀`` with rows ``X_i = c u_i / ‖u_i‖``), last chunk first."""
    i_v, i_sh = tl.program_id(0), tl.program_id(1)
    i_s, i_h = i_sh // H, i_sh % H
    bos = tl.load(seg_cu + i_s).to(tl.int64)
    Tn = tl.load(seg_cu + i_s + 1).to(tl.int64) - bos
    boc = tl.load(chunk0 + i_s).to(tl.int64)
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    ov = i_v * BV + tl.arange(0, BV)
    c = tl.load(c_ptr).to(ACC)
    M, r = _seg_init(ok, ov, BK, ACC)
    nt = tl.cdiv(Tn, C)
    for i in range(nt):
        n = nt - 1 - i
        rmask = oc < Tn - n * C
        t = (bos + n * C + oc) * H + i_h
        X, Y = _adjoint_rows(k, p, t, rmask, c, K, ok, ACC)
        z = tl.load(g0 + ((boc + n) * H + i_h) * K + ok, mask=ok < K, other=0.0).to(ACC)
        M, r = _seg_update(M, r, X, Y, z, ACC, IEEE)
    _seg_store(M, r, m_out, r_out, i_sh, i_v, ok, ov, K)


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
    oc, rmask, t, _ = _chunk_rows(bounds, i_c, i_h, H, C)
    ok = tl.arange(0, BK)
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
    _store_rows(gk_out, 2.0 * kk * g_u, t, rmask, K, ok, K)
    tl.store(gb_out + t, tl.where(pos, -bval * xc / bt, 0.0).to(gb_out.dtype.element_ty), mask=rmask)


def d_scan_backward(gd, saved, C, tables, h0_shape, need_dh0, launch: Launch = DEFAULT_LAUNCH, segs=None):
    """The gradient of the rule's ``d`` (``gd: [N, H, K]``) with respect to ``k``, ``β`` and the initial
    state ``d_init`` (``None`` unless ``need_dh0``), from what the forward scan saved: ``saved = (k, β, A⁻¹,
    unfloored d, update coefficients, c, d_min)``. Three launches: the chunk maps of the adjoint (parallel),
    the reverse scan of the ``K``-vector adjoint over the chunks (one program per sequence and head), the
    token gradients (parallel)."""
    k, beta, ai, h_raw, ucoef, c_t, d_min_t = saved
    cu, offs, bounds, NC = tables
    N, H, K = k.shape
    f = ai.dtype
    BK = _block(K)
    p = torch.empty(N, H, K, dtype=f, device=k.device)
    g0 = torch.empty(NC, H, K, dtype=f, device=k.device)
    lam = torch.empty(NC, H, K, dtype=f, device=k.device)
    gk = torch.empty_like(k)
    gb = torch.empty_like(beta)
    gh0 = torch.empty(h0_shape, dtype=f, device=k.device)
    acc = acc_dtype(f)
    cfg = launch.cfg("d_bwd_local", num_warps=4)
    _c = _d_bwd_local_kernel[(NC, H)](
        k, beta, gd, h_raw, ai, p, g0, bounds, c_t, d_min_t, H, K, C=C, BK=BK, ACC=acc,
        **cfg,
    )  # fmt: skip
    launch.note("d_bwd_local", _c, cfg)
    lam0, nprog, gh0_seg = None, h0_shape[0], gh0
    if segs is not None:
        seg_cu, seg_offs, chunk0, NS = segs
        m = torch.empty(NS, H, K, K, dtype=f, device=k.device)
        r = torch.empty(NS, H, K, dtype=f, device=k.device)
        cfg = launch.cfg("d_bwd_seg_map", k.dtype, BV=_block(K, 64), num_warps=_warps(8))
        _c = _d_bwd_seg_map_kernel[(triton.cdiv(K, cfg["BV"]), NS * H)](
            k, p, g0, seg_cu, chunk0, c_t, m, r, H, K, C=C, BK=BK, **cfg
        )  # fmt: skip
        launch.note("d_bwd_seg_map", _c, cfg)
        lam0 = seg_carry(m, r, torch.zeros(h0_shape, dtype=f, device=k.device), seg_offs, True, launch)
        cu, offs, nprog = seg_cu, chunk0, NS
        gh0_seg = torch.empty(NS, H, K, dtype=f, device=k.device)
    cfg = launch.cfg("d_bwd_scan", num_warps=_SCAN_WARPS[C], num_stages=_stages(k.dtype))
    _c = _d_bwd_scan_kernel[(nprog * H,)](
        k, p, g0, lam, gh0_seg, cu, offs, c_t, lam0 if lam0 is not None else g0, H, K, C=C, BK=BK, ACC=acc,
        USE_LAM0=lam0 is not None, **cfg,
    )  # fmt: skip
    launch.note("d_bwd_scan", _c, cfg)
    if segs is not None and need_dh0:  # λ_1 of a sequence: what its first segment's reverse scan ended with
        gh0 = gh0_seg[seg_offs[:-1].long()]
    cfg = launch.cfg("d_bwd_grads", num_warps=4)
    _c = _d_bwd_grads_kernel[(NC, H)](
        k, beta, gd, h_raw, ucoef, ai, lam, gk, gb, bounds, c_t, d_min_t, H, K, C=C, BK=BK, ACC=acc,
        **cfg,
    )  # fmt: skip
    launch.note("d_bwd_grads", _c, cfg)
    return gk, gb, (gh0 if need_dh0 else None)
