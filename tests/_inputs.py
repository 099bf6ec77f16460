"""Random OSDN inputs for tests (explicit generators, fla layout)."""

from __future__ import annotations

import torch


def random_inputs(
    B=2,
    T=13,
    H=2,
    K=5,
    V=4,
    *,
    seed=0,
    gated=False,
    with_d=True,
    init=False,
    dtype=torch.float64,
    normalize=True,
):
    """Inputs with unit-norm keys (so write gains stay moderate), β in [0.1, 1], d = exp(0.3 N(0,1))."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    k = r(B, T, H, K)
    if normalize:
        k = torch.nn.functional.normalize(k, dim=-1)
    out = dict(
        q=r(B, T, H, K),
        k=k,
        v=r(B, T, H, V),
        beta=0.1 + 0.9 * torch.rand(B, T, H, generator=g, dtype=torch.float64),
    )
    if with_d:
        out["d"] = torch.exp(0.3 * r(B, T, H, K))
    if gated:
        out["alpha"] = 0.5 + 0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    if init:
        out["initial_state"] = r(B, H, K, V)
    return {n: t.to(dtype) for n, t in out.items()}
