"""The state-free ``ratio`` rule for the preconditioner ``d`` (spec §5, claim C5), run as a delta rule.

With ``u_t = k_t ⊙ k_t`` and the normalized step ``η_t = c / (2 β_t² ‖u_t‖²)`` the rule is

    d_{t+1} = d_t + c · (1/β_t − u_tᵀ d_t) · u_t / ‖u_t‖²,      d_1 = d_init,

i.e. a delta rule on a one-column memory with key ``û_t = u_t / ‖u_t‖``, strength ``c`` and value
``1 / (β_t ‖u_t‖)`` (tokens with ``u_t = 0`` leave ``d`` unchanged). Token ``t`` is written with ``d_t``
(the value *before* its own update). The scan therefore reuses the chunk stages (Gram/solve, WY, state
pass) with a value width of 16 (one used column) and a small read-out kernel that forms every ``d_t``:
``d_r = h_n + Σ_{i<r} U_i û_i`` within chunk ``n``. Positivity: ``d`` is floored at read-out,
``max(d_t, d_min)``, which keeps the scan affine (spec §5).

The rule's output is treated as a constant of the keys (no gradient flows through the rule into ``k``
or ``β``), like an optimizer's preconditioner state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._validate import as_tensor, check_choice, check_range, check_scalar
from . import stages
from ._checks import check_chunk_size, check_cu_seqlens, check_keys, check_like

__all__ = ["DRule", "d_ratio_scan"]

_VPAD = 16


@triton.jit
def _d_readout_kernel(
    u, vnew, h, d_out, bounds, d_min_ptr,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, VP: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    rmask = oc < nv
    t = (t0 + oc) * H + i_h
    m = rmask[:, None] & (ok[None, :] < K)
    uu = tl.load(u + t[:, None] * K + ok[None, :], mask=m, other=0.0).to(ACC)
    U0 = tl.load(vnew + t * VP, mask=rmask, other=0.0).to(ACC)
    h0 = tl.load(h + (i_c.to(tl.int64) * H + i_h) * K * VP + ok * VP, mask=ok < K, other=0.0).to(ACC)
    inc = U0[:, None] * uu
    D = h0[None, :] + tl.cumsum(inc, 0) - inc
    d_min = tl.load(d_min_ptr).to(ACC)  # from memory: a float argument would arrive rounded to fp32
    tl.store(d_out + t[:, None] * K + ok[None, :], tl.maximum(D, d_min).to(d_out.dtype.element_ty), mask=m)


@triton.jit
def _d_prep_kernel(
    k, beta, uhat_out, strength_out, vals_out, c_ptr, R, K,
    BR: tl.constexpr, BK: tl.constexpr, VP: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """Rows ``r`` of ``k: [R, K]`` (``R = N·H``): key ``û = u/‖u‖`` with ``u = k⊙k``, strength ``c`` and value
    ``1/(β‖u‖)`` in column 0 of ``VP`` (zero elsewhere); all three zero where ``u = 0``. One pass over ``k``."""
    orow = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    ok = tl.arange(0, BK)
    rm = orow < R
    m = rm[:, None] & (ok[None, :] < K)
    kk = tl.load(k + orow[:, None] * K + ok[None, :], mask=m, other=0.0).to(ACC)
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


def d_ratio_scan(
    k, beta, *, c: float, d_init, d_min: float, cu_seqlens=None, chunk_size: int = 64, validate: bool = True
):
    """``d`` of shape ``[B, T, H, K]`` (dtype of ``k``, detached) from the ratio rule; see the module docstring.

    Args:
        k: keys of shape ``[B, T, H, K]`` (contiguous; CUDA, or CPU under the Triton interpreter).
        beta: write strengths of shape ``[B, T, H]`` in (0, 1], dtype and device of ``k``.
        c: normalized step in (0, 2).
        d_init: ``d_1``: a positive number, or a tensor broadcastable to ``[N, H, K]`` (``N`` sequences:
            ``B``, or the number of packed sequences), e.g. ``[K]`` or ``[H, K]``.
        d_min: read-out floor ``> 0``.
        cu_seqlens: optional ``[N + 1]`` packed-sequence offsets (integer tensor, ``B = 1``). Default ``None``.
        chunk_size: one of 16, 32, 64 (default 64).
        validate: check ``β ∈ (0, 1]`` and finite keys (a pass over both and a host synchronisation).
            Default ``True``.
    """
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
    if validate:
        check_range("k", k.detach())
        check_range("beta", beta.detach(), 0.0, 1.0, lo_open=True)
    from .chunk import _chunk_tables

    f = torch.float64 if k.dtype == torch.float64 else torch.float32
    # One pass over the keys forms the scan's key, strength and value (in the dtype of k, so the scan's dots
    # use the tensor cores for bf16/fp16); the carried d is accumulated in fp32 inside the state pass.
    kf = k.detach().reshape(B * T, H, K).contiguous()
    uhat = torch.empty_like(kf)
    strength = torch.empty(B * T, H, dtype=k.dtype, device=k.device)
    vals = torch.empty(B * T, H, _VPAD, dtype=k.dtype, device=k.device)
    R = B * T * H
    _d_prep_kernel[(triton.cdiv(R, 32),)](
        kf, beta.detach().reshape(B * T, H).contiguous(), uhat, strength, vals,
        torch.full((1,), c, dtype=f, device=k.device), R, K,
        BR=32, BK=max(16, triton.next_power_of_2(K)), VP=_VPAD, ACC=stages.acc_dtype(f),
        num_warps=stages._warps(4),
    )  # fmt: skip
    di = torch.as_tensor(d_init, dtype=f, device=k.device)
    h0 = torch.zeros(N, H, K, _VPAD, dtype=f, device=k.device)
    h0[..., 0] = torch.broadcast_to(di, (N, H, K))
    cu, offs, bounds, NC = _chunk_tables(cu_seqlens, B, T, chunk_size, k.device)
    _, _, _, ai = stages.gram_solve(uhat, None, strength, None, bounds, None, chunk_size)
    w, ut = stages.wy_factors(uhat, vals, strength, None, ai, bounds, chunk_size)
    h, vnew, _ = stages.state_pass(uhat, w, ut, None, h0, cu, offs, NC, chunk_size, False)
    d = torch.empty(B * T, H, K, dtype=k.dtype, device=k.device)
    _d_readout_kernel[(NC, H)](
        uhat, vnew, h, d, bounds, torch.full((1,), d_min, dtype=f, device=k.device), H, K,
        C=chunk_size, BK=max(16, triton.next_power_of_2(K)), VP=_VPAD, ACC=stages.acc_dtype(f),
        num_warps=stages._warps(4),
    )  # fmt: skip
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
    """

    rule: str = "ratio"
    c: float = 0.5
    d_init: float | torch.Tensor = 1.0
    d_min: float = 1e-4

    def __post_init__(self):
        check_choice("rule", self.rule, ["ratio"])
        check_scalar("c", self.c, 0.0, 2.0, lo_open=True, hi_open=True)
        check_scalar("d_min", self.d_min, 0.0, None, lo_open=True)
        _check_d_init(self.d_init)

    def compute(
        self,
        k: torch.Tensor,
        beta: torch.Tensor,
        *,
        cu_seqlens=None,
        chunk_size: int = 64,
        validate: bool = True,
    ):
        """``d: [B, T, H, K]`` (dtype of ``k``, detached) for keys ``k: [B, T, H, K]`` and ``beta: [B, T, H]``;
        the arguments are those of :func:`d_ratio_scan` (which checks them)."""
        return d_ratio_scan(
            k,
            beta,
            c=self.c,
            d_init=self.d_init,
            d_min=self.d_min,
            cu_seqlens=cu_seqlens,
            chunk_size=chunk_size,
            validate=validate,
        )
