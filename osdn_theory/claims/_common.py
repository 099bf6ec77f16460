"""Small shared pieces for the claim modules: seeded generators and random OSDN inputs (float64)."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

__all__ = ["generator", "np_rng", "perturbed_draws", "random_inputs", "sub_seed", "worst"]

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


@contextlib.contextmanager
def perturbed_draws(rel: float, seed: int = 0):
    """Multiply every floating draw of ``torch.randn``/``torch.rand``/``torch.randn_like``/``torch.rand_like``
    made inside the block by ``1 + rel·u`` (``u`` uniform, from its own generator seeded by ``seed``).

    This is how the verdict-invariance checks perturb a claim's inputs by a relative ``rel`` (e.g. 1e-15)
    without touching the claim: every claim draws its inputs through these functions. ``rand`` draws are
    perturbed downwards only (``1 − rel·u``, ``u ∈ [0, 1)``), so values stay in ``[0, 1)``. ``rel = 0`` is a
    no-op. Not thread-safe (it patches the ``torch`` module for the duration of the block).
    """
    from .._validate import check_scalar

    rel = check_scalar("rel", rel, 0.0, 1e-3)
    if rel == 0.0:
        yield
        return
    pg = torch.Generator()
    pg.manual_seed(sub_seed(seed, 0xBAD))
    originals = {name: getattr(torch, name) for name in ("randn", "rand", "randn_like", "rand_like")}

    def _scale(x: torch.Tensor, symmetric: bool) -> torch.Tensor:
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            return x
        u = originals["rand"](x.shape, generator=pg, dtype=torch.float64)
        f = (1 + rel * (2 * u - 1)) if symmetric else (1 - rel * u)
        return (x.double() * f).to(x.dtype)

    def wrap(name: str, symmetric: bool):
        fn = originals[name]

        def patched(*args, **kwargs):
            return _scale(fn(*args, **kwargs), symmetric)

        return patched

    try:
        torch.randn = wrap("randn", True)
        torch.rand = wrap("rand", False)
        torch.randn_like = wrap("randn_like", True)
        torch.rand_like = wrap("rand_like", False)
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)
