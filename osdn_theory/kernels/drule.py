"""The state-free ``ratio`` rule for the preconditioner ``d`` (spec §5, claim C5), run as a delta rule.

With ``u_t = k_t ⊙ k_t`` and the normalized step ``η_t = c / (2 β_t² ‖u_t‖²)`` the rule is

    d_{t+1} = d_t + c · (1/β_t − u_tᵀ d_t) · u_t / ‖u_t‖²,      d_1 = d_init,

i.e. a delta rule on a one-column memory with key ``û_t = u_t / ‖u_t‖``, strength ``c`` and value
``1 / (β_t ‖u_t‖)`` (tokens with ``u_t = 0`` leave ``d`` unchanged). Token ``t`` is written with ``d_t``
(the value *before* its own update).

The scan runs in four launches:

1. ``_d_prep_kernel``: one pass over ``k`` and ``β`` forms ``û``, the strength and the value (in column 0 of
   a 16-wide value, since ``tl.dot`` needs at least 16 columns).
2. :func:`stages.gram_solve`: ``A⁻¹`` of every chunk (chunks are independent).
3. :func:`stages.wy_factors`: ``W = T Û`` and ``Ũ = T v`` with ``T = A⁻¹ diag(c)`` (only column 0 of ``Ũ``
   is used).
4. ``_d_scan_kernel``: one program per (sequence, head) carries the ``K``-vector state ``h`` (fp32; fp64 for
   fp64 input) in registers through the chunks of its sequence. Per chunk of ``C`` rows::

       U = Ũ₀ − W h                          (one scalar per row)
       d_r = h + Σ_{i<r} U_i û_i              (exclusive cumulative sum over the rows)
       h ← h + Σ_i U_i û_i

   and stores ``max(d_r, d_min)``. The state of a one-column memory is only ``K`` numbers, so the
   inter-chunk recurrence needs no ``[K, V]`` tile and no dot; the state pass and the read-out that it
   replaces ran as two launches and wrote every chunk's state to memory.

The chunk size of the scan (:attr:`DRule.chunk_size`) may differ from that of :func:`chunk_osdn`.
Measured on an H200 (B=4, T=4096, H=16, K=128, bf16; whole :func:`d_ratio_scan`, ms, C = 16/32/64):
0.486/0.436/0.486 (``benchmarks/results/tune_h200_2026-11-27_run8b.json``). Timed separately while the
design was chosen (not kept in a results file): the former state pass + read-out 0.51/0.42/0.42 once the
host synchronisation caused by a host-to-device copy of ``d_init`` was removed from both (0.66/0.53/0.50
with it); fp32 1.01/0.98/4.4 against 1.56/1.45/7.8; the scan kernel alone 0.29/0.23/0.23 ms, the rest is
stages 1–3, of which :func:`stages.gram_solve` is the largest.
Positivity: ``d`` is floored at read-out only, ``max(d_t, d_min)``; the carried state is not floored, which
keeps the scan affine (spec §5).

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

#: Warps of the scan kernel by chunk size (one program per sequence and head, so few programs run at once).
#: H200, B=4, T=4096, H=16, K=128, bf16, whole d_ratio_scan in ms for warps 2/4/8 (tune run 8b, results
#: file above): C=16: 0.486/0.527/0.753; C=32: 0.725/0.436/0.526; C=64: 6.47/0.623/0.486 (at C=64 fewer
#: warps spill).
_SCAN_WARPS = {16: 2, 32: 4, 64: 8}


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
    uhat, w, ut, h0, d_out, cu_seqlens, d_min_ptr,
    H, K,
    C: tl.constexpr, BK: tl.constexpr, VP: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """One program per (sequence, head): the ``K``-vector state ``h`` (from ``h0: [N, H, K]``) is carried in
    registers through the chunks of the sequence; per chunk ``U = Ũ₀ − W h``, ``d_r = h + Σ_{i<r} U_i û_i``
    (stored floored at ``d_min``) and ``h ← h + Σ_i U_i û_i``. ``uhat, w: [tokens, H, K]``, ``ut: [tokens, H,
    VP]`` (column 0 used), ``d_out: [tokens, H, K]``; the tail chunk of a sequence is masked.

    The tiles of chunk ``n + 1`` are loaded before chunk ``n`` is computed (by hand: Triton's pipeliner left
    these loads alone). On an H200 (B=4, T=4096, H=16, K=128, bf16) this took the kernel from 0.315 to 0.223 ms
    at C = 32 with 4 warps, and from 0.263 to 0.232 ms at C = 64 with 8 warps (timed while the design was
    chosen; not kept in a results file)."""
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    Tn = tl.load(cu_seqlens + i_n + 1).to(tl.int64) - bos
    oc = tl.arange(0, C)
    ok = tl.arange(0, BK)
    h = tl.load(h0 + i_nh.to(tl.int64) * K + ok, mask=ok < K, other=0.0).to(ACC)
    d_min = tl.load(d_min_ptr).to(ACC)  # from memory: a float argument would arrive rounded to fp32
    W, uu, u0 = _d_scan_tiles(uhat, w, ut, bos, Tn, 0, i_h, H, K, C, BK, VP)
    for n in range(tl.cdiv(Tn, C)):
        W1, uu1, u01 = _d_scan_tiles(uhat, w, ut, bos, Tn, n + 1, i_h, H, K, C, BK, VP)  # next chunk
        U = u0.to(ACC) - tl.sum(W.to(ACC) * h[None, :], 1)  # 0 on masked rows
        inc = U[:, None] * uu.to(ACC)
        D = h[None, :] + tl.cumsum(inc, 0) - inc
        t = (bos + n * C + oc) * H + i_h
        stages._store_rows(d_out, tl.maximum(D, d_min), t, oc < Tn - n * C, K, ok, K)
        h += tl.sum(inc, 0)
        W, uu, u0 = W1, uu1, u01


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
        chunk_size: chunk size of the scan, one of 16, 32, 64 (default 64).
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

    f = stages.wide_dtype(k.dtype)
    # One pass over the keys forms the scan's key, strength and value (in the dtype of k, so the scan's dots
    # use the tensor cores for bf16/fp16); the carried d is accumulated in fp32 (fp64) inside the scan kernel.
    kf = k.detach().reshape(B * T, H, K).contiguous()
    uhat = torch.empty_like(kf)
    strength = torch.empty(B * T, H, dtype=k.dtype, device=k.device)
    vals = torch.empty(B * T, H, _VPAD, dtype=k.dtype, device=k.device)
    R = B * T * H
    _d_prep_kernel[(triton.cdiv(R, 32),)](
        kf, beta.detach().reshape(B * T, H).contiguous(), uhat, strength, vals,
        torch.full((1,), c, dtype=f, device=k.device), R, K,
        BR=32, BK=stages._block(K), VP=_VPAD, ACC=stages.acc_dtype(f),
        num_warps=stages._warps(4),
    )  # fmt: skip
    if isinstance(d_init, torch.Tensor):
        h0 = torch.broadcast_to(d_init.to(dtype=f, device=k.device), (N, H, K)).contiguous()
    else:  # a fill on the device: a host-to-device copy of the number would wait for the queued work
        h0 = torch.full((N, H, K), d_init, dtype=f, device=k.device)
    cu, _, bounds, _ = _chunk_tables(cu_seqlens, B, T, chunk_size, k.device)
    _, _, _, ai = stages.gram_solve(uhat, None, strength, None, bounds, None, chunk_size)
    w, ut = stages.wy_factors(uhat, vals, strength, None, ai, bounds, chunk_size)
    d = torch.empty(B * T, H, K, dtype=k.dtype, device=k.device)
    _c = _d_scan_kernel[(N * H,)](
        uhat, w, ut, h0, d, cu, torch.full((1,), d_min, dtype=f, device=k.device), H, K,
        C=chunk_size, BK=stages._block(K), VP=_VPAD, ACC=stages.acc_dtype(f),
        **stages._cfg("d_scan", num_warps=_SCAN_WARPS[chunk_size], num_stages=stages._stages(k.dtype)),
    )  # fmt: skip
    stages._record("d_scan", _c)
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
        chunk_size: chunk size of the d scan, one of 16, 32, 64, or ``None`` (the chunk size given to
            :func:`chunk_osdn` / :meth:`compute`). Default 32: the whole scan took 0.436 ms at 32 against 0.483 at
            64 and 0.486 at 16 on an H200 (bf16, B=4, T=4096, H=16, K=128). The scan's chunk size changes only
            its speed and round-off.
    """

    rule: str = "ratio"
    c: float = 0.5
    d_init: float | torch.Tensor = 1.0
    d_min: float = 1e-4
    chunk_size: int | None = 32

    def __post_init__(self):
        check_choice("rule", self.rule, ["ratio"])
        check_scalar("c", self.c, 0.0, 2.0, lo_open=True, hi_open=True)
        check_scalar("d_min", self.d_min, 0.0, None, lo_open=True)
        _check_d_init(self.d_init)
        if self.chunk_size is not None:
            object.__setattr__(self, "chunk_size", check_chunk_size(self.chunk_size))

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
        the arguments are those of :func:`d_ratio_scan` (which checks them). The scan runs with chunk size
        :attr:`chunk_size` if set, else ``chunk_size``."""
        return d_ratio_scan(
            k,
            beta,
            c=self.c,
            d_init=self.d_init,
            d_min=self.d_min,
            cu_seqlens=cu_seqlens,
            chunk_size=self.chunk_size or chunk_size,
            validate=validate,
        )
