"""Shared pieces of the Triton stages (one file per stage beside this one) and of their torch twins.

Every tensor is in the packed layout: time is flattened to ``N = B·T`` (or the packed length of a
variable-length batch) and sequences are described by ``cu_seqlens``; chunks never straddle two sequences.
Under ``TRITON_INTERPRET=1`` every stage runs on the CPU, in float64 too (the dots accumulate in float64).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of carried states and fp32 buffers: float64 for float64 inputs (interpreter), else
    float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_dtype(dtype: torch.dtype):
    """Accumulator dtype inside the kernels (the Triton twin of :func:`wide_dtype`)."""
    return tl.float64 if wide_dtype(dtype) == torch.float64 else tl.float32


def _warps(n: int) -> int:
    return 1 if INTERPRET else n


def _block(n: int, cap: int | None = None) -> int:
    """The power-of-two block covering ``n`` (at least 16, the smallest side of a ``tl.dot``), at most ``cap``."""
    b = max(16, triton.next_power_of_2(n))
    return b if cap is None else min(cap, b)


def fma_dots(dtype: torch.dtype) -> bool:
    """Whether the kernels' dots on ``dtype`` inputs are IEEE float32/float64 dots, which Triton lowers to FMA
    loops instead of tensor-core MMAs. Their operand and accumulator tiles need about twice the registers of a
    16-bit MMA's, and with the 16-bit launch rules ptxas fell back to 32 registers and a 5–21 KB stack frame
    per thread in most stages (sm_90, triton 3.6; ``python -m benchmarks.offline_regs``; one such kernel, the
    backward WY stage, took 1.6 ms per call in the recall lab's float32 training on an H100). Their launch
    rules use 8 warps and narrower value blocks, chosen by registers and stack frame; see docs/kernels.md."""
    return dtype in (torch.float32, torch.float64)


def _stages(dtype: torch.dtype) -> int:
    """Software-pipelining depth of the kernels with a loop: fp32 tiles are twice as large, so one stage."""
    return 1 if fma_dots(dtype) else 2


def _bv(V: int, progs: int, gpu: bool | None = None) -> int:
    """V block of the sequential passes (state, dh): 64, halved on a GPU while fewer than 128 programs would run.

    Measured on an H200 (bf16, ``benchmarks/tune_kernels.py``, runs 7–8): the fastest state pass had 128
    programs at all three shapes timed — V block 64 with 64 sequence·heads at K = V = 128 (0.111 ms; 32: 0.143),
    16 with 16 sequence·heads (0.201 ms; 32: 0.276), 64 with 128 sequence·heads at K = V = 64 (0.052 ms).
    ``gpu`` (default: not under the interpreter) picks the rule, so the tests can run the GPU choice too."""
    bv = _block(V, 64)
    if not (not INTERPRET if gpu is None else gpu):
        return bv
    while bv > 16 and progs * triton.cdiv(V, bv) < 128:
        bv //= 2
    return bv


#: Shared memory the pipelined loads of one sequential pass may take (an H100/H200 has 227 KiB per block).
_PIPE_BYTES = 192 * 1024


def _pass_stages(dtype: torch.dtype, bv: int, stage_bytes: int) -> int:
    """Software-pipelining depth of the sequential passes: one for fp32/fp64 (shared memory); for 16-bit
    inputs 3, or 4 with V blocks of at most 32 (measured best in the same runs), and never more stages of
    ``stage_bytes`` each than fit in :data:`_PIPE_BYTES` (at K = 256, 4 stages of the state pass needed 280 KB)."""
    if dtype in (torch.float32, torch.float64):
        return 1
    return max(1, min(4 if bv <= 32 else 3, _PIPE_BYTES // stage_bytes))


# ------------------------------------------------------------------------------ Triton helpers and value checks


@triton.jit
def _mm(a, b, DT: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr):
    """``a @ b`` with operands in the input dtype ``DT`` and ``ACC`` accumulation (IEEE for float32)."""
    if IEEE:
        return tl.dot(a.to(DT), b.to(DT), input_precision="ieee", out_dtype=ACC)
    else:
        return tl.dot(a.to(DT), b.to(DT), out_dtype=ACC)


@triton.jit
def _rows(ptr, t, rmask, stride, offs, ncols, ACC: tl.constexpr):
    """Load rows ``t`` (int64 row offsets) × columns ``offs`` of a row-major matrix, zero outside."""
    m = rmask[:, None] & (offs[None, :] < ncols)
    return tl.load(ptr + t[:, None] * stride + offs[None, :], mask=m, other=0.0).to(ACC)


#: Bits of the device-side value check (one int32 word per call, see :mod:`._checks`): each stage that
#: loads an input anyway tests its values in registers and ORs a bit into the word when one is out of range.
#: (``tl.constexpr`` so that the kernels may read them; ``.value`` is the int.)
BAD_Q, BAD_K, BAD_V, BAD_BETA, BAD_D, BAD_ALPHA = (tl.constexpr(1 << i) for i in range(6))


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _or_all(code):
    """OR of all entries of the int32 tile ``code [R, S]`` (a scalar)."""
    return tl.reduce(tl.reduce(code, 1, _or), 0, _or)


@triton.jit
def _flag(flag, bits):
    """OR the scalar ``bits`` into ``*flag`` (one atomic, issued only when non-zero)."""
    tl.atomic_or(flag, bits, mask=bits != 0)


@triton.jit
def _nonfinite(x, m, BIT: tl.constexpr):
    """``BIT`` where ``x`` is NaN or ±inf (and ``m``), else 0 (int32 tile)."""
    return tl.where(m & ~(tl.abs(x) < float("inf")), BIT, 0)


@triton.jit
def _store_rows(ptr, x, t, rmask, stride, offs, ncols):
    m = rmask[:, None] & (offs[None, :] < ncols)
    tl.store(ptr + t[:, None] * stride + offs[None, :], x.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _decay(g, rows, cols, STRICT: tl.constexpr):
    """``Γ_{r,i} = exp(g_r − g_i)`` on the (strictly, if ``STRICT``) lower triangle, 0 above."""
    if STRICT:
        m = rows[:, None] > cols[None, :]
    else:
        m = rows[:, None] >= cols[None, :]
    diff = tl.where(m, g[:, None] - g[None, :], 0.0)
    return tl.where(m, tl.exp(diff), 0.0)


@triton.jit
def _last(x, offs, nv):
    """The entry of vector ``x`` at index ``nv − 1`` (last valid row of a chunk)."""
    return tl.sum(tl.where(offs == nv - 1, x, 0.0), 0)


@triton.jit
def _mmf(a, b, ACC: tl.constexpr, PREC: tl.constexpr = "ieee"):
    """Small fp32 product (16×16 blocks of the inverse); ``PREC`` is Triton's ``input_precision``."""
    return tl.dot(a, b, input_precision=PREC, out_dtype=ACC)


@triton.jit
def _chunk_rows(bounds, i_c, i_h, H, C: tl.constexpr):
    """Rows of chunk ``i_c`` for head ``i_h`` (``bounds``: chunk start token, end of its sequence): ``oc``
    (0 … C−1), ``rmask`` (rows inside the sequence), the packed row index ``t = token · H + head`` and the
    number of valid rows ``nv``."""
    t0 = tl.load(bounds + 2 * i_c).to(tl.int64)
    nv = tl.minimum(tl.load(bounds + 2 * i_c + 1).to(tl.int64) - t0, C)
    oc = tl.arange(0, C)
    return oc, oc < nv, (t0 + oc) * H + i_h, nv


@triton.jit
def _chunk_scores(q, kt, g, i_c, i_h, bounds, H, K,
                  C: tl.constexpr, BK: tl.constexpr, GATED: tl.constexpr,
                  ACC: tl.constexpr, IEEE: tl.constexpr):  # fmt: skip
    """Rows of one chunk and its masked intra-chunk scores ``Γ ⊙ tril₀(Q K̃ᵀ)`` (shared by output and dv)."""
    oc, rmask, t, _ = _chunk_rows(bounds, i_c, i_h, H, C)
    DT: tl.constexpr = q.dtype.element_ty
    ok = tl.arange(0, BK)
    qq = _rows(q, t, rmask, K, ok, K, DT)  # dot operands stay in the input dtype
    ktc = _rows(kt, t, rmask, K, ok, K, DT)
    P = _mm(qq, tl.trans(ktc), DT, ACC, IEEE)
    if GATED:
        gg = tl.load(g + t, mask=rmask, other=0.0).to(ACC)
        P = P * _decay(gg, oc, oc, False)
    else:
        gg = tl.zeros([C], dtype=ACC)
        P = tl.where(oc[:, None] >= oc[None, :], P, 0.0)
    return t, rmask, ok, qq, P, gg


# ------------------------------------------------------------------------------------- helpers of the torch twins


def chunk_rows(bounds: torch.Tensor, C: int):
    """For the torch twins: ``(chunk index, first token, end token)`` of every chunk in ``bounds [NC, 2]``."""
    for i, (t0, end) in enumerate(bounds.tolist()):
        yield i, t0, min(t0 + C, end)


def decay_ref(g: torch.Tensor, strict: bool) -> torch.Tensor:
    """``Γ_{r,i} = exp(g_r − g_i)`` on the lower triangle (strict or not), zero above; ``g: [H, C]``."""
    n = g.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool, device=g.device).tril(-1 if strict else 0)
    diff = (g[..., :, None] - g[..., None, :]).masked_fill(~mask, 0.0)
    return torch.exp(diff) * mask


def heads_first(x: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
    """Rows ``t0:t1`` of a packed ``[N, H, ·]`` tensor as ``[H, n, ·]``."""
    return x[t0:t1].transpose(0, 1)
