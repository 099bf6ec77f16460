"""Small shared pieces for the claim modules: seeded generators and random OSDN inputs (float64)."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["generator", "np_rng", "random_inputs", "sub_seed", "worst"]

F64 = torch.float64


def worst(*values: float) -> float:
    """The largest of ``values``, NaN if any of them is NaN.

    Python's ``max`` drops a NaN that is not in first position (``max(0.1, nan) == 0.1``), so a claim that
    took the worst of several errors with ``max`` could pass although one of its checks produced NaN.
    """
    if not values:
        raise ValueError("values: expected at least one number, got none")
    vals = [float(x) for x in values]
    if any(math.isnan(x) for x in vals):
        return math.nan
    return max(vals)


def sub_seed(seed: int, *path: int) -> int:
    """A reproducible 63-bit child seed of ``seed`` along ``path`` (via ``numpy.random.SeedSequence``)."""
    ss = np.random.SeedSequence([int(seed), *map(int, path)])
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def generator(seed: int, *path: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, *path)``."""
    g = torch.Generator()
    g.manual_seed(sub_seed(seed, *path))
    return g


def np_rng(seed: int, *path: int) -> np.random.Generator:
    """A numpy ``Generator`` from ``SeedSequence([seed, *path])``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, path)]))


def random_inputs(
    g: torch.Generator,
    B: int,
    T: int,
    H: int,
    K: int,
    V: int,
    *,
    normalize: bool = True,
    d_box: tuple[float, float] | None = (0.5, 1.5),
    gated: bool = False,
):
    """Random float64 OSDN inputs in fla layout.

    Returns ``(q [B,T,H,K], k [B,T,H,K], v [B,T,H,V], beta [B,T,H], d [B,T,H,K] or None, alpha or None)``;
    keys are L2-normalized when ``normalize``; ``beta ∈ (0.05, 1]``; ``d`` uniform in ``d_box``;
    ``alpha ∈ (0.8, 1]`` when ``gated``.
    """
    q = torch.randn(B, T, H, K, generator=g, dtype=F64)
    k = torch.randn(B, T, H, K, generator=g, dtype=F64)
    if normalize:
        k = k / k.norm(dim=-1, keepdim=True)
    v = torch.randn(B, T, H, V, generator=g, dtype=F64)
    beta = 0.05 + 0.95 * torch.rand(B, T, H, generator=g, dtype=F64)
    d = None
    if d_box is not None:
        lo, hi = d_box
        d = lo + (hi - lo) * torch.rand(B, T, H, K, generator=g, dtype=F64)
    alpha = 0.8 + 0.2 * torch.rand(B, T, H, generator=g, dtype=F64) if gated else None
    return q, k, v, beta, d, alpha
