"""Backward stage b4: gradients through the WY factors, the triangular solve, the Gram matrix, the decay and
the write key — kernel, launcher :func:`bwd_wy`, torch twin :func:`bwd_wy_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    INTERPRET,
    _block,
    _chunk_rows,
    _decay,
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

__all__ = ["bwd_wy", "bwd_wy_ref"]


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
    oc, rmask, t, _ = _chunk_rows(bounds, i_c, i_h, H, C)
    DT: tl.constexpr = k.dtype.element_ty
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


def bwd_wy(k, d, c, kt, v, beta, g, ai, dw, du, dkt, dg, bounds, C, launch: Launch = DEFAULT_LAUNCH):
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
    fma = fma_dots(k.dtype)
    # float32: 32 registers and a 10-11 KB stack frame at 4 warps (sm_90, triton 3.6), 1.6 ms a call at the
    # recall lab's shape on an H100; 8 warps with 32-wide blocks leave 0.4 KB
    cfg = launch.cfg(
        "bwd_wy",
        k.dtype,
        BK=min(_bk_wy(K, launch.gpu()), 32) if fma else _bk_wy(K, launch.gpu()),
        BV=_block(V, 32 if fma else 64),
        num_stages=_stages(k.dtype),
        num_warps=8 if fma else 4,
    )
    _c = _bwd_wy_kernel[(bounds.shape[0], H)](
        k, d if d is not None else k, c if c is not None else db, kt, v, beta, g if g is not None else db, ai,
        dw, du, dkt, dg if dg is not None else db, dk, dd if dd is not None else dk, dv, db,
        dla if dla is not None else db, bounds, H, K, V,
        C=C, HAS_D=d is not None, CLIP=c is not None, GATED=g is not None, **cfg,
    )  # fmt: skip
    launch.note("bwd_wy", _c, cfg)
    return dk, dd, dv, db, dla


def bwd_wy_ref(k, d, c, kt, v, beta, g, ai, dw, du, dkt, dg, bounds, C):
    """b4 twin: gradients through the WY factors, the solve, the Gram matrix, the decay and the write key
    ``k̃ = c · d ⊙ k`` (with the clip ``c = min(1, s_max / s_raw)``, ``s_raw = β Σ d k²``): ``(dk, dd or None,
    dv, dβ, d log α or None)``; ``dkt`` and ``dg`` are the partial gradients from :func:`bwd_dqk_ref`."""
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    dd = torch.zeros_like(k) if d is not None else None
    db = torch.zeros_like(beta)
    dla = torch.zeros_like(beta) if g is not None else None
    for _, t0, t1 in chunk_rows(bounds, C):
        n = t1 - t0
        kc, ktc, vc, dW, dU, dKt0 = (heads_first(x, t0, t1) for x in (k, kt, v, dw, du, dkt))
        b = heads_first(beta, t0, t1)  # [H, n]
        dc_ = heads_first(d, t0, t1) if d is not None else torch.ones_like(kc)
        Ai = heads_first(ai, t0, t1)[..., :n]
        Tm = Ai * b[:, None, :]
        kg = kc
        if g is not None:
            gc = heads_first(g, t0, t1)
            kg = kc * torch.exp(gc)[..., None]
        dT = dW @ kg.transpose(-1, -2) + dU @ vc.transpose(-1, -2)
        G = kc @ ktc.transpose(-1, -2)
        dv[t0:t1] = (Tm.transpose(-1, -2) @ dU).transpose(0, 1)
        dbc = (dT * Ai).sum(-2)
        dA = -Ai.transpose(-1, -2) @ (dT * b[:, None, :]) @ Ai.transpose(-1, -2)
        dL = dA.tril(-1)
        if g is not None:
            G = G * decay_ref(gc, True)
        dbc = dbc + (dL * G).sum(-1)
        dGe = dL * b[..., None]
        if g is not None:
            Z2 = dGe * G
            dgk = ((Tm.transpose(-1, -2) @ dW) * kg).sum(-1)
            dgt = heads_first(dg, t0, t1) + dgk + Z2.sum(-1) - Z2.sum(-2)
            dla[t0:t1] = dgt.flip(-1).cumsum(-1).flip(-1).transpose(0, 1)
            dGe = dGe * decay_ref(gc, True)
        dKt = dKt0 + dGe.transpose(-1, -2) @ kc
        cc = torch.ones_like(b) if c is None else heads_first(c, t0, t1)
        gam = torch.zeros_like(b)
        if c is not None:
            dsum = (dc_ * kc * kc).sum(-1)
            dcl = (dKt * dc_ * kc).sum(-1)
            s_raw = b * dsum
            gam = torch.where(cc < 1.0, -dcl * cc / torch.where(cc < 1.0, s_raw, 1.0), 0.0)
            dbc = dbc + gam * dsum
        dKg = Tm.transpose(-1, -2) @ dW
        if g is not None:
            dKg = dKg * torch.exp(gc)[..., None]
        dK = dKg + dGe @ ktc + cc[..., None] * dc_ * dKt + (2.0 * gam * b)[..., None] * dc_ * kc
        dk[t0:t1] = dK.transpose(0, 1)
        if d is not None:
            dd[t0:t1] = (cc[..., None] * kc * dKt + (gam * b)[..., None] * kc * kc).transpose(0, 1)
        db[t0:t1] = dbc.transpose(0, 1)
    return dk, dd, dv, db, dla
