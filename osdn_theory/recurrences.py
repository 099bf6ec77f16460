"""Float64 token-by-token reference solvers: DeltaNet, OSDN and their gated variants (spec §2, claim C2).

Layout follows flash-linear-attention: ``q, k, d: [B, T, H, K]``, ``v: [B, T, H, V]``,
``beta, alpha: [B, T, H]``, state ``[B, H, K, V]`` (the transpose ``Sᵀ`` of the math memory ``S ∈ R^{V×K}``).

Per head and token (math form, ``S ∈ R^{V×K}``)::

    e_t  = α_t S_{t−1} k_t − v_t                        (residual before the write; α_t = 1 ungated)
    k̃_t  = c_t · d_t ⊙ k_t                              (write key; c_t = min(1, s_max / s_t) if clipped)
    S_t  = α_t S_{t−1} − β_t e_t k̃_tᵀ
         = α_t S_{t−1} (I − β_t k_t k̃_tᵀ) + β_t v_t k̃_tᵀ
    o_t  = scale · S_t q_t                              (read-out after the write, as in fla)

with write gain ``s_t = β_t k_tᵀ D_t k_t`` and post-write residual ``r⁺_t = S_t k_t − v_t = (1 − s_t) e_t``.
``d = None`` (``d ≡ 1``) is DeltaNet exactly. The write is computed as the preconditioned gradient step
``S_t = α_t S_{t−1} − β_t ∇ℓ_t(α_t S_{t−1}) c_t D_t = α_t S_{t−1} − β_t e_t k̃_tᵀ`` by the same code as
:func:`inner_grad` (the gradient of :func:`inner_loss`; the functions claim C1 checks), with the write key
``k̃_t`` of :func:`write_key` in place of ``k_t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validate import as_tensor, broadcast, check_bool, check_range, check_same, check_scalar, check_shape

__all__ = [
    "Diagnostics",
    "OSDNInputs",
    "prepare_inputs",
    "write_key",
    "inner_loss",
    "inner_grad",
    "osdn_recurrent",
    "delta_rule_recurrent",
]


@dataclass(frozen=True)
class OSDNInputs:
    """Validated inputs shared by the reference solvers and the kernels."""

    q: torch.Tensor  # [B, T, H, K]
    k: torch.Tensor  # [B, T, H, K]
    v: torch.Tensor  # [B, T, H, V]
    beta: torch.Tensor  # [B, T, H]
    d: torch.Tensor | None  # [B, T, H, K] or None (DeltaNet)
    alpha: torch.Tensor | None  # [B, T, H] or None (ungated)
    scale: float
    initial_state: torch.Tensor | None  # [B, H, K, V]
    s_max: float | None

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        B, T, H, K = self.k.shape
        return B, T, H, K, self.v.shape[-1]


def prepare_inputs(
    q,
    k,
    v,
    beta,
    d=None,
    *,
    alpha=None,
    scale: float | None = None,
    initial_state=None,
    s_max: float | None = None,
    dtype: torch.dtype | None = None,
) -> OSDNInputs:
    """Validate and (optionally) cast the OSDN inputs; raise ``ValueError`` naming the bad argument.

    Args:
        q: queries of shape ``[B, T, H, K]``; k: keys of shape ``[B, T, H, K]`` (``T ≥ 1``, finite).
        v: values of shape ``[B, T, H, V]``.
        beta: write strengths of shape ``[B, T, H]`` in (0, 1].
        d: preconditioner ``> 0``, ``[B, T, H, K]`` or anything that broadcasts to it (e.g. ``[H, K]``,
            ``[K]``); cast to the computation dtype. Default ``None`` (DeltaNet).
        alpha: optional decay of shape ``[B, T, H]`` in (0, 1].
        scale: read-out scale ``> 0``, default ``K ** -0.5``.
        initial_state: optional state of shape ``[B, H, K, V]``.
        s_max: optional write-gain clip in (0, 2).
        dtype: casts every tensor; ``None`` keeps the dtype of ``k``, and ``q, v, beta, alpha,
            initial_state`` must then share it and its device.

    Returns:
        :class:`OSDNInputs` (``d`` broadcast to ``[B, T, H, K]``, ``scale`` resolved).
    """
    k = as_tensor("k", k, dtype=dtype)
    check_shape("k", k, [None, None, None, None], "[B, T, H, K]")
    B, T, H, K = k.shape
    if T == 0:
        raise ValueError("k: expected at least one token (T >= 1), got T = 0")
    dt = k.dtype
    q = as_tensor("q", q, dtype=dtype)
    check_shape("q", q, [B, T, H, K], "[B, T, H, K] (same as k)")
    v = as_tensor("v", v, dtype=dtype)
    check_shape("v", v, [B, T, H, None], "[B, T, H, V]")
    beta = as_tensor("beta", beta, dtype=dtype)
    check_shape("beta", beta, [B, T, H], "[B, T, H]")
    for name, t in (("q", q), ("v", v), ("beta", beta)):
        check_same(name, t, "k", k)
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_range(name, t)  # finiteness
    check_range("beta", beta, 0.0, 1.0, lo_open=True)
    if d is not None:
        d = as_tensor("d", d, dtype=dtype or dt)
        d = broadcast("d", d, (B, T, H, K), "[B, T, H, K]")
        check_same("d", d, "k", k)
        check_range("d", d, 0.0, None, lo_open=True)
    if alpha is not None:
        alpha = as_tensor("alpha", alpha, dtype=dtype)
        check_shape("alpha", alpha, [B, T, H], "[B, T, H]")
        check_same("alpha", alpha, "k", k)
        check_range("alpha", alpha, 0.0, 1.0, lo_open=True)
    if scale is None:
        scale = K**-0.5
    scale = check_scalar("scale", scale, 0.0, None, lo_open=True)
    if s_max is not None:
        s_max = check_scalar("s_max", s_max, 0.0, 2.0, lo_open=True, hi_open=True)
    if initial_state is not None:
        initial_state = as_tensor("initial_state", initial_state, dtype=dtype)
        check_shape("initial_state", initial_state, [B, H, K, v.shape[-1]], "[B, H, K, V]")
        check_same("initial_state", initial_state, "k", k)
        check_range("initial_state", initial_state)
    return OSDNInputs(q, k, v, beta, d, alpha, float(scale), initial_state, s_max)


def write_key(
    k: torch.Tensor, beta: torch.Tensor, d: torch.Tensor | None, s_max: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write key ``k̃ = c · d ⊙ k``, effective write gain ``s = β kᵀ k̃`` and clip factor ``c``.

    ``c = min(1, s_max / s_raw)`` where ``s_raw = β Σ_i d_i k_i²`` (``c ≡ 1`` when ``s_max`` is None).
    The clip is state-free, so recurrence, chunk form and kernels all apply it to the keys beforehand.

    Args:
        k: keys of shape ``[B, T, H, K]``.
        beta: write strengths of shape ``[B, T, H]`` in (0, 1] (same dtype and device as ``k``).
        d: preconditioner ``> 0`` of shape ``[B, T, H, K]`` or broadcastable to it; ``None`` is ``d ≡ 1``.
        s_max: write-gain clip in (0, 2), or ``None`` (no clip).

    Returns:
        ``(k̃, s, c)`` of shapes ``[B, T, H, K]``, ``[B, T, H]``, ``[B, T, H]``.
    """
    k = as_tensor("k", k)
    check_shape("k", k, [None, None, None, None], "[B, T, H, K]")
    check_range("k", k)
    beta = as_tensor("beta", beta)
    check_shape("beta", beta, list(k.shape[:3]), "[B, T, H]")
    check_same("beta", beta, "k", k)
    check_range("beta", beta, 0.0, 1.0, lo_open=True)
    if d is not None:
        d = as_tensor("d", d)
        check_same("d", d, "k", k)
        d = broadcast("d", d, k.shape, "[B, T, H, K]")
        check_range("d", d, 0.0, None, lo_open=True)
    if s_max is not None:
        s_max = check_scalar("s_max", s_max, 0.0, 2.0, lo_open=True, hi_open=True)
    return _write_key(k, beta, d, s_max)


