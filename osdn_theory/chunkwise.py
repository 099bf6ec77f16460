"""Chunkwise UT/WY form of OSDN in torch (spec §3, claim C3): the reference for the Triton kernel.

For one chunk of ``C`` tokens with start state ``S_0`` (math layout ``V×K``), rows ``K, K̃, Q ∈ R^{C×K}``,
``V ∈ R^{C×V}``, ``B = diag(β)`` and in-chunk cumulative log-decay ``g_r = Σ_{j≤r} log α_j``
(``g ≡ 0`` ungated), ``Γ_{r,i} = exp(g_r − g_i)``:

    A  = I + B · tril₋₁(Γ ⊙ K K̃ᵀ)          (unit lower triangular; rows read key, columns write key)
    T  = A⁻¹ B,   W = T diag(e^g) K,   Ũ = T V
    U  = Ũ − W S_0ᵀ                          (U's rows are u_r = β_r (v_r − α_r S_{r−1} k_r))
    S_C = e^{g_C} S_0 + Uᵀ diag(e^{g_C − g}) K̃
    O  = scale · (diag(e^g) Q S_0ᵀ + tril₀(Γ ⊙ Q K̃ᵀ) U)

Derivation (gated): ``S_r = α_r S_{r−1} + u_r k̃_rᵀ`` unrolls to ``S_r = e^{g_r} S_0 + Σ_{i≤r} e^{g_r − g_i} u_i k̃_iᵀ``;
substituting in ``u_r = β_r v_r − β_r α_r S_{r−1} k_r`` gives the triangular system above. With ``α ≡ 1`` it
is the ungated form of the spec. All chunks' triangular solves run batched; only the cheap inter-chunk
state pass is a Python loop over ``⌈T / C⌉`` chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import as_tensor, check_bool, check_range, check_same, check_scalar, check_shape
from .recurrences import _write_key, prepare_inputs

__all__ = ["osdn_chunkwise", "chunk_factors"]


def _pad_time(x: torch.Tensor, Tp: int, value: float = 0.0) -> torch.Tensor:
    """Pad dim 1 (time) of ``x`` to length ``Tp``."""
    pad = Tp - x.shape[1]
    if pad == 0:
        return x
    spec = [0, 0] * (x.ndim - 2) + [0, pad]
    return F.pad(x, spec, value=value)


def _decay_matrix(g: torch.Tensor) -> torch.Tensor:
    """``Γ_{r,i} = exp(g_r − g_i)`` for ``i ≤ r`` (the exponent is masked before ``exp``; 1 above): ``[..., C, C]``."""
    return torch.exp((g[..., :, None] - g[..., None, :]).tril())


def _chunk_factors(k, kt, beta, g, decay):
    """:func:`chunk_factors` without validation; ``decay = _decay_matrix(g)`` (or None) is passed in so that
    :func:`osdn_chunkwise` forms it once for the Gram matrix and the intra-chunk scores."""
    C = k.shape[-2]
    gram = k @ kt.transpose(-1, -2)  # (K K̃ᵀ)_{r,i} = k_rᵀ k̃_i
    if decay is not None:
        gram = gram * decay
    eye = torch.eye(C, dtype=k.dtype, device=k.device)
    A = eye + beta[..., :, None] * gram.tril(-1)
    T = torch.linalg.solve_triangular(A, torch.diag_embed(beta), upper=False, unitriangular=True)
    kg = k if g is None else k * torch.exp(g)[..., None]
    return T, T @ kg


def _state_keys(k, kt, decay_to_end):
    """Rows written into the state at a chunk's end: ``diag(e^{g_C − g}) K̃`` (``K̃`` when ungated).

    Only the write key ``kt`` enters; the read key ``k`` is passed so that the mutation suite
    (:mod:`osdn_theory.mutants`) can plant the bug "state update with ``K`` instead of ``K̃``" here.
    """
    return kt if decay_to_end is None else kt * decay_to_end[..., None]


def chunk_factors(k, kt, beta, g=None):
    """Per-chunk WY factors for chunked inputs.

    Args:
        k: read keys of shape ``[..., C, K]`` (e.g. ``[B, H, NT, C, K]``).
        kt: write keys ``k̃`` of the same shape as ``k``.
        beta: write strengths of shape ``[..., C]`` in [0, 1] (0 on padded tokens).
        g: cumulative in-chunk log-decay of shape ``[..., C]``, ``≤ 0``; ``None`` (default) is ungated.

    Returns:
        ``(T, W)`` with ``T = (I + B·tril₋₁(Γ ⊙ K K̃ᵀ))⁻¹ B: [..., C, C]`` and ``W = T diag(e^g) K: [..., C, K]``.
    """
    k = as_tensor("k", k)
    if k.ndim < 2 or k.shape[-2] == 0:
        raise ValueError(f"k: expected shape [..., C, K] with C >= 1, got {tuple(k.shape)}")
    check_range("k", k)
    kt = as_tensor("kt", kt)
    check_shape("kt", kt, list(k.shape), "[..., C, K] (same as k)")
    check_same("kt", kt, "k", k)
    check_range("kt", kt)
    beta = as_tensor("beta", beta)
    check_shape("beta", beta, list(k.shape[:-1]), "[..., C]")
    check_same("beta", beta, "k", k)
    check_range("beta", beta, 0.0, 1.0)
    if g is not None:
        g = as_tensor("g", g)
        check_shape("g", g, list(k.shape[:-1]), "[..., C]")
        check_same("g", g, "k", k)
        check_range("g", g, None, 0.0)
    return _chunk_factors(k, kt, beta, g, None if g is None else _decay_matrix(g))


def osdn_chunkwise(
    q,
    k,
    v,
    beta,
    d=None,
    *,
    alpha=None,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    s_max: float | None = None,
    chunk_size: int = 64,
    dtype: torch.dtype | None = torch.float64,
):
    """OSDN in chunkwise UT/WY form; same arguments and results as :func:`osdn_recurrent`.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``; beta, alpha: ``[B, T, H]``; d: ``[B, T, H, K]`` or
            broadcastable (``None`` = DeltaNet); initial_state: ``[B, H, K, V]``.
        chunk_size: tokens per chunk (any positive integer; ``T`` need not be a multiple — the tail chunk is
            zero-padded with ``β = 0``, which leaves state and outputs unchanged).
        dtype: computation dtype, float64 by default.

    Returns:
        ``(o, final_state)``: ``o: [B, T, H, V]``, ``final_state: [B, H, K, V]`` or ``None``.
    """
    chunk_size = int(check_scalar("chunk_size", chunk_size, 1, None, integer=True))
    check_bool("output_final_state", output_final_state)
    x = prepare_inputs(
        q, k, v, beta, d, alpha=alpha, scale=scale, initial_state=initial_state, s_max=s_max, dtype=dtype
    )
    B, T, H, K, V = x.shape
    C = chunk_size
    NT = -(-T // C)
    Tp = NT * C
    kt, _, _ = _write_key(x.k, x.beta, x.d, x.s_max)

    def chunks(t):  # [B, Tp, H, ...] -> [B, H, NT, C, ...]
        t = _pad_time(t, Tp)
        t = t.reshape(B, NT, C, H, *t.shape[3:])
        return t.permute(0, 3, 1, 2, *range(4, t.ndim)).contiguous()

    qc, kc, ktc, vc, bc = chunks(x.q), chunks(x.k), chunks(kt), chunks(x.v), chunks(x.beta)
    if x.alpha is not None:
        g = chunks(torch.log(x.alpha)).cumsum(-1)  # padded tail: log 1 = 0, no decay
        eg = torch.exp(g)  # [B,H,NT,C]
        decay_to_end = torch.exp(g[..., -1:] - g)  # e^{g_C − g_r}
        score_mask = _decay_matrix(g)  # Γ, shared by the Gram matrix and the scores
    else:
        g = score_mask = decay_to_end = None
    Tm, W = _chunk_factors(kc, ktc, bc, g, score_mask)  # [B,H,NT,C,C], [B,H,NT,C,K]
    U_tilde = Tm @ vc  # [B,H,NT,C,V]
    scores = qc @ ktc.transpose(-1, -2)  # Q K̃ᵀ
    if g is not None:
        scores = scores * score_mask
    scores = scores.tril()
    ktc_end = _state_keys(kc, ktc, decay_to_end)
    qg = qc if g is None else qc * eg[..., None]

    M = (
        torch.zeros(B, H, K, V, dtype=x.k.dtype, device=x.k.device)
        if x.initial_state is None
        else x.initial_state.clone()
    ).reshape(B * H, K, V)  # M = S_0ᵀ
    flat = lambda t: t.reshape(B * H, NT, *t.shape[3:])
    W, U_tilde, qg, scores = flat(W), flat(U_tilde), flat(qg), flat(scores)
    ktc_end_T = flat(ktc_end).transpose(-1, -2)  # [BH, NT, K, C]
    o = torch.empty(B * H, NT, C, V, dtype=x.k.dtype, device=x.k.device)
    chunk_decay = None if g is None else torch.exp(g[..., -1]).reshape(B * H, NT)
    for n in range(NT):
        U = torch.baddbmm(U_tilde[:, n], W[:, n], M, alpha=-1.0)  # Ũ − W S_0ᵀ
        torch.baddbmm(torch.bmm(scores[:, n], U), qg[:, n], M, out=o[:, n])
        if chunk_decay is not None:
            M = M * chunk_decay[:, n, None, None]
        M = torch.baddbmm(M, ktc_end_T[:, n], U)
    o.mul_(x.scale)
    M = M.reshape(B, H, K, V)
    o = o.reshape(B, H, Tp, V)[:, :, :T].permute(0, 2, 1, 3).contiguous()
    return o, (M if output_final_state else None)
