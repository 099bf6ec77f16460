"""The value check of ``d`` as a pass of its own (``Launch(d_check="pass")``): one streaming read of ``d``,
before stage 1, instead of checking it inside stage 1 (``"tile"``, ``"rows"``; see :mod:`.gram_solve`).

Kernel, launcher :func:`check_d` and its torch twin :func:`check_d_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import BAD_D, _flag, _warps
from .config import DEFAULT_LAUNCH, Launch

__all__ = ["check_d", "check_d_ref"]

#: Elements per program and warps. Measured on an H200 (2026-12-06, bf16, ``d`` of 67 MB and 34 MB,
#: ``benchmarks/results/d_check_pass_h200_2026-12-06.md``): 4096 entries with 8 warps took 0.045 / 0.026 ms,
#: against 0.058 / 0.032 for the first choice, 8192 entries (the same with an OR reduction or ``tl.max``); 4 warps
#: and larger blocks were slower. A copy of ``d`` (a read and a write) took 0.036 / 0.021 ms, so this read is
#: still below the card's bandwidth (``benchmarks/bench_d_check.py`` times the variants).
_BLOCK = 4096
_WARPS = 8


@triton.jit
def _check_d_kernel(d, flag, n, BLOCK: tl.constexpr):
    """OR :data:`BAD_D` into ``*flag`` if any of the ``BLOCK`` entries of ``d`` (flat) that this program reads
    is not finite and positive (one atomic per program, issued only when set). The bits are ``BAD_D`` or 0,
    so their maximum is their OR."""
    o = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    x = tl.load(d + o, mask=m, other=1.0)
    bad = tl.where(m & ~((x > 0) & (x < float("inf"))), BAD_D, 0)
    _flag(flag, tl.max(bad, 0))


def check_d(
    d: torch.Tensor, flag: torch.Tensor, block: int = _BLOCK, launch: Launch = DEFAULT_LAUNCH
) -> None:
    """Check every entry of the contiguous ``d`` (finite, > 0) into the int32 ``flag [1]`` (no synchronisation).
    ``block``: entries per program (a power of two; small values keep interpreter tests fast). The launch is
    noted as ``"check_d"`` in ``launch.record``."""
    n = d.numel()
    cfg = {"BLOCK": block, "num_warps": _warps(_WARPS)}
    _c = _check_d_kernel[(triton.cdiv(n, block),)](d, flag, n, **cfg)
    launch.note("check_d", _c, cfg)


def check_d_ref(d: torch.Tensor) -> int:
    """Twin: the bit :func:`check_d` sets (``BAD_D`` or 0)."""
    ok = torch.isfinite(d) & (d > 0)
    return 0 if bool(ok.all()) else int(BAD_D.value)
