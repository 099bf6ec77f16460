"""Stage 3: the inter-chunk recurrence, start state ``h_n`` of each chunk and ``U = Ũ − W h_n`` — kernel,
launcher :func:`state_pass`, torch twin :func:`state_pass_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import _block, _bv, _last, _mm, _pass_stages, _rows, _store_rows, fma_dots, wide_dtype
from .config import DEFAULT_LAUNCH, Launch

__all__ = ["state_pass", "state_pass_ref"]


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


def state_pass(
    kt,
    w,
    u,
    g,
    h0,
    cu_seqlens,
    chunk_offsets,
    NC,
    C,
    output_final_state,
    inter_dtype=None,
    launch: Launch = DEFAULT_LAUNCH,
):
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
    bv = _bv(V, S * H, launch.gpu())
    es = kt.element_size()
    nst = _pass_stages(kt.dtype, bv, C * (2 * BK + bv) * es)  # per chunk: rows of W and k̃, a block of Ũ
    warps = 4
    if fma_dots(kt.dtype):  # float32: a 2.6 KB (K = 64) and 12 KB (K = 128) stack frame at 4 warps; ≤ 0.3 KB
        bv, warps = 16, 8
    cfg = launch.cfg("state", kt.dtype, BV=bv, num_stages=nst, num_warps=warps, KSPLIT=False)
    if BK < 32:
        cfg["KSPLIT"] = False  # halves below 16 rows are not a dot shape
    _c = _state_kernel[(triton.cdiv(V, cfg["BV"]), S * H)](
        kt, w, u, g if g is not None else u, h0 if h0 is not None else h, h, vnew, ht if ht is not None else h,
        cu_seqlens, chunk_offsets, H, K, V,
        C=C, BK=BK, GATED=g is not None, USE_H0=h0 is not None,
        STORE_HT=output_final_state, **cfg,
    )  # fmt: skip
    launch.note("state", _c, cfg)
    return h, vnew, ht


def state_pass_ref(kt, w, u, g, h0, cu_seqlens, C):
    """Stage 3 twin: chunk start states ``h [NC, H, K, V]``, ``v_new [N, H, V]`` and final states ``[S, H, K, V]``."""
    N, H, K = kt.shape
    V = u.shape[-1]
    hs, vnew, finals = [], torch.zeros_like(u), []
    cu = cu_seqlens.tolist()
    for s in range(len(cu) - 1):
        M = torch.zeros(H, K, V, dtype=kt.dtype, device=kt.device) if h0 is None else h0[s].clone()
        for t0 in range(cu[s], cu[s + 1], C):
            t1 = min(t0 + C, cu[s + 1])
            hs.append(M.clone())
            U = u[t0:t1].transpose(0, 1) - w[t0:t1].transpose(0, 1) @ M  # [H, n, V]
            vnew[t0:t1] = U.transpose(0, 1)
            ktc = kt[t0:t1].transpose(0, 1)
            if g is not None:
                gc = g[t0:t1].transpose(0, 1)
                ktc = ktc * torch.exp(gc[:, -1:] - gc)[..., None]
                M = M * torch.exp(gc[:, -1])[:, None, None]
            M = M + ktc.transpose(-1, -2) @ U
        finals.append(M)
    return torch.stack(hs), vnew, torch.stack(finals)
