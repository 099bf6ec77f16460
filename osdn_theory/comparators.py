"""Right-Newton comparators for OSDN (spec §6, claims C6–C8), float64, fla layout, batched over B and H.

Every comparator is a preconditioner ``P_t`` plugged into the right-preconditioned write of spec §2::

    e_t = S_{t−1} k_t − v_t,      S_t = S_{t−1} − β_t e_t (P_t k_t)ᵀ,      write gain s_t = β_t k_tᵀ P_t k_t,

with the memory ``S ∈ R^{V×K}`` stored as the fla state ``Sᵀ: [B, H, K, V]``. OSDN is the diagonal case
``P_t = diag(d_t)`` (write key ``k̃ = d ⊙ k``); the comparators are:

* general reference, any full ``P_t``: :func:`right_preconditioned_recurrent`;
* RLS (cumulative right-Newton), ``P_t = H_t⁻¹``, ``H_t = γ H_{t−1} + k_t k_tᵀ``, ``H_0 = λ I``, ``β = 1``:
  :func:`rls`, closed form :func:`ridge_solution`;
* windowed right-Newton, ``H_t = λ I + Σ_{last W} k kᵀ``: :func:`windowed_rls`,
  closed form :func:`windowed_ridge_solution`;
* Longhorn, one RLS step from ``H_{t−1} = I/β`` (key ``β k/(1 + β kᵀk)``): :func:`longhorn_write_key`;
* diagonal (Jacobi) ``d_t = c · diag(H_t)⁻¹``: :func:`jacobi_d`;
* token-local Newton ``d_t = 1/(β_t ‖k_t‖²)`` (``s_t = 1``): :func:`token_local_newton_d`;
* best fixed diagonal in hindsight ``argmin_{d ∈ box} Σ_t (1 − β_t u_tᵀ d)²``: :func:`best_fixed_diagonal`;
* stationary fixed point ``d* = a⁻¹ / (β (K + 2))``: :func:`fixed_point_d`;
* batch right-Newton ``P* = (KᵀK)⁺`` for ``F(S) = ½‖S Kᵀ − Vᵀ‖²_F``: :func:`batch_right_newton`.

Spec erratum (§6, forgetting ``γ < 1``): the leverage that gives ``s_t = a_t / (1 + a_t)`` is
``a_t = k_tᵀ (γ H_{t−1})⁻¹ k_t``; the spec writes ``H_{t−1}⁻¹``, which is the same only for ``γ = 1``.
:func:`rls` with ``variant="erratum"`` runs the recursion with the spec's leverage; it does not reproduce
the ridge minimiser (the negative control of claim C8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._validate import (
    as_tensor,
    broadcast,
    check_bool,
    check_choice,
    check_features,
    check_range,
    check_scalar,
    check_shape,
    keys_and_beta,
)
from .preconditioners import _ratio
from .recurrences import Diagnostics, prepare_inputs

__all__ = [
    "RLSDiagnostics",
    "BestFixedDiagonal",
    "right_preconditioned_recurrent",
    "rls",
    "ridge_solution",
    "windowed_rls",
    "windowed_ridge_solution",
    "longhorn_write_key",
    "jacobi_d",
    "token_local_newton_d",
    "feedback_losses",
    "best_fixed_diagonal",
    "fixed_point_d",
    "expected_feedback",
    "batch_objective",
    "batch_right_newton",
    "batch_right_newton_step",
]


@dataclass(frozen=True)
class RLSDiagnostics(Diagnostics):
    """:class:`~osdn_theory.recurrences.Diagnostics` plus right-Newton quantities (``[B, T, H, ...]``).

    ``leverage`` is ``a_t = k_tᵀ (γ H_{t−1})⁻¹ k_t`` ``[B, T, H]`` (for :func:`windowed_rls`: the leverage of
    the up-date, ``k_tᵀ H̄⁻¹ k_t`` with ``H̄`` the Gram of the previous window); ``write_key_`` is the write key
    ``H_t⁻¹ k_t`` ``[B, T, H, K]``; ``states`` holds the state after every token ``[B, T, H, K, V]`` when
    requested (``keep_states=True``), else ``None``.
    """

    leverage: torch.Tensor | None = None
    write_key_: torch.Tensor | None = None
    states: torch.Tensor | None = None


@dataclass(frozen=True)
class BestFixedDiagonal:
    """Result of :func:`best_fixed_diagonal`: minimiser ``d: [B, H, K]`` and minimal loss ``[B, H]``."""

    d: torch.Tensor
    loss: torch.Tensor
    box: tuple[float, float]


# ----------------------------------------------------------------------------------------------------------
# internal utilities


def _unit_beta(k: torch.Tensor) -> torch.Tensor:
    return torch.ones(k.shape[:3], dtype=k.dtype, device=k.device)


def _zeros_state(B: int, H: int, K: int, V: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(B, H, K, V, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------------------------------
# general right-preconditioned reference


def right_preconditioned_recurrent(
    q,
    k,
    v,
    beta,
    P,
    *,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    diagnostics: bool = False,
):
    """Right-preconditioned delta rule with a full matrix preconditioner (reference only, float64).

    Per head and token (math layout ``S ∈ R^{V×K}``)::

        e_t = S_{t−1} k_t − v_t,   S_t = S_{t−1} − β_t e_t (P_t k_t)ᵀ
                                       = S_{t−1}(I − β_t k_t k_tᵀ P_tᵀ) + β_t v_t (P_t k_t)ᵀ

    (``P_t`` symmetric in every use here). ``P_t = diag(d_t)`` is OSDN, ``P_t = H_t⁻¹`` with ``β = 1`` is RLS.

    Args:
        q: queries of shape ``[B, T, H, K]``.
        k: read/erase keys of shape ``[B, T, H, K]``.
        v: values of shape ``[B, T, H, V]``.
        beta: write strengths of shape ``[B, T, H]`` in (0, 1].
        P: preconditioners of shape ``[B, T, H, K, K]`` or anything broadcastable to it (``[K, K]``,
            ``[H, K, K]``, ...). The write key is ``P_t k_t``.
        scale: read-out scale, default ``K ** -0.5``; ``o_t = scale · S_t q_t``.
        initial_state: optional state ``[B, H, K, V]`` (default zeros).
        output_final_state: return the final state ``[B, H, K, V]`` (else ``None``).
        diagnostics: also return :class:`RLSDiagnostics` (``leverage`` is ``None``; ``write_key_`` = ``P k``).

    Returns:
        ``(o, final_state)`` or ``(o, final_state, diagnostics)``; ``o: [B, T, H, V]``.
    """
    x = prepare_inputs(q, k, v, beta, None, scale=scale, initial_state=initial_state, dtype=torch.float64)
    check_bool("output_final_state", output_final_state)
    check_bool("diagnostics", diagnostics)
    B, T, H, K, V = x.shape
    P = as_tensor("P", P, dtype=torch.float64)
    P = broadcast("P", P, (B, T, H, K, K), "[B, T, H, K, K]")
    check_range("P", P)
    kt = torch.einsum("bthij,bthj->bthi", P, x.k)
    s = x.beta * (x.k * kt).sum(-1)
    M = _zeros_state(B, H, K, V, x.k) if x.initial_state is None else x.initial_state.clone()
    o = torch.empty(B, T, H, V, dtype=x.k.dtype)
    e_pre, r_post = torch.empty_like(o), torch.empty_like(o)
    for t in range(T):
        k_t = x.k[:, t]
        e = torch.einsum("bhk,bhkv->bhv", k_t, M) - x.v[:, t]
        M = M - x.beta[:, t, :, None, None] * kt[:, t, :, :, None] * e[..., None, :]
        o[:, t] = x.scale * torch.einsum("bhk,bhkv->bhv", x.q[:, t], M)
        e_pre[:, t] = e
        r_post[:, t] = torch.einsum("bhk,bhkv->bhv", k_t, M) - x.v[:, t]
    final = M if output_final_state else None
    if diagnostics:
        return (
            o,
            final,
            RLSDiagnostics(e_pre, r_post, s, torch.ones_like(s), leverage=None, write_key_=kt, states=None),
        )
    return o, final


# ----------------------------------------------------------------------------------------------------------
# RLS and its closed form


class _RLSRecorder:
    """Per-token outputs and diagnostics shared by :func:`rls` and :func:`windowed_rls`."""

    def __init__(self, B: int, T: int, H: int, K: int, V: int, keep_states: bool):
        self.o = torch.empty(B, T, H, V, dtype=torch.float64)
        self.e_pre, self.r_post = torch.empty_like(self.o), torch.empty_like(self.o)
        self.lev = torch.empty(B, T, H, dtype=torch.float64)
        self.s = torch.empty(B, T, H, dtype=torch.float64)
        self.kts = torch.empty(B, T, H, K, dtype=torch.float64)
        self.states = torch.empty(B, T, H, K, V, dtype=torch.float64) if keep_states else None

    def record(self, t: int, x, M: torch.Tensor, e: torch.Tensor, a: torch.Tensor, kt: torch.Tensor) -> None:
        k_t = x.k[:, t]
        self.o[:, t] = x.scale * torch.einsum("bhk,bhkv->bhv", x.q[:, t], M)
        self.e_pre[:, t] = e
        self.r_post[:, t] = torch.einsum("bhk,bhkv->bhv", k_t, M) - x.v[:, t]
        self.lev[:, t] = a
        self.s[:, t] = (k_t * kt).sum(-1)
        self.kts[:, t] = kt
        if self.states is not None:
            self.states[:, t] = M

    def result(self, M: torch.Tensor, output_final_state: bool, diagnostics: bool):
        final = M if output_final_state else None
        if diagnostics:
            diag = RLSDiagnostics(
                self.e_pre,
                self.r_post,
                self.s,
                torch.ones_like(self.s),
                leverage=self.lev,
                write_key_=self.kts,
                states=self.states,
            )
            return self.o, final, diag
        return self.o, final


def _rls_write_key(Pk: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """RLS write key ``k̃_t = (γH_{t−1})⁻¹k_t / (1 + a_t)`` from ``Pk = (γH_{t−1})⁻¹k_t`` and the leverage ``a_t``."""
    return Pk / (1.0 + a)[..., None]


def rls(
    q,
    k,
    v,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    diagnostics: bool = False,
    keep_states: bool = False,
    variant: str = "exact",
):
    """Recursive least squares: the cumulative right-Newton comparator (spec §6, claim C8), float64.

    Per head, with ``P_t = H_t⁻¹`` kept by Sherman–Morrison in ``O(K²)`` per token::

        H_t = γ H_{t−1} + k_t k_tᵀ,   H_0 = λ I
        a_t = k_tᵀ (γ H_{t−1})⁻¹ k_t                         (leverage; spec erratum: not H_{t−1}⁻¹ when γ<1)
        H_t⁻¹ = (γH_{t−1})⁻¹ − (γH_{t−1})⁻¹ k_t k_tᵀ (γH_{t−1})⁻¹ / (1 + a_t)
        k̃_t = H_t⁻¹ k_t = (γH_{t−1})⁻¹ k_t / (1 + a_t)        (write key, β = 1)
        S_t = S_{t−1} − (S_{t−1} k_t − v_t) k̃_tᵀ,            s_t = k_tᵀ k̃_t = a_t / (1 + a_t)

    ``S_t`` equals the weighted ridge minimiser of :func:`ridge_solution` at every ``t`` (with a nonzero
    ``initial_state`` ``S_0`` the regulariser is ``½λγ^t‖S − S_0‖²``).

    Args:
        q: queries ``[B, T, H, K]``; k: keys ``[B, T, H, K]``; v: values ``[B, T, H, V]``.
        gamma: forgetting factor in (0, 1], default 1.
        lam: ridge ``λ > 0``, default 1 (``H_0 = λ I``).
        scale: read-out scale, default ``K ** -0.5``.
        initial_state: optional ``[B, H, K, V]`` (default zeros).
        output_final_state: return the final state ``[B, H, K, V]``.
        diagnostics: also return :class:`RLSDiagnostics` (write gain ``s_t``, leverage ``a_t``, write key).
        keep_states: store every ``S_t`` (``[B, T, H, K, V]``) in the diagnostics (needs ``diagnostics``).
        variant: ``"exact"`` (default) or ``"erratum"``: the negative control that uses the spec's
            leverage ``a_t = k_tᵀ H_{t−1}⁻¹ k_t`` and write key ``H_{t−1}⁻¹ k_t / (1 + a_t)`` (forgetting
            applied to the Hessian's bookkeeping but not to the write); equal to ``"exact"`` only for
            ``γ = 1``.

    Returns:
        ``(o, final_state)`` or ``(o, final_state, RLSDiagnostics)``.
    """
    gamma = check_scalar("gamma", gamma, 0.0, 1.0, lo_open=True)
    lam = check_scalar("lam", lam, 0.0, None, lo_open=True)
    check_choice("variant", variant, ("exact", "erratum"))
    check_bool("output_final_state", output_final_state)
    check_bool("diagnostics", diagnostics)
    check_bool("keep_states", keep_states)
    if keep_states and not diagnostics:
        raise ValueError("keep_states: expected diagnostics=True with it, got diagnostics=False")
    k_ = as_tensor("k", k, dtype=torch.float64)
    check_shape("k", k_, [None, None, None, None], "[B, T, H, K]")
    x = prepare_inputs(
        q, k_, v, _unit_beta(k_), None, scale=scale, initial_state=initial_state, dtype=torch.float64
    )
    B, T, H, K, V = x.shape
    eye = torch.eye(K, dtype=torch.float64)
    Pinv = (eye / lam).expand(B, H, K, K).clone()  # H_0⁻¹
    M = _zeros_state(B, H, K, V, x.k) if x.initial_state is None else x.initial_state.clone()
    rec = _RLSRecorder(B, T, H, K, V, keep_states)
    for t in range(T):
        k_t = x.k[:, t]  # [B,H,K]
        Pg = Pinv / gamma  # (γ H_{t−1})⁻¹
        Pgk = torch.einsum("bhij,bhj->bhi", Pg, k_t)
        ag = (k_t * Pgk).sum(-1)  # a_t = k_tᵀ (γ H_{t−1})⁻¹ k_t  [B,H]
        if variant == "exact":
            Pk, a = Pgk, ag
        else:  # the spec's leverage k_tᵀ H_{t−1}⁻¹ k_t = γ a_t, with the matching key
            Pk, a = gamma * Pgk, gamma * ag
        kt = _rls_write_key(Pk, a)
        Pinv = Pg - Pgk[..., :, None] * Pgk[..., None, :] / (1.0 + ag)[..., None, None]
        Pinv = 0.5 * (Pinv + Pinv.transpose(-1, -2))
        e = torch.einsum("bhk,bhkv->bhv", k_t, M) - x.v[:, t]
        M = M - kt[..., :, None] * e[..., None, :]
        rec.record(t, x, M, e, a, kt)
    return rec.result(M, output_final_state, diagnostics)


def _keys_values_at(k, v, t):
    """Checked float64 ``k: [B, T, H, K]``, ``v: [B, T, H, V]`` (finite) and a token count ``0 ≤ t ≤ T``."""
    k = as_tensor("k", k, dtype=torch.float64)
    check_shape("k", k, [None, None, None, None], "[B, T, H, K]")
    B, T, H, _ = k.shape
    v = as_tensor("v", v, dtype=torch.float64)
    check_shape("v", v, [B, T, H, None], "[B, T, H, V]")
    check_range("k", k)
    check_range("v", v)
    return k, v, check_scalar("t", t, 0, T, integer=True)


def ridge_solution(k, v, t: int, *, gamma: float = 1.0, lam: float = 1.0, initial_state=None) -> torch.Tensor:
    """Closed-form weighted ridge minimiser after the first ``t`` tokens (claim C8), state layout.

    ``S_t = argmin_S ½ Σ_{i≤t} γ^{t−i} ‖S k_i − v_i‖² + ½ λ γ^t ‖S − S_0‖²_F``
    ``    = (Σ_{i≤t} γ^{t−i} v_i k_iᵀ + λγ^t S_0) (Σ_{i≤t} γ^{t−i} k_i k_iᵀ + λγ^t I)⁻¹``.

    Args:
        k: keys ``[B, T, H, K]``; v: values ``[B, T, H, V]``.
        t: number of tokens included, ``0 ≤ t ≤ T`` (``t = 0`` gives ``S_0``).
        gamma: forgetting factor in (0, 1]; lam: ridge ``λ > 0``.
        initial_state: optional ``S_0ᵀ`` of shape ``[B, H, K, V]`` (default zeros).

    Returns:
        ``S_tᵀ`` of shape ``[B, H, K, V]`` (float64).
    """
    k, v, t = _keys_values_at(k, v, t)
    B, T, H, K = k.shape
    gamma = check_scalar("gamma", gamma, 0.0, 1.0, lo_open=True)
    lam = check_scalar("lam", lam, 0.0, None, lo_open=True)
    V = v.shape[-1]
    S0 = torch.zeros(B, H, K, V, dtype=torch.float64)
    if initial_state is not None:
        S0 = as_tensor("initial_state", initial_state, dtype=torch.float64)
        check_shape("initial_state", S0, [B, H, K, V], "[B, H, K, V]")
        check_range("initial_state", S0)
    w = gamma ** torch.arange(t - 1, -1, -1, dtype=torch.float64)  # γ^{t−i}, i = 1..t
    kk, vv = k[:, :t], v[:, :t]
    G = torch.einsum("t,bthi,bthj->bhij", w, kk, kk) + lam * gamma**t * torch.eye(K, dtype=torch.float64)
    C = torch.einsum("t,bthi,bthv->bhiv", w, kk, vv) + lam * gamma**t * S0
    return torch.linalg.solve(G, C)  # Sᵀ = G⁻¹ (Σ k vᵀ + λγ^t S_0ᵀ)


# ----------------------------------------------------------------------------------------------------------
# windowed right-Newton


def windowed_rls(
    q,
    k,
    v,
    *,
    window: int,
    lam: float = 1.0,
    scale: float | None = None,
    output_final_state: bool = False,
    diagnostics: bool = False,
    keep_states: bool = False,
):
    """Sliding-window right-Newton comparator: ridge over the last ``W`` tokens, rank-2 update per token.

    ``S_t = argmin_S ½ Σ_{i=max(1,t−W+1)}^{t} ‖S k_i − v_i‖² + ½ λ ‖S‖²``
    (see :func:`windowed_ridge_solution`), computed recursively with ``P = H⁻¹``, ``H = λ I + Σ_window k kᵀ``:

        up-date   (token t enters):  S ← S − (S k_t − v_t) (P⁺ k_t)ᵀ,
                                      P⁺ = P − P k kᵀ P / (1 + kᵀ P k)
        down-date (token j = t−W leaves): S ← S + (S k_j − v_j) (P⁻ k_j)ᵀ,
                                      P⁻ = P⁺ + P⁺ k_j k_jᵀ P⁺ / (1 − k_jᵀ P⁺ k_j)

    (check for the down-date: ``S⁻ H⁻ = S H − S k_j k_jᵀ + (S k_j − v_j) k_jᵀ = C − v_j k_jᵀ``). The up-date
    comes first so that ``H`` stays ``⪰ λ I`` throughout.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        window: ``W ≥ 1`` tokens; lam: ridge ``λ > 0``; scale: read-out scale (default ``K ** -0.5``).
        output_final_state, diagnostics, keep_states: as in :func:`rls`. ``write_gain`` is the up-date's
            ``s_t = kᵀ P⁺ k``; ``residual_post`` is measured after both up- and down-date.

    Returns:
        ``(o, final_state)`` or ``(o, final_state, RLSDiagnostics)``.
    """
    window = check_scalar("window", window, 1, None, integer=True)
    lam = check_scalar("lam", lam, 0.0, None, lo_open=True)
    check_bool("output_final_state", output_final_state)
    check_bool("diagnostics", diagnostics)
    check_bool("keep_states", keep_states)
    if keep_states and not diagnostics:
        raise ValueError("keep_states: expected diagnostics=True with it, got diagnostics=False")
    k_ = as_tensor("k", k, dtype=torch.float64)
    check_shape("k", k_, [None, None, None, None], "[B, T, H, K]")
    x = prepare_inputs(q, k_, v, _unit_beta(k_), None, scale=scale, dtype=torch.float64)
    B, T, H, K, V = x.shape
    Pinv = (torch.eye(K, dtype=torch.float64) / lam).expand(B, H, K, K).clone()
    M = _zeros_state(B, H, K, V, x.k)
    rec = _RLSRecorder(B, T, H, K, V, keep_states)
    for t in range(T):
        k_t = x.k[:, t]
        Pk = torch.einsum("bhij,bhj->bhi", Pinv, k_t)
        a = (k_t * Pk).sum(-1)
        kt = Pk / (1.0 + a)[..., None]
        Pinv = Pinv - Pk[..., :, None] * Pk[..., None, :] / (1.0 + a)[..., None, None]
        e = torch.einsum("bhk,bhkv->bhv", k_t, M) - x.v[:, t]
        M = M - kt[..., :, None] * e[..., None, :]
        if t >= window:
            j = t - window
            k_j = x.k[:, j]
            Pkj = torch.einsum("bhij,bhj->bhi", Pinv, k_j)
            bj = (k_j * Pkj).sum(-1)
            Pinv = Pinv + Pkj[..., :, None] * Pkj[..., None, :] / (1.0 - bj)[..., None, None]
            kj_key = Pkj / (1.0 - bj)[..., None]  # P⁻ k_j = P⁺ k_j / (1 − k_jᵀ P⁺ k_j) (Sherman–Morrison)
            ej = torch.einsum("bhk,bhkv->bhv", k_j, M) - x.v[:, j]
            M = M + kj_key[..., :, None] * ej[..., None, :]
        Pinv = 0.5 * (Pinv + Pinv.transpose(-1, -2))
        rec.record(t, x, M, e, a, kt)
    return rec.result(M, output_final_state, diagnostics)


def windowed_ridge_solution(k, v, t: int, *, window: int, lam: float = 1.0) -> torch.Tensor:
    """Closed form of :func:`windowed_rls` after ``t`` tokens: ``S_tᵀ`` of shape ``[B, H, K, V]``.

    ``S_t = (Σ_{i∈I_t} v_i k_iᵀ)(λ I + Σ_{i∈I_t} k_i k_iᵀ)⁻¹`` with ``I_t = {max(1, t−W+1), …, t}``.
    Shapes: ``k: [B, T, H, K]``, ``v: [B, T, H, V]``; ``0 ≤ t ≤ T``.
    """
    k, v, t = _keys_values_at(k, v, t)
    B, T, H, K = k.shape
    window = check_scalar("window", window, 1, None, integer=True)
    lam = check_scalar("lam", lam, 0.0, None, lo_open=True)
    lo = max(0, t - window)
    kk, vv = k[:, lo:t], v[:, lo:t]
    G = torch.einsum("bthi,bthj->bhij", kk, kk) + lam * torch.eye(K, dtype=torch.float64)
    return torch.linalg.solve(G, torch.einsum("bthi,bthv->bhiv", kk, vv))


# ----------------------------------------------------------------------------------------------------------
# diagonal comparators


def longhorn_write_key(k, beta) -> torch.Tensor:
    """Longhorn's write key ``k̃_t = β_t k_t / (1 + β_t ‖k_t‖²)`` of shape ``[B, T, H, K]`` (β = 1 write).

    It is the RLS write key of one step from ``H_{t−1} = I/β_t`` (γ = 1): by Sherman–Morrison
    ``(I/β + k kᵀ)⁻¹ k = β k / (1 + β kᵀk)``, so the write gain is ``s = β‖k‖²/(1 + β‖k‖²) = a/(1 + a)``
    with leverage ``a = β‖k‖²``. Equivalently OSDN with unit write strength and scalar
    ``d_t = β_t / (1 + β_t ‖k_t‖²)``.

    Args:
        k: keys ``[B, T, H, K]``; beta: ``[B, T, H]`` in (0, 1].
    """
    k, beta = keys_and_beta(k, beta, dtype=torch.float64)
    return k * (beta / (1.0 + beta * (k * k).sum(-1)))[..., None]


def jacobi_d(
    k,
    beta,
    *,
    c: float | str = 1.0,
    ema: float | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> torch.Tensor:
    """Running diagonal (Jacobi) right-Newton preconditioner ``d_t = c · diag(H_t)⁻¹`` ``[B, T, H, K]``.

    ``h_t = diag(H_t)`` includes the current token, with ``u_t = k_t ⊙ k_t`` and ``h_0 = λ``:

    * cumulative (``ema=None``): ``h_t = γ h_{t−1} + u_t`` (the diagonal of RLS's ``H_t``);
    * EMA (``ema = ε ∈ (0, 1]``): ``h_t = (1 − ε) h_{t−1} + ε u_t`` → ``diag(E k kᵀ) = a`` on stationary keys.

    ``c = "fixed_point"`` uses ``c_t = 1 / (β_t (K + 2))``, which with the EMA makes ``d_t`` an estimate of
    ``d* = a⁻¹/(β(K+2))`` (:func:`fixed_point_d`).

    Divergence of raw Jacobi (spec §4): with the EMA and ``c = 1`` on stationary keys ``h ≈ a`` so
    ``s_t = β_t Σ_i u_{t,i}/h_{t,i} ≈ β K``, far above 2 for ``K ≥ 3``: the write overshoots, ``|1 − s| > 1``
    and the memory diverges. A scale ``c ≤ 1/(βK)`` (``E s ≤ 1``) or the write-gain clip ``s_max`` contracts.
    In the cumulative form ``h_t`` grows like ``t · a`` so ``s_t ≈ βK/t`` falls below 2 after ~βK/2 tokens.

    Args:
        k: keys ``[B, T, H, K]``; beta: ``[B, T, H]`` in (0, 1] (used by ``c="fixed_point"``).
        c: positive scale or ``"fixed_point"``; default 1 (raw Jacobi).
        ema: EMA rate in (0, 1], or None for the cumulative diagonal with forgetting ``gamma``.
        gamma: forgetting factor in (0, 1] (cumulative form only); lam: initial diagonal ``λ > 0``.
    """
    k, beta = keys_and_beta(k, beta, dtype=torch.float64)
    B, T, H, K = k.shape
    if isinstance(c, str):
        check_choice("c", c, ("fixed_point",))
        cval = 1.0 / (beta * (K + 2))  # [B,T,H]
    else:
        cval = torch.full_like(beta, check_scalar("c", c, 0.0, None, lo_open=True))
    gamma = check_scalar("gamma", gamma, 0.0, 1.0, lo_open=True)
    lam = check_scalar("lam", lam, 0.0, None, lo_open=True)
    if ema is not None:
        ema = check_scalar("ema", ema, 0.0, 1.0, lo_open=True)
    u = k * k
    h = torch.full((B, H, K), lam, dtype=torch.float64)
    d = torch.empty(B, T, H, K, dtype=torch.float64)
    for t in range(T):
        h = (1.0 - ema) * h + ema * u[:, t] if ema is not None else gamma * h + u[:, t]
        d[:, t] = cval[:, t, :, None] / h
    return d


def token_local_newton_d(k, beta) -> torch.Tensor:
    """Token-local Newton (NLMS / Kaczmarz) preconditioner ``d_t = 1 / (β_t ‖k_t‖²)`` ``[B, T, H, K]``.

    Gives write gain ``s_t = β_t ‖k_t‖² d_t = 1`` exactly, hence ``r_t⁺ = (1 − s_t) e_t = 0`` for every token.

    Args:
        k: keys ``[B, T, H, K]`` with ``‖k_t‖ > 0``; beta: ``[B, T, H]`` in (0, 1].
    """
    k, beta = keys_and_beta(k, beta, dtype=torch.float64)
    n2 = (k * k).sum(-1)
    if bool((n2 <= 0).any()):
        raise ValueError(f"k: expected every key to be nonzero, got {int((n2 <= 0).sum())} zero keys")
    return (1.0 / (beta * n2))[..., None].expand_as(k).clone()


def feedback_losses(k, beta, d) -> torch.Tensor:
    """Ratio feedback ``r_t(d_t) = (1 − β_t u_tᵀ d_t)²``, ``u_t = k_t ⊙ k_t``, shape ``[B, T, H]`` (spec §5).

    Args:
        k: keys ``[B, T, H, K]``; beta: ``[B, T, H]``; d: ``[B, T, H, K]`` or broadcastable (e.g. a fixed
            ``[B, 1, H, K]``), ``≥ 0``.
    """
    k, beta = keys_and_beta(k, beta, dtype=torch.float64)
    d = as_tensor("d", d, dtype=torch.float64)
    d = broadcast("d", d, k.shape, "[B, T, H, K]")
    check_range("d", d, 0.0, None)
    return _ratio(k, beta, d)


def best_fixed_diagonal(
    k, beta, *, box: tuple[float, float] = (0.0, float("inf")), mask=None
) -> BestFixedDiagonal:
    """Best fixed diagonal in hindsight: ``argmin_{d ∈ [d_lo, d_hi]^K} Σ_t (1 − β_t u_tᵀ d)²`` per (b, h).

    A bound-constrained linear least-squares problem (convex QP) ``min ‖A d − 1‖²`` with rows
    ``A_t = β_t u_tᵀ``, solved exactly by the active-set BVLS method of ``scipy.optimize.lsq_linear``.
    Regret of an online sequence ``d_t`` is ``Σ_t r_t(d_t) − loss`` (see :func:`feedback_losses`).

    Args:
        k: keys ``[B, T, H, K]``; beta: ``[B, T, H]`` in (0, 1].
        box: ``(d_lo, d_hi)`` with ``0 ≤ d_lo < d_hi ≤ inf``; default ``(0, inf)``.
        mask: optional boolean ``[B, T, H]`` selecting the tokens in the sum (default all).

    Returns:
        :class:`BestFixedDiagonal` with ``d: [B, H, K]`` and the minimal loss ``[B, H]``.
    """
    from scipy.optimize import lsq_linear

    k, beta = keys_and_beta(k, beta, dtype=torch.float64)
    B, T, H, K = k.shape
    if not isinstance(box, tuple | list) or len(box) != 2:
        raise ValueError(f"box: expected a pair (d_lo, d_hi), got {box!r}")
    try:
        lo, hi = float(box[0]), float(box[1])
    except (TypeError, ValueError):
        raise ValueError(f"box: expected a pair of numbers (d_lo, d_hi), got {box!r}") from None
    if not (np.isfinite(lo) and lo >= 0.0 and hi > lo):
        raise ValueError(f"box: expected 0 <= d_lo < d_hi <= inf with d_lo finite, got {box!r}")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask: expected a boolean tensor [B, T, H], got {type(mask).__name__}")
        check_shape("mask", mask.to(torch.float64), [B, T, H], "[B, T, H]")
    A_all = (beta[..., None] * k * k).numpy()
    d = np.empty((B, H, K))
    loss = np.empty((B, H))
    for b in range(B):
        for h in range(H):
            A = A_all[b, :, h]
            if mask is not None:
                A = A[mask[b, :, h].numpy()]
            y = np.ones(A.shape[0])
            if A.shape[0] == 0:
                d[b, h] = np.clip(1.0, lo, hi)
                loss[b, h] = 0.0
                continue
            res = lsq_linear(A, y, bounds=(lo, hi), method="bvls", tol=1e-14)
            d[b, h] = res.x
            loss[b, h] = float(np.sum((A @ res.x - y) ** 2))
    return BestFixedDiagonal(torch.from_numpy(d), torch.from_numpy(loss), (lo, hi))


def fixed_point_d(a, beta) -> torch.Tensor:
    """Stationary fixed point of the ratio rule: ``d* = a⁻¹ / (β (K + 2))`` (spec §5, claim C6).

    Derivation. For keys with independent zero-mean Gaussian features of variances ``a ∈ R^K`` and
    ``u = k ⊙ k``: ``E u = a`` and ``E u_i u_j = a_i a_j`` (i ≠ j), ``E u_i² = E k_i⁴ = 3 a_i²``, so
    ``E u uᵀ = a aᵀ + 2 diag(a²)``. The expected feedback

        E (1 − β uᵀd)² = 1 − 2β aᵀd + β² dᵀ (a aᵀ + 2 diag(a²)) d

    is a strictly convex quadratic; its gradient vanishes where ``β (a aᵀ + 2 diag(a²)) d = a``. Trying
    ``d = γ a⁻¹``: ``(a aᵀ + 2 diag(a²)) γ a⁻¹ = γ (K a + 2 a) = γ (K + 2) a``, so ``γ = 1/(β (K + 2))``.
    Then ``E s = β aᵀ d* = K/(K+2)`` and the minimal expected feedback is ``1 − K/(K+2) = 2/(K+2)``.

    Args:
        a: per-feature variances ``[..., K]`` (e.g. ``[B, H, K]`` or ``[B, H, S, K]``), ``> 0``.
        beta: write strength, a number in (0, 1] or a tensor broadcastable to ``a.shape[:-1]``.

    Returns:
        ``d*`` of the shape of ``a`` (float64).
    """
    a = as_tensor("a", a, dtype=torch.float64)
    if a.ndim < 1 or a.shape[-1] == 0:
        raise ValueError(f"a: expected shape [..., K] with K >= 1, got {tuple(a.shape)}")
    check_range("a", a, 0.0, None, lo_open=True)
    if isinstance(beta, torch.Tensor | np.ndarray):
        beta = as_tensor("beta", beta, dtype=torch.float64)
        check_range("beta", beta, 0.0, 1.0, lo_open=True)
        try:
            beta = torch.broadcast_to(beta, a.shape[:-1])[..., None]
        except RuntimeError:
            raise ValueError(
                f"beta: expected a shape broadcastable to {tuple(a.shape[:-1])}, got {tuple(beta.shape)}"
            ) from None
    else:
        beta = check_scalar("beta", beta, 0.0, 1.0, lo_open=True)
    return 1.0 / (beta * (a.shape[-1] + 2) * a)


def expected_feedback(d, a, beta) -> torch.Tensor:
    """Expected ratio feedback ``E (1 − β uᵀd)² = 1 − 2β aᵀd + β² dᵀ(a aᵀ + 2 diag(a²)) d`` for independent
    Gaussian features of variances ``a``. Shapes: ``d, a: [..., K]`` (broadcast); ``beta`` a number in (0, 1].
    Returns ``[...]``."""
    d = as_tensor("d", d, dtype=torch.float64)
    a = as_tensor("a", a, dtype=torch.float64)
    check_features("a", a)
    check_range("a", a.detach(), 0.0, None, lo_open=True)
    check_range("d", d.detach())
    if d.shape[-1:] != a.shape[-1:]:
        raise ValueError(f"d: expected last dimension K = {a.shape[-1]} (as a), got {tuple(d.shape)}")
    beta = check_scalar("beta", beta, 0.0, 1.0, lo_open=True)
    ad = (a * d).sum(-1)
    return 1.0 - 2.0 * beta * ad + beta**2 * (ad**2 + 2.0 * (a * a * d * d).sum(-1))


# ----------------------------------------------------------------------------------------------------------
# batch right-Newton on a fixed set


def _batch_inputs(K_mat, V_mat) -> tuple[torch.Tensor, torch.Tensor]:
    Km = as_tensor("K_mat", K_mat, dtype=torch.float64)
    if Km.ndim < 2:
        raise ValueError(f"K_mat: expected shape [..., N, K], got {tuple(Km.shape)}")
    check_features("K_mat", Km)
    check_range("K_mat", Km)
    Vm = as_tensor("V_mat", V_mat, dtype=torch.float64)
    if Vm.ndim != Km.ndim or Vm.shape[:-1] != Km.shape[:-1]:
        raise ValueError(
            f"V_mat: expected shape {list(Km.shape[:-1])} + [V] (rows as K_mat), got {tuple(Vm.shape)}"
        )
    check_range("V_mat", Vm)
    return Km, Vm


def batch_objective(state, K_mat, V_mat) -> torch.Tensor:
    """``F(S) = ½ ‖S Kᵀ − Vᵀ‖²_F = ½ ‖K Sᵀ − V‖²_F`` with ``state = Sᵀ: [..., K, V]``,
    ``K_mat: [..., N, K]`` (rows are keys), ``V_mat: [..., N, V]``. Returns ``[...]``."""
    Km, Vm = _batch_inputs(K_mat, V_mat)
    M = as_tensor("state", state, dtype=torch.float64)
    check_shape("state", M, list(Km.shape[:-2]) + [Km.shape[-1], Vm.shape[-1]], "[..., K, V]")
    return 0.5 * ((Km @ M - Vm) ** 2).sum((-1, -2))


def batch_right_newton(K_mat, V_mat=None, *, rcond: float | None = None) -> torch.Tensor:
    """Batch right-Newton preconditioner ``P* = (KᵀK)⁺`` ``[..., K, K]`` for ``F(S) = ½‖S Kᵀ − Vᵀ‖²_F``.

    ``∇F(S) = (S Kᵀ − Vᵀ) K`` and the right Hessian is ``Δ ↦ Δ KᵀK``, so one right-preconditioned step
    ``S⁺ = S − ∇F(S) P*`` from any ``S`` gives ``S⁺ = S (I − KᵀK P*) + Vᵀ K (KᵀK)⁺``: the least-squares
    solution (when ``KᵀK`` is invertible; otherwise the part of ``S`` in the null space of ``K`` is kept and
    the residual ``S⁺Kᵀ − Vᵀ`` is still the least-squares one). See :func:`batch_right_newton_step`.

    Args:
        K_mat: keys stacked as rows ``[..., N, K]``.
        V_mat: optional values ``[..., N, V]`` (only validated; ``P*`` does not depend on them).
        rcond: optional relative cutoff for the pseudo-inverse (``torch.linalg.pinv``'s ``rtol``).
    """
    if V_mat is None:
        Km = as_tensor("K_mat", K_mat, dtype=torch.float64)
        if Km.ndim < 2:
            raise ValueError(f"K_mat: expected shape [..., N, K], got {tuple(Km.shape)}")
        check_features("K_mat", Km)
        check_range("K_mat", Km)
    else:
        Km, _ = _batch_inputs(K_mat, V_mat)
    G = Km.transpose(-1, -2) @ Km
    if rcond is not None:
        rcond = check_scalar("rcond", rcond, 0.0, 1.0)
        return torch.linalg.pinv(G, rtol=rcond, hermitian=True)
    return torch.linalg.pinv(G, hermitian=True)


def batch_right_newton_step(state, K_mat, V_mat, P) -> torch.Tensor:
    """One right-preconditioned gradient step on ``F``: ``S⁺ = S − ∇F(S) P`` in state layout
    (``M = Sᵀ``: ``M⁺ = M − Pᵀ Kᵀ (K M − V)``). Shapes: ``state: [..., K, V]``, ``K_mat: [..., N, K]``,
    ``V_mat: [..., N, V]``, ``P: [..., K, K]`` (broadcastable). Returns the new state ``[..., K, V]``."""
    Km, Vm = _batch_inputs(K_mat, V_mat)
    M = as_tensor("state", state, dtype=torch.float64)
    check_shape("state", M, list(Km.shape[:-2]) + [Km.shape[-1], Vm.shape[-1]], "[..., K, V]")
    P = as_tensor("P", P, dtype=torch.float64)
    if P.ndim < 2 or P.shape[-2:] != (Km.shape[-1], Km.shape[-1]):
        raise ValueError(f"P: expected shape [..., K, K] with K = {Km.shape[-1]}, got {tuple(P.shape)}")
    check_range("P", P)
    grad = Km.transpose(-1, -2) @ (Km @ M - Vm)  # = ∇F(S)ᵀ
    return M - P.transpose(-1, -2) @ grad
