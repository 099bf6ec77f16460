"""Chunk tables of a batch: ``cu_seqlens``, each sequence's first chunk index and per chunk ``(start token, end of
its sequence)`` — shared by the chunk pipeline and the d rule (which therefore need not import each other)."""

from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["chunk_tables", "segment_tables"]


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


@functools.lru_cache(maxsize=64)
def _uniform_segments(B: int, T: int, C: int, G: int, device: torch.device) -> tuple[Any, ...]:
    nt = -(-T // C)
    ns = -(-nt // G)
    j = torch.arange(ns, device=device, dtype=torch.int32)
    b = torch.arange(B, device=device, dtype=torch.int32)
    starts = (b[:, None] * T + j[None, :] * G * C).reshape(-1)
    seg_cu = torch.cat([starts, torch.tensor([B * T], device=device, dtype=torch.int32)])
    seg_offs = torch.arange(0, B * ns + 1, ns, device=device, dtype=torch.int32)
    chunk0 = (b[:, None] * nt + j[None, :] * G).reshape(-1).contiguous()
    return seg_cu, seg_offs, chunk0, B * ns


def segment_tables(cu_seqlens: list[int] | None, B: int, T: int, C: int, G: int, device) -> tuple[Any, ...]:
    """Segments of ``G`` chunks of ``C`` tokens (the last one of a sequence shorter), for the d rule's
    segment-parallel scan: ``seg_cu [NS + 1]`` (segment boundaries, a ``cu_seqlens`` of the segments),
    ``seg_offs [S + 1]`` (each sequence's first segment), ``chunk0 [NS]`` (each segment's first chunk in the
    numbering of :func:`chunk_tables`) and ``NS``. ``cu_seqlens``: the packed offsets as a host list, or
    ``None`` for ``B`` sequences of length ``T``."""
    if cu_seqlens is None:
        return _uniform_segments(B, T, C, G, torch.device(device))
    cu = list(cu_seqlens)
    starts, offs, chunk0 = [], [0], []
    first_chunk = 0
    for s0, s1 in zip(cu[:-1], cu[1:], strict=True):
        nt = -(-(s1 - s0) // C)
        ns = -(-nt // G)
        starts += [s0 + j * G * C for j in range(ns)]
        chunk0 += [first_chunk + j * G for j in range(ns)]
        offs.append(offs[-1] + ns)
        first_chunk += nt
    mk = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    return mk(starts + [cu[-1]]), mk(offs), mk(chunk0), offs[-1]
