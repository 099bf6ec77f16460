"""Plain-torch twins of the Triton stages in :mod:`.stages` (same packed layout, same results).

Each function takes the packed tensors (``[N, H, ·]``, chunk ``bounds [NC, 2]``, ``cu_seqlens``) and loops
over chunks in Python; they exist to test each stage alone, on tiny shapes, in float64.
"""

from __future__ import annotations

import torch

__all__ = [
    "gram_solve_ref",
    "wy_factors_ref",
    "state_pass_ref",
    "output_ref",
    "d_scan_ref",
    "dv_local_ref",
    "dh_pass_ref",
    "bwd_dqk_ref",
    "bwd_wy_ref",
]


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


# ---------------------------------------------------------------------------------------------- backward


def _h(x: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
    """Rows ``t0:t1`` of a packed ``[N, H, ·]`` tensor as ``[H, n, ·]``."""
    return x[t0:t1].transpose(0, 1)


def dv_local_ref(q, kt, g, do, bounds, scale, C):
    """b1 twin: ``scale · tril₀(Γ ⊙ Q K̃ᵀ)ᵀ dO`` per chunk."""
    dv = torch.zeros_like(do)
    for _, t0, t1 in _chunks(bounds, C):
        P = _h(q, t0, t1) @ _h(kt, t0, t1).transpose(-1, -2)
        P = P.tril() if g is None else P * _decay(_h(g, t0, t1), False)
        dv[t0:t1] = (scale * P.transpose(-1, -2) @ _h(do, t0, t1)).transpose(0, 1)
    return dv


def dh_pass_ref(q, kt, w, g, do, dvl, dht, cu_seqlens, scale, C):
    """b2 twin, the reverse state recurrence: ``dh [NC, H, K, V]`` (gradient w.r.t. the state after each chunk),
    ``dU [N, H, V]`` and the gradient w.r.t. each sequence's initial state ``[S, H, K, V]``."""
    N, H, K = q.shape
    V = do.shape[-1]
    dhs, du, d0 = [], torch.zeros_like(do), []
    cu = cu_seqlens.tolist()
    for s in range(len(cu) - 1):
        dM = torch.zeros(H, K, V, dtype=q.dtype, device=q.device) if dht is None else dht[s].clone()
        starts = list(range(cu[s], cu[s + 1], C))
        per = [None] * len(starts)
        for j in reversed(range(len(starts))):
            t0, t1 = starts[j], min(starts[j] + C, cu[s + 1])
            per[j] = dM.clone()
            qc, ktc = _h(q, t0, t1), _h(kt, t0, t1)
            if g is not None:
                gc = _h(g, t0, t1)
                ktc = ktc * torch.exp(gc[:, -1:] - gc)[..., None]
                qc = qc * torch.exp(gc)[..., None]
            dU = _h(dvl, t0, t1) + ktc @ dM
            du[t0:t1] = dU.transpose(0, 1)
            if g is not None:
                dM = dM * torch.exp(gc[:, -1])[:, None, None]
            dM = dM + scale * qc.transpose(-1, -2) @ _h(do, t0, t1) - _h(w, t0, t1).transpose(-1, -2) @ dU
        dhs += per
        d0.append(dM)
    return torch.stack(dhs), du, torch.stack(d0)


def bwd_dqk_ref(q, kt, g, vnew, h, do, dh, du, bounds, scale, C):
    """b3 twin: ``dq``; the score and state-read parts of ``dk̃``; ``dW = −dU h_nᵀ``; with a gate, the decay
    terms of ``dg`` (else ``None``). ``h, dh: [NC, H, K, V]`` (start state and end-state gradient per chunk)."""
    dq, dkt, dw = torch.zeros_like(q), torch.zeros_like(q), torch.zeros_like(q)
    dg = torch.zeros_like(q[..., 0]) if g is not None else None
    for i, t0, t1 in _chunks(bounds, C):
        M, dM = h[i], dh[i]
        qc, ktc, U, dO, dU = (_h(x, t0, t1) for x in (q, kt, vnew, do, du))
        dQ = dO @ M.transpose(-1, -2)
        dKe = U @ dM.transpose(-1, -2)
        dW = -dU @ M.transpose(-1, -2)
        dP = dO @ U.transpose(-1, -2)
        S = qc @ ktc.transpose(-1, -2)
        if g is not None:
            gc = _h(g, t0, t1)
            dP = scale * dP * _decay(gc, False)
            dQ = scale * dQ * torch.exp(gc)[..., None]
            ke = torch.exp(gc[:, -1:] - gc)
            Z = dP * S
            Y = (dKe * ktc).sum(-1) * ke
            dgc = (qc * dQ).sum(-1) + Z.sum(-1) - Z.sum(-2) - Y
            dgc[:, -1] += Y.sum(-1) + torch.exp(gc[:, -1]) * (M * dM).sum((-1, -2))
            dg[t0:t1] = dgc.transpose(0, 1)
            dKe = dKe * ke[..., None]
        else:
            dP = scale * dP.tril()
            dQ = scale * dQ
        dq[t0:t1] = (dQ + dP @ ktc).transpose(0, 1)
        dkt[t0:t1] = (dKe + dP.transpose(-1, -2) @ qc).transpose(0, 1)
        dw[t0:t1] = dW.transpose(0, 1)
    return dq, dkt, dw, dg


def bwd_wy_ref(k, d, c, kt, v, beta, g, ai, dw, du, dkt, dg, bounds, C):
    """b4 twin: gradients through the WY factors, the solve, the Gram matrix, the decay and the write key
    ``k̃ = c · d ⊙ k`` (with the clip ``c = min(1, s_max / s_raw)``, ``s_raw = β Σ d k²``): ``(dk, dd or None,
    dv, dβ, d log α or None)``; ``dkt`` and ``dg`` are the partial gradients from :func:`bwd_dqk_ref`."""
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    dd = torch.zeros_like(k) if d is not None else None
    db = torch.zeros_like(beta)
    dla = torch.zeros_like(beta) if g is not None else None
    for _, t0, t1 in _chunks(bounds, C):
        n = t1 - t0
        kc, ktc, vc, dW, dU, dKt0 = (_h(x, t0, t1) for x in (k, kt, v, dw, du, dkt))
        b = _h(beta, t0, t1)  # [H, n]
        dc_ = _h(d, t0, t1) if d is not None else torch.ones_like(kc)
        Ai = _h(ai, t0, t1)[..., :n]
        Tm = Ai * b[:, None, :]
        kg = kc
        if g is not None:
            gc = _h(g, t0, t1)
            kg = kc * torch.exp(gc)[..., None]
        dT = dW @ kg.transpose(-1, -2) + dU @ vc.transpose(-1, -2)
        G = kc @ ktc.transpose(-1, -2)
        dv[t0:t1] = (Tm.transpose(-1, -2) @ dU).transpose(0, 1)
        dbc = (dT * Ai).sum(-2)
        dA = -Ai.transpose(-1, -2) @ (dT * b[:, None, :]) @ Ai.transpose(-1, -2)
        dL = dA.tril(-1)
        if g is not None:
            G = G * _decay(gc, True)
        dbc = dbc + (dL * G).sum(-1)
        dGe = dL * b[..., None]
        if g is not None:
            Z2 = dGe * G
            dgk = ((Tm.transpose(-1, -2) @ dW) * kg).sum(-1)
            dgt = _h(dg, t0, t1) + dgk + Z2.sum(-1) - Z2.sum(-2)
            dla[t0:t1] = dgt.flip(-1).cumsum(-1).flip(-1).transpose(0, 1)
            dGe = dGe * _decay(gc, True)
        dKt = dKt0 + dGe.transpose(-1, -2) @ kc
        cc = torch.ones_like(b) if c is None else _h(c, t0, t1)
        gam = torch.zeros_like(b)
        if c is not None:
            dsum = (dc_ * kc * kc).sum(-1)
            dcl = (dKt * dc_ * kc).sum(-1)
            s_raw = b * dsum
            gam = torch.where(cc < 1.0, -dcl * cc / torch.where(cc < 1.0, s_raw, 1.0), 0.0)
            dbc = dbc + gam * dsum
        dKg = Tm.transpose(-1, -2) @ dW
        if g is not None:
            dKg = dKg * torch.exp(gc)[..., None]
        dK = dKg + dGe @ ktc + cc[..., None] * dc_ * dKt + (2.0 * gam * b)[..., None] * dc_ * kc
        dk[t0:t1] = dK.transpose(0, 1)
        if d is not None:
            dd[t0:t1] = (cc[..., None] * kc * dKt + (gam * b)[..., None] * kc * kc).transpose(0, 1)
        db[t0:t1] = dbc.transpose(0, 1)
    return dk, dd, dv, db, dla
