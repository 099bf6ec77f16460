"""Backward stage b1: ``scale · tril₀(Γ ⊙ Q K̃ᵀ)ᵀ dO``, the part of ``dU`` that does not depend on later chunks
— kernel, launcher :func:`dv_local`, torch twin :func:`dv_local_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    _block,
    _chunk_scores,
    _mm,
    _rows,
    _store_rows,
    chunk_rows,
    decay_ref,
    fma_dots,
    heads_first,
)
from .config import DEFAULT_LAUNCH, Launch

__all__ = ["dv_local", "dv_local_ref"]


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


def dv_local(q, kt, g, do, bounds, scale, C, inter_dtype=None, launch: Launch = DEFAULT_LAUNCH):
    """``scale · tril₀(Γ ⊙ Q K̃ᵀ)ᵀ dO``: the part of ``dU`` that does not depend on later chunks."""
    N, H, K = q.shape
    V = do.shape[-1]
    dv = torch.empty(N, H, V, device=q.device, dtype=inter_dtype or q.dtype)
    # V block up to 128 (H200, K = V = 128: 0.073 ms against 0.085 at 64)
    fma = fma_dots(q.dtype)  # float32: 4.8-10.6 KB stack frame at 4 warps; 0-0.2 KB with 8 warps, V block 32
    cfg = launch.cfg("dv_local", q.dtype, BV=_block(V, 32 if fma else 128), num_warps=8 if fma else 4)
    _c = _dv_local_kernel[(triton.cdiv(V, cfg["BV"]), bounds.shape[0], H)](
        q, kt, g if g is not None else q, do, dv, bounds, float(scale), H, K, V,
        C=C, BK=_block(K), GATED=g is not None, **cfg,
    )  # fmt: skip
    launch.note("dv_local", _c, cfg)
    return dv


def dv_local_ref(q, kt, g, do, bounds, scale, C):
    """b1 twin: ``scale · tril₀(Γ ⊙ Q K̃ᵀ)ᵀ dO`` per chunk."""
    dv = torch.zeros_like(do)
    for _, t0, t1 in chunk_rows(bounds, C):
        P = heads_first(q, t0, t1) @ heads_first(kt, t0, t1).transpose(-1, -2)
        P = P.tril() if g is None else P * decay_ref(heads_first(g, t0, t1), False)
        dv[t0:t1] = (scale * P.transpose(-1, -2) @ heads_first(do, t0, t1)).transpose(0, 1)
    return dv
