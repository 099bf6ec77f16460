"""Plain-torch twins of the Triton stages in :mod:`.stages` (same packed layout, same results).

Each function takes the packed tensors (``[N, H, ·]``, chunk ``bounds [NC, 2]``, ``cu_seqlens``) and loops
over chunks in Python; they exist to test each stage alone, on tiny shapes, in float64.
"""

from __future__ import annotations

import torch

__all__ = ["gram_solve_ref", "wy_factors_ref", "state_pass_ref", "output_ref", "d_scan_ref"]


def _chunks(bounds: torch.Tensor, C: int):
    for i, (t0, end) in enumerate(bounds.tolist()):
        yield i, t0, min(t0 + C, end)


def _decay(g: torch.Tensor, strict: bool) -> torch.Tensor:
    """``Γ_{r,i} = exp(g_r − g_i)`` on the lower triangle (strict or not), zero above; ``g: [H, C]``."""
    n = g.shape[-1]
    mask = torch.ones(n, n, dtype=torch.bool, device=g.device).tril(-1 if strict else 0)
    diff = (g[..., :, None] - g[..., None, :]).masked_fill(~mask, 0.0)
    return torch.exp(diff) * mask


def gram_solve_ref(k, d, beta, log_alpha, bounds, s_max, C):
    """Stage 1 twin: ``(kt, c, g, Ai)`` with ``Ai`` rows stored per token ``[N, H, C]`` (padded columns zero)."""
    N, H, K = k.shape
    kt = k if d is None else d * k
    c = g = None
    if s_max is not None:
        s_raw = beta * (k * kt).sum(-1)
        c = torch.where(s_raw > s_max, s_max / torch.where(s_raw > s_max, s_raw, 1.0), 1.0)
        kt = kt * c[..., None]
    ai = torch.zeros(N, H, C, dtype=k.dtype, device=k.device)
    if log_alpha is not None:
        g = torch.zeros(N, H, dtype=k.dtype, device=k.device)
    for _, t0, t1 in _chunks(bounds, C):
        n = t1 - t0
        kc, ktc, bc = k[t0:t1].transpose(0, 1), kt[t0:t1].transpose(0, 1), beta[t0:t1].transpose(0, 1)
        G = kc @ ktc.transpose(-1, -2)  # [H, n, n]
        if log_alpha is not None:
            gc = log_alpha[t0:t1].transpose(0, 1).cumsum(-1)
            g[t0:t1] = gc.transpose(0, 1)
            G = G * _decay(gc, True)
        A = torch.eye(n, dtype=k.dtype, device=k.device) + bc[..., :, None] * G.tril(-1)
        ai[t0:t1, :, :n] = torch.linalg.inv(A).transpose(0, 1)
    return kt, c, g, ai


def wy_factors_ref(k, v, beta, g, ai, bounds, C):
    """Stage 2 twin: ``W = A⁻¹ diag(β) diag(e^g) K`` and ``Ũ = A⁻¹ diag(β) V``."""
    w, u = torch.zeros_like(k), torch.zeros_like(v)
    for _, t0, t1 in _chunks(bounds, C):
        n = t1 - t0
        Tm = ai[t0:t1, :, :n].transpose(0, 1) * beta[t0:t1].transpose(0, 1)[:, None, :]
        kg = k[t0:t1] if g is None else k[t0:t1] * torch.exp(g[t0:t1])[..., None]
        w[t0:t1] = (Tm @ kg.transpose(0, 1)).transpose(0, 1)
        u[t0:t1] = (Tm @ v[t0:t1].transpose(0, 1)).transpose(0, 1)
    return w, u


def state_pass_ref(kt, w, u, g, h0, cu_seqlens, C):
    """Stage 3 twin: chunk start states ``h [NC, H, K, V]``, ``v_new [N, H, V]`` and final states ``[S, H, K, V]``."""
    N, H, K = kt.shape
    V = u.shape[-1]
    hs, vnew, finals = [], torch.zeros_like(u), []
    cu = cu_seqlens.tolist()
    for s in range(len(cu) - 1):
        M = torch.zeros(H, K, V, dtype=kt.dtype, device=kt.device) if h0 is None else h0[s].clone()
        for t0 in range(cu[s], cu[s + 1], C):
            t1 = min(t0 + C, cu[s + 1])
            hs.append(M.clone())
            U = u[t0:t1].transpose(0, 1) - w[t0:t1].transpose(0, 1) @ M  # [H, n, V]
            vnew[t0:t1] = U.transpose(0, 1)
            ktc = kt[t0:t1].transpose(0, 1)
            if g is not None:
                gc = g[t0:t1].transpose(0, 1)
                ktc = ktc * torch.exp(gc[:, -1:] - gc)[..., None]
                M = M * torch.exp(gc[:, -1])[:, None, None]
            M = M + ktc.transpose(-1, -2) @ U
        finals.append(M)
    return torch.stack(hs), vnew, torch.stack(finals)


def output_ref(q, kt, vnew, h, g, bounds, scale, C):
    """Stage 4 twin: ``O = scale · (diag(e^g) Q h_n + tril₀(Γ ⊙ Q K̃ᵀ) U)``."""
    o = torch.zeros_like(vnew)
    for i, t0, t1 in _chunks(bounds, C):
        qc, ktc, U = q[t0:t1].transpose(0, 1), kt[t0:t1].transpose(0, 1), vnew[t0:t1].transpose(0, 1)
        P = qc @ ktc.transpose(-1, -2)
        if g is None:
            P = P.tril()
        else:
            gc = g[t0:t1].transpose(0, 1)
            P = P * _decay(gc, False)
            qc = qc * torch.exp(gc)[..., None]
        o[t0:t1] = (scale * (qc @ h[i] + P @ U)).transpose(0, 1)
    return o


def d_scan_ref(uhat, w, ut, h0, cu_seqlens, C, d_min):
    """Twin of the d rule's scan kernel: per sequence, the state ``h`` (from ``h0: [S, H, K]``) goes through
    its chunks of ``C`` tokens: ``U = Ũ₀ − W h``, ``d_r = max(h + Σ_{i<r} U_i û_i, d_min)``,
    ``h ← h + Σ_i U_i û_i``. ``uhat, w: [N, H, K]``, ``ut: [N, H, V]`` (column 0 used); returns ``d: [N, H, K]``."""
    d = torch.zeros_like(uhat)
    cu = cu_seqlens.tolist()
    for s in range(len(cu) - 1):
        h = h0[s].clone()  # [H, K]
        for t0 in range(cu[s], cu[s + 1], C):
            t1 = min(t0 + C, cu[s + 1])
            U = ut[t0:t1, :, 0] - (w[t0:t1] * h).sum(-1)  # [n, H]
            inc = U[..., None] * uhat[t0:t1]  # [n, H, K]
            d[t0:t1] = h + torch.cumsum(inc, 0) - inc
            h = h + inc.sum(0)
    return d.clamp_min(d_min)
