"""Stage 2: ``W = A⁻¹ diag(β) diag(e^g) K`` and ``Ũ = A⁻¹ diag(β) V`` (with the value checks of ``k``, ``β``,
``v``; ``d`` is checked by stage 1, which loads it) — kernel, launcher :func:`wy_factors`, torch twin
:func:`wy_factors_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    BAD_BETA,
    BAD_K,
    BAD_V,
    _block,
    _chunk_rows,
    _flag,
    _mm,
    _nonfinite,
    _or,
    _or_all,
    _rows,
    _store_rows,
    chunk_rows,
    fma_dots,
)
from .config import DEFAULT_LAUNCH, Launch

__all__ = ["wy_factors", "wy_factors_ref"]


@triton.jit
def _wy_kernel(
    k, v, beta, g, ai, w_out, u_out, bounds, flag,
    H, K, V,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr,
    ACC: tl.constexpr, IEEE: tl.constexpr, CHECK: tl.constexpr,
):  # fmt: skip
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    oc, rmask, t, _ = _chunk_rows(bounds, i_c, i_h, H, C)
    DT: tl.constexpr = k.dtype.element_ty
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


def wy_factors(k, v, beta, g, ai, bounds, C, inter_dtype=None, flag=None, launch: Launch = DEFAULT_LAUNCH):
    """Stage 2. Returns ``W: [N, H, K]`` and ``Ũ: [N, H, V]`` (in ``inter_dtype``, default the input dtype).
    With ``flag``, non-finite ``k`` or ``v`` and ``β ∉ (0, 1]`` set :data:`BAD_K`, :data:`BAD_V`,
    :data:`BAD_BETA` in it (as they are loaded)."""
    N, H, K = k.shape
    V = v.shape[-1]
    dt = inter_dtype or k.dtype
    fma = fma_dots(k.dtype)
    w = torch.empty(N, H, K, device=k.device, dtype=dt)
    u = torch.empty(N, H, V, device=k.device, dtype=dt)
    cfg = launch.cfg(
        "wy",
        k.dtype,
        BK=_block(K, 64),
        BV=_block(V, 32 if fma else 64),
        num_warps=8 if fma else 4,  # float32: 0.2-0.5 KB stack frame at 4 warps, 0-0.2 KB at 8
    )
    _c = _wy_kernel[(bounds.shape[0], H)](
        k, v, beta, g if g is not None else beta, ai, w, u, bounds, flag if flag is not None else bounds,
        H, K, V, C=C, GATED=g is not None, CHECK=flag is not None, **cfg,
    )  # fmt: skip
    launch.note("wy", _c, cfg)
    return w, u


def wy_factors_ref(k, v, beta, g, ai, bounds, C):
    """Stage 2 twin: ``W = A⁻¹ diag(β) diag(e^g) K`` and ``Ũ = A⁻¹ diag(β) V``."""
    w, u = torch.zeros_like(k), torch.zeros_like(v)
    for _, t0, t1 in chunk_rows(bounds, C):
        n = t1 - t0
        Tm = ai[t0:t1, :, :n].transpose(0, 1) * beta[t0:t1].transpose(0, 1)[:, None, :]
        kg = k[t0:t1] if g is None else k[t0:t1] * torch.exp(g[t0:t1])[..., None]
        w[t0:t1] = (Tm @ kg.transpose(0, 1)).transpose(0, 1)
        u[t0:t1] = (Tm @ v[t0:t1].transpose(0, 1)).transpose(0, 1)
    return w, u