def _write_key(
    k: torch.Tensor, beta: torch.Tensor, d: torch.Tensor | None, s_max: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`write_key` without validation, for callers whose inputs passed :func:`prepare_inputs`."""
    kt = k if d is None else d * k
    s_raw = beta * (k * kt).sum(-1)
    if s_max is None:
        c = torch.ones_like(s_raw)
    else:
        c = torch.where(s_raw > s_max, s_max / s_raw.clamp_min(torch.finfo(s_raw.dtype).tiny), 1.0)
        kt = kt * c[..., None]
    return kt, s_raw * c, c


def _check_inner(state, k, v, d=None):
    state = as_tensor("state", state)
    check_shape("state", state, [None] * max(state.ndim, 2), "[..., K, V]")
    k = as_tensor("k", k)
    check_shape("k", k, [*state.shape[:-2], state.shape[-2]], "[..., K] (state is [..., K, V])")
    v = as_tensor("v", v)
    check_shape("v", v, [*state.shape[:-2], state.shape[-1]], "[..., V] (state is [..., K, V])")
    for name, t in (("k", k), ("v", v)):
        check_same(name, t, "state", state)
    for name, t in (("state", state), ("k", k), ("v", v)):
        check_range(name, t)  # finiteness
    if d is not None:
        d = as_tensor("d", d)
        check_same("d", d, "state", state)
        d = broadcast("d", d, k.shape, "[..., K] (same as k)")
        check_range("d", d, 0.0, None, lo_open=True)
    return state, k, v, d


def inner_loss(state, k, v) -> torch.Tensor:
    """The per-token inner loss ``ℓ(S) = ½‖S k − v‖²`` that the OSDN write descends (spec §2, claim C1).

    Args:
        state: memory in the state layout ``Sᵀ`` of shape ``[..., K, V]`` (as ``initial_state``), finite.
        k: key of shape ``[..., K]``; v: value of shape ``[..., V]`` (same dtype and device as ``state``).

    Returns:
        ``ℓ`` of shape ``[...]``.
    """
    state, k, v, _ = _check_inner(state, k, v)
    return _inner_loss(state, k, v)


def inner_grad(state, k, v, d=None) -> torch.Tensor:
    """The gradient of :func:`inner_loss`, right-preconditioned by ``D = diag(d)``, in the state layout.

    ``(∇ℓ(S) D)ᵀ = (d ⊙ k) eᵀ`` with ``e = S k − v``; ``d = None`` gives the plain gradient ``(e kᵀ)ᵀ = k eᵀ``.
    :func:`osdn_recurrent` writes ``Sᵀ ← Sᵀ − β · (this with d ⊙ k replaced by the write key k̃ = c d ⊙ k)``,
    through the same code.

    Args:
        state: memory in the state layout ``Sᵀ`` of shape ``[..., K, V]``, finite.
        k: key of shape ``[..., K]``; v: value of shape ``[..., V]`` (same dtype and device as ``state``).
        d: optional right preconditioner ``> 0`` of shape ``[..., K]`` or broadcastable to it.

    Returns:
        ``∇ℓ D`` (transposed) of shape ``[..., K, V]``.
    """
    state, k, v, d = _check_inner(state, k, v, d)
    return _inner_grad(state, k, v, k if d is None else d * k)[0]


def _residual(M: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``e = S k − v`` of shape ``[..., V]`` for the state ``M = Sᵀ`` of shape ``[..., K, V]``."""
    return torch.einsum("...k,...kv->...v", k, M) - v


def _inner_loss(M: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`inner_loss` without validation."""
    return 0.5 * (_residual(M, k, v) ** 2).sum(-1)


def _inner_grad(
    M: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(key eᵀ, e)`` with ``e = S k − v``: the gradient at ``key = k``, ``∇ℓ D`` at ``key = d ⊙ k``.

    :func:`inner_grad` without validation, and the write of :func:`osdn_recurrent` (``key`` = write key).
    """
    e = _residual(M, k, v)
    return key[..., :, None] * e[..., None, :], e


@dataclass(frozen=True)
class Diagnostics:
    """Per-token diagnostics of a recurrent run (all ``[B, T, H, ...]``).

    ``residual_pre`` is ``e_t = α_t S_{t−1} k_t − v_t``; ``residual_post`` is ``r⁺_t = S_t k_t − v_t``;
    ``write_gain`` is the effective ``s_t`` (after the clip); ``clip_factor`` is ``c_t`` (1 where unclipped).
    ``term_scale`` (``[B, T, H]``, where recorded) is ``‖S_{t−1}‖_F ‖k_t‖ + ‖S_t‖_F ‖k_t‖ + ‖v_t‖``, the size of
    the terms from which ``e_t`` and ``r⁺_t`` are computed: their float64 round-off is relative to it, not to
    ``‖e_t‖`` (which can be far smaller when the memory is large).
    """

    residual_pre: torch.Tensor  # [B, T, H, V]
    residual_post: torch.Tensor  # [B, T, H, V]
    write_gain: torch.Tensor  # [B, T, H]
    clip_factor: torch.Tensor  # [B, T, H]
    term_scale: torch.Tensor | None = None  # [B, T, H]

    @property
    def clipped(self) -> torch.Tensor:
        """Boolean ``[B, T, H]``: tokens whose write key the safeguard scaled down."""
        return self.clip_factor < 1.0


def osdn_recurrent(
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
    diagnostics: bool = False,
    dtype: torch.dtype | None = torch.float64,
):
    """OSDN token by token (the float64 reference for every other implementation).

    Args:
        q: queries of shape ``[B, T, H, K]``.
        k: read/erase keys of shape ``[B, T, H, K]`` (not normalized here).
        v: values of shape ``[B, T, H, V]``.
        beta: write strengths of shape ``[B, T, H]``, in (0, 1].
        d: diagonal preconditioner, ``[B, T, H, K]`` or broadcastable, ``> 0``; ``None`` is DeltaNet.
        alpha: optional decay of shape ``[B, T, H]`` in (0, 1] (gated OSDN, decay applied first).
        scale: read-out scale, default ``K ** -0.5``.
        initial_state: optional ``[B, H, K, V]`` state ``Sᵀ_0`` (default zeros).
        output_final_state: return the final state ``[B, H, K, V]`` (else ``None``).
        s_max: optional write-gain clip in (0, 2) (spec §2 safeguard).
        diagnostics: also return a :class:`Diagnostics`.
        dtype: computation dtype; default float64 (the reference precision). ``None`` keeps the input dtype.

    Returns:
        ``(o, final_state)`` with ``o: [B, T, H, V]``, or ``(o, final_state, Diagnostics)`` if ``diagnostics``.
    """
    check_bool("output_final_state", output_final_state)
    check_bool("diagnostics", diagnostics)
    x = prepare_inputs(
        q, k, v, beta, d, alpha=alpha, scale=scale, initial_state=initial_state, s_max=s_max, dtype=dtype
    )
    B, T, H, K, V = x.shape
    kt, s, c = _write_key(x.k, x.beta, x.d, x.s_max)
    M = (
        torch.zeros(B, H, K, V, dtype=x.k.dtype, device=x.k.device)
        if x.initial_state is None
        else x.initial_state.clone()
    )
    o = torch.empty(B, T, H, V, dtype=x.k.dtype, device=x.k.device)
    if diagnostics:
        e_pre = torch.empty_like(o)
        r_post = torch.empty_like(o)
        scale_terms = torch.empty(B, T, H, dtype=x.k.dtype, device=x.k.device)
    for t in range(T):
        if x.alpha is not None:
            M = M * x.alpha[:, t, :, None, None]
        k_t, kt_t, b_t = x.k[:, t], kt[:, t], x.beta[:, t]  # [B,H,K], [B,H,K], [B,H]
        if diagnostics:
            m_pre = torch.linalg.matrix_norm(M)
        grad, e = _inner_grad(M, k_t, x.v[:, t], kt_t)  # ∇ℓ_t c D = e k̃ᵀ (state layout), e_t = S k − v
        M = M - b_t[..., None, None] * grad  # S ← S − β ∇ℓ (c D)
        o[:, t] = x.scale * torch.einsum("bhk,bhkv->bhv", x.q[:, t], M)
        if diagnostics:
            e_pre[:, t] = e
            r_post[:, t] = torch.einsum("bhk,bhkv->bhv", k_t, M) - x.v[:, t]
            kn = k_t.norm(dim=-1)
            scale_terms[:, t] = (m_pre + torch.linalg.matrix_norm(M)) * kn + x.v[:, t].norm(dim=-1)
    final = M if output_final_state else None
    if diagnostics:
        return o, final, Diagnostics(e_pre, r_post, s, c, scale_terms)
    return o, final


def delta_rule_recurrent(
    q,
    k,
    v,
    beta,
    *,
    alpha=None,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    diagnostics: bool = False,
    dtype: torch.dtype | None = torch.float64,
):
    """DeltaNet (gated if ``alpha`` is given) token by token: :func:`osdn_recurrent` with ``d ≡ 1``.

    Per head and token (math layout): ``S_t = α_t S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``,
    ``o_t = scale · S_t q_t``. Implemented independently of the OSDN path's write key (plain ``k`` as write
    key, explicit ``I − β k kᵀ`` product) so that the ``d ≡ 1`` equivalence test compares two code paths.

    Args:
        q: queries of shape ``[B, T, H, K]``.
        k: keys of shape ``[B, T, H, K]``.
        v: values of shape ``[B, T, H, V]``.
        beta: write strengths of shape ``[B, T, H]``, in (0, 1].
        alpha: optional decay of shape ``[B, T, H]`` in (0, 1] (Gated DeltaNet).
        scale: read-out scale, default ``K ** -0.5``.
        initial_state: optional ``[B, H, K, V]`` state ``Sᵀ_0`` (default zeros).
        output_final_state: return the final state ``[B, H, K, V]`` (else ``None``).
        diagnostics: also return a :class:`Diagnostics` (write gain ``β_t ‖k_t‖²``, clip factor 1).
        dtype: computation dtype; default float64. ``None`` keeps the input dtype.

    Returns:
        ``(o, final_state)`` with ``o: [B, T, H, V]``, or ``(o, final_state, Diagnostics)`` if ``diagnostics``.
    """
    check_bool("output_final_state", output_final_state)
    check_bool("diagnostics", diagnostics)
    x = prepare_inputs(
        q, k, v, beta, None, alpha=alpha, scale=scale, initial_state=initial_state, dtype=dtype
    )
    B, T, H, K, V = x.shape
    S = (
        torch.zeros(B, H, V, K, dtype=x.k.dtype, device=x.k.device)
        if x.initial_state is None
        else x.initial_state.transpose(-1, -2).clone()
    )  # math layout S ∈ R^{V×K}
    eye = torch.eye(K, dtype=x.k.dtype, device=x.k.device)
    o = torch.empty(B, T, H, V, dtype=x.k.dtype, device=x.k.device)
    if diagnostics:
        e_pre, r_post = torch.empty_like(o), torch.empty_like(o)
    for t in range(T):
        a = 1.0 if x.alpha is None else x.alpha[:, t, :, None, None]
        kk, b = x.k[:, t], x.beta[:, t, :, None, None]
        if diagnostics:
            e_pre[:, t] = torch.einsum("bhvk,bhk->bhv", a * S, kk) - x.v[:, t]
        # S_t = α S (I − β k kᵀ) + β v kᵀ
        S = (a * S) @ (eye - b * kk[..., :, None] * kk[..., None, :]) + b * x.v[:, t, :, :, None] * kk[
            ..., None, :
        ]
        if diagnostics:
            r_post[:, t] = torch.einsum("bhvk,bhk->bhv", S, kk) - x.v[:, t]
        o[:, t] = x.scale * torch.einsum("bhvk,bhk->bhv", S, x.q[:, t])
    final = S.transpose(-1, -2).contiguous() if output_final_state else None
    if diagnostics:
        s = x.beta * (x.k * x.k).sum(-1)
        return o, final, Diagnostics(e_pre, r_post, s, torch.ones_like(s))
    return o, final
