"""Backward stage b3: gradients through the reads (``dq``, ``dW``, the score and state parts of ``dk̃``, the
decay terms of ``dg``) — kernel, launcher :func:`bwd_dqk`, torch twin :func:`bwd_dqk_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    _block,
    _chunk_rows,
    _decay,
    _last,
    _mm,
    _rows,
    _stages,
    _store_rows,
    chunk_rows,
    decay_ref,
    fma_dots,
    heads_first,
    wide_dtype,
)
from .config import DEFAULT_LAUNCH, Launch

__all__ = ["bwd_dqk", "bwd_dqk_ref"]


@triton.jit
def _bwd_dqk_kernel(
    q, kt, g, vnew, h, do, dh, du, dq_out, dkt_out, dw_out, dg_out, bounds, scale,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr,
    ACC: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    oc, rmask, t, nv = _chunk_rows(bounds, i_c, i_h, H, C)
    DT: tl.constexpr = q.dtype.element_ty
    ok = tl.arange(0, BK)
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


def bwd_dqk(q, kt, g, vnew, h, do, dh, du, bounds, scale, C, launch: Launch = DEFAULT_LAUNCH):
    """Gradients through the reads: ``dq`` (complete) and ``dW`` in the input dtype; partial ``dk̃`` and ``dg``
    in fp32/fp64."""
    N, H, K = q.shape
    V = do.shape[-1]
    f = wide_dtype(q.dtype)
    dq = torch.empty(N, H, K, device=q.device, dtype=q.dtype)
    dkt = torch.empty(N, H, K, device=q.device, dtype=f)
    dw = torch.empty(N, H, K, device=q.device, dtype=q.dtype)  # only ever used as a dot operand
    dg = torch.empty(N, H, device=q.device, dtype=f) if g is not None else None
    fma = fma_dots(q.dtype)
    cfg = launch.cfg(
        "bwd_dqk",
        q.dtype,
        BV=_block(V, 32 if fma else 64),
        num_stages=_stages(q.dtype),
        # float32: 0.2-12 KB stack frame with the 16-bit rule (K = 32-128); 0-0.7 KB with 8 warps, V block 32
        num_warps=8 if fma or K > 64 else 4,
    )
    _c = _bwd_dqk_kernel[(bounds.shape[0], H)](
        q, kt, g if g is not None else q, vnew, h, do, dh, du, dq, dkt, dw, dg if dg is not None else dq,
        bounds, float(scale), H, K, V,
        C=C, BK=_block(K), GATED=g is not None, **cfg,
    )  # fmt: skip
    launch.note("bwd_dqk", _c, cfg)
    return dq, dkt, dw, dg


def bwd_dqk_ref(q, kt, g, vnew, h, do, dh, du, bounds, scale, C):
    """b3 twin: ``dq``; the score and state-read parts of ``dk̃``; ``dW = −dU h_nᵀ``; with a gate, the decay
    terms of ``dg`` (else ``None``). ``h, dh: [NC, H, K, V]`` (start state and end-state gradient per chunk)."""
    dq, dkt, dw = torch.zeros_like(q), torch.zeros_like(q), torch.zeros_like(q)
    dg = torch.zeros_like(q[..., 0]) if g is not None else None
    for i, t0, t1 in chunk_rows(bounds, C):
        M, dM = h[i], dh[i]
        qc, ktc, U, dO, dU = (heads_first(x, t0, t1) for x in (q, kt, vnew, do, du))
        dQ = dO @ M.transpose(-1, -2)
        dKe = U @ dM.transpose(-1, -2)
        dW = -dU @ M.transpose(-1, -2)
        dP = dO @ U.transpose(-1, -2)
        S = qc @ ktc.transpose(-1, -2)
        if g is not None:
            gc = heads_first(g, t0, t1)
            dP = scale * dP * decay_ref(gc, False)
            dQ = scale * dQ * torch.exp(gc)[..., None]
            ke = torch.exp(gc[:, -1:] - gc)
            Z = dP * S
            Y = (dKe * ktc).sum(-1) * ke
            dgc = (qc * dQ).sum(-1) + Z.sum(-1) - Z.sum(-2) - Y
            dgc[:, -1] += Y.sum(-1) + torch.exp(gc[:, -1]) * (M * dM).sum((-1, -2))
            dg[t0:t1] = dgc.transpose(0, 1)
            dKe = dKe * ke[..., None]
        else:
            dP = scale * dP.tril()
            dQ = scale * dQ
        dq[t0:t1] = (dQ + dP @ ktc).transpose(0, 1)
        dkt[t0:t1] = (dKe + dP.transpose(-1, -2) @ qc).transpose(0, 1)
        dw[t0:t1] = dW.transpose(0, 1)
    return dq, dkt, dw, dg
