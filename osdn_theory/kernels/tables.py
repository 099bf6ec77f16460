"""Chunk tables of a batch: ``cu_seqlens``, each sequence's first chunk index and per chunk ``(start token, end of
its sequence)`` — shared by the chunk pipeline and the d rule (which therefore need not import each other)."""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["chunk_tables"]


@functools.lru_cache(maxsize=64)
def _uniform_tables(B: int, T: int, C: int, device: torch.device) -> tuple[Any, ...]:
    """Tables of a batch of ``B`` sequences of length ``T`` (read-only, so cached per shape and device)."""
    nt = -(-T // C)
    cu = torch.arange(0, B * T + 1, T, device=device, dtype=torch.int32)
    offs = torch.arange(0, B * nt + 1, nt, device=device, dtype=torch.int32)
    j = torch.arange(nt, device=device, dtype=torch.int32)
    b = torch.arange(B, device=device, dtype=torch.int32)
    start = (b[:, None] * T + j[None, :] * C).reshape(-1)
    end = ((b + 1) * T)[:, None].expand(B, nt).reshape(-1)
    bounds = torch.stack([start, end], 1).contiguous()
    return cu, offs, bounds, B * nt


def chunk_tables(cu_seqlens: torch.Tensor | None, B: int, T: int, C: int, device) -> tuple[Any, ...]:
    """``cu_seqlens`` (int32), per-sequence first chunk index and ``bounds [NC, 2]`` (chunk start, seq end)."""
    if cu_seqlens is None:
        return _uniform_tables(B, T, C, torch.device(device))
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    starts = cu_seqlens[:-1].tolist()
    rows, offs = [], [0]
    for s, n in zip(starts, lens, strict=True):
        nt = -(-n // C)
        rows += [(s + j * C, s + n) for j in range(nt)]
        offs.append(offs[-1] + nt)
    bounds = torch.tensor(rows, dtype=torch.int32, device=device).reshape(-1, 2)
    return (
        cu_seqlens.to(torch.int32).contiguous(),
        torch.tensor(offs, dtype=torch.int32, device=device),
        bounds,
        offs[-1],
    )
