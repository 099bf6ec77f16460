"""Backward stage b2: the reverse state recurrence (``dh`` per chunk, ``dU``, the initial state's gradient) —
kernel, launcher :func:`dh_pass`, torch twin :func:`dh_pass_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    _block,
    _bv,
    _last,
    _mm,
    _pass_stages,
    _rows,
    _store_rows,
    fma_dots,
    heads_first,
    wide_dtype,
)
from .config import DEFAULT_LAUNCH, Launch

__all__ = ["dh_pass", "dh_pass_ref"]


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


def dh_pass(
    q,
    kt,
    w,
    g,
    do,
    dvl,
    dht,
    cu_seqlens,
    chunk_offsets,
    NC,
    scale,
    C,
    need_dh0,
    inter_dtype=None,
    launch: Launch = DEFAULT_LAUNCH,
):
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
    bv = _bv(V, S * H, launch.gpu())
    BK = _block(K)
    nst = min(3, _pass_stages(q.dtype, bv, C * (3 * BK + 2 * bv) * q.element_size()))  # q, k̃, W; dO, dv
    # 8 warps pay only with wide V blocks: 16 sequence·heads (V block 16) took 0.510 ms at 4 warps, 0.557 at 8
    warps = 8 if K > 64 and bv >= 32 else 4
    if fma_dots(q.dtype):  # float32: up to 13 KB stack frame with the 16-bit rule; ≤ 0.4 KB here
        bv, warps = 16, 8
    cfg = launch.cfg("dh", q.dtype, BV=bv, num_stages=nst, num_warps=warps)
    _c = _dh_kernel[(triton.cdiv(V, cfg["BV"]), S * H)](
        q, kt, w, g if g is not None else q, do, dvl, dht if dht is not None else dh, dh, du,
        dh0 if dh0 is not None else dh, cu_seqlens, chunk_offsets, float(scale), H, K, V,
        C=C, BK=BK, GATED=g is not None, USE_DHT=dht is not None,
        STORE_DH0=need_dh0, **cfg,
    )  # fmt: skip
    launch.note("dh", _c, cfg)
    return dh, du, dh0


def dh_pass_ref(q, kt, w, g, do, dvl, dht, cu_seqlens, scale, C):
    """b2 twin, the reverse state recurrence: ``dh [NC, H, K, V]`` (gradient w.r.t. the state after each chunk),
    ``dU [N, H, V]`` and the gradient w.r.t. each sequence's initial state ``[S, H, K, V]``."""
    N, H, K = q.shape
    V = do.shape[-1]
    dhs, du, d0 = [], torch.zeros_like(do), []
    cu = cu_seqlens.tolist()
    for s in range(len(cu) - 1):
        dM = torch.zeros(H, K, V, dtype=q.dtype, device=q.device) if dht is None else dht[s].clone()
        starts = list(range(cu[s], cu[s + 1], C))
        per = [None] * len(starts)
        for j in reversed(range(len(starts))):
            t0, t1 = starts[j], min(starts[j] + C, cu[s + 1])
            per[j] = dM.clone()
            qc, ktc = heads_first(q, t0, t1), heads_first(kt, t0, t1)
            if g is not None:
                gc = heads_first(g, t0, t1)
                ktc = ktc * torch.exp(gc[:, -1:] - gc)[..., None]
                qc = qc * torch.exp(gc)[..., None]
            dU = heads_first(dvl, t0, t1) + ktc @ dM
            du[t0:t1] = dU.transpose(0, 1)
            if g is not None:
                dM = dM * torch.exp(gc[:, -1])[:, None, None]
            dM = (
                dM
                + scale * qc.transpose(-1, -2) @ heads_first(do, t0, t1)
                - heads_first(w, t0, t1).transpose(-1, -2) @ dU
            )
        dhs += per
        d0.append(dM)
    return torch.stack(dhs), du, torch.stack(d0)
