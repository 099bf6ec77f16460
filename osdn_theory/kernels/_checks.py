"""Argument checks shared by :func:`chunk_osdn` and :func:`d_ratio_scan` (each raises ``ValueError`` naming the
argument, what was expected and what was received)."""

from __future__ import annotations

import torch

from .._validate import as_tensor, check_scalar, check_shape
from . import stages

CHUNK_SIZES = (16, 32, 64)
MAX_DIM = 256


def check_keys(k) -> torch.Tensor:
    """``k`` of shape ``[B, T, H, K]``: a contiguous floating tensor on a CUDA device (or on the CPU under the
    Triton interpreter, where float64 is allowed too), ``T ≥ 1``, ``1 ≤ K ≤ 256``."""
    k = as_tensor("k", k)
    check_shape("k", k, [None, None, None, None], "[B, T, H, K]")
    B, T, H, K = k.shape
    if T == 0:
        raise ValueError("k: expected at least one token (T >= 1), got T = 0")
    if k.dtype == torch.float64 and not stages.INTERPRET:
        raise ValueError(
            "k: float64 runs only under the Triton interpreter (TRITON_INTERPRET=1); got float64"
        )
    if k.dtype == torch.bfloat16 and stages.INTERPRET:
        # numpy has no bfloat16: with Triton 3.8 the interpreter's tl.dot on bf16 operands returned values off
        # by many orders of magnitude on a single 16x16 product, so the kernels would run and return nonsense.
        raise ValueError(
            "k: bfloat16 is not supported under the Triton interpreter (its tl.dot is wrong for bf16 operands); "
            "expected float16, float32 or float64 there, got bfloat16"
        )
    devices = ("cuda", "cpu") if stages.INTERPRET else ("cuda",)
    if k.device.type not in devices:
        raise ValueError(
            f"k: expected a tensor on {' or '.join(devices)} "
            f"({'CPU only under the Triton interpreter' if stages.INTERPRET else 'or set TRITON_INTERPRET=1'}), "
            f"got device {k.device}"
        )
    if not 1 <= K <= MAX_DIM:
        raise ValueError(f"k: expected head dim 1 <= K <= {MAX_DIM}, got K = {K}")
    if not k.is_contiguous():
        raise ValueError(f"k: expected a contiguous tensor (call .contiguous()), got strides {k.stride()}")
    return k


def check_like(
    name: str, x, ref: torch.Tensor, shape, layout: str, *, contiguous: bool = True
) -> torch.Tensor:
    """``x`` with shape ``shape`` (``None`` = any) and the dtype and device of ``ref`` (the keys)."""
    t = as_tensor(name, x)
    check_shape(name, t, shape, layout)
    if t.dtype != ref.dtype:
        raise ValueError(f"{name}: expected dtype {ref.dtype} (same as k), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (same as k), got {t.device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(
            f"{name}: expected a contiguous tensor (call .contiguous()), got strides {t.stride()}"
        )
    return t


def check_chunk_size(chunk_size) -> int:
    C = int(check_scalar("chunk_size", chunk_size, integer=True))
    if C not in CHUNK_SIZES:
        raise ValueError(f"chunk_size: expected one of {CHUNK_SIZES}, got {chunk_size!r}")
    return C


def check_cu_seqlens(cu_seqlens, B: int, T: int, device) -> tuple[torch.Tensor | None, int]:
    """``cu_seqlens`` (``None`` or an integer tensor ``[N + 1]`` rising strictly from 0 to ``T``, with ``B = 1``),
    moved to ``device``; returns it and the number of sequences ``N``."""
    if cu_seqlens is None:
        return None, B
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens: expected an int32/int64 tensor, got {cu_seqlens!r}")
    if B != 1:
        raise ValueError(f"cu_seqlens: expected B = 1 (packed sequences), got B = {B}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens: expected shape [N + 1] with N >= 1, got {tuple(cu_seqlens.shape)}")
    cu_list = cu_seqlens.tolist()
    if cu_list[0] != 0 or cu_list[-1] != T or any(b <= a for a, b in zip(cu_list, cu_list[1:], strict=False)):
        raise ValueError(f"cu_seqlens: expected strictly increasing from 0 to T = {T}, got {cu_list}")
    return cu_seqlens.to(device), len(cu_list) - 1
