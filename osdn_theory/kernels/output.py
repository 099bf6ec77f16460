"""Stage 4: ``O = scale·(diag(e^g) Q h_n + tril₀(Γ ⊙ Q K̃ᵀ) U)`` (with the value check of ``q``) — kernel,
launcher :func:`output`, torch twin :func:`output_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    BAD_Q,
    _block,
    _chunk_scores,
    _flag,
    _mm,
    _nonfinite,
    _or_all,
    _rows,
    _store_rows,
    chunk_rows,
    decay_ref,
    fma_dots,
)
from .config import DEFAULT_LAUNCH, Launch

__all__ = ["output", "output_ref"]


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


def output(q, kt, vnew, h, g, bounds, scale, C, flag=None, launch: Launch = DEFAULT_LAUNCH):
    """Stage 4. Returns ``o: [N, H, V]`` in the input dtype. With ``flag``: non-finite ``q`` sets
    :data:`BAD_Q`, and the output is NaN where an earlier stage has set a bit."""
    N, H, K = q.shape
    V = vnew.shape[-1]
    NC = bounds.shape[0]
    o = torch.empty(N, H, V, device=q.device, dtype=q.dtype)
    # float32: a 9.4 KB (K = 64) and 21 KB (K = 128) stack frame at 4 warps; 0 and 5.7 KB with these rules
    fma = fma_dots(q.dtype)
    cfg = launch.cfg("output", q.dtype, BV=_block(V, 16 if fma else 64), num_warps=8 if fma else 4)
    _c = _output_kernel[(triton.cdiv(V, cfg["BV"]), NC, H)](
        q, kt, vnew, h, g if g is not None else q, o, bounds, flag if flag is not None else bounds,
        float(scale), H, K, V, C=C, BK=_block(K), GATED=g is not None, CHECK=flag is not None, **cfg,
    )  # fmt: skip
    launch.note("output", _c, cfg)
    return o


def output_ref(q, kt, vnew, h, g, bounds, scale, C):
    """Stage 4 twin: ``O = scale · (diag(e^g) Q h_n + tril₀(Γ ⊙ Q K̃ᵀ) U)``."""
    o = torch.zeros_like(vnew)
    for i, t0, t1 in chunk_rows(bounds, C):
        qc, ktc, U = q[t0:t1].transpose(0, 1), kt[t0:t1].transpose(0, 1), vnew[t0:t1].transpose(0, 1)
        P = qc @ ktc.transpose(-1, -2)
        if g is None:
            P = P.tril()
        else:
            gc = g[t0:t1].transpose(0, 1)
            P = P * decay_ref(gc, False)
            qc = qc * torch.exp(gc)[..., None]
        o[t0:t1] = (scale * (qc @ h[i] + P @ U)).transpose(0, 1)
    return o
