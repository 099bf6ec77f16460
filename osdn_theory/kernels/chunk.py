"""``chunk_osdn``: the chunkwise OSDN kernel (Triton forward and backward behind ``torch.autograd``).

OSDN is DeltaNet with write key ``k̃ = c · d ⊙ k`` (spec §2–3). Per chunk of ``C`` tokens::

    A⁻¹ = (I + diag(β) · tril₋₁(Γ ⊙ K K̃ᵀ))⁻¹,   T = A⁻¹ diag(β)
    W = T diag(e^g) K,   Ũ = T V,   U = Ũ − W h_n
    h_{n+1} = e^{g_C} h_n + (diag(e^{g_C − g}) K̃)ᵀ U
    O = scale · (diag(e^g) Q h_n + tril₀(Γ ⊙ Q K̃ᵀ) U)

with ``g`` the in-chunk cumulative sum of ``log α`` (``g ≡ 0`` ungated) and ``Γ_{r,i} = e^{g_r − g_i}``.
The forward keeps only the inputs and ``A⁻¹`` for the backward, which recomputes the chunk states.
"""

from __future__ import annotations

import torch

from .._validate import as_tensor, broadcast, check_scalar, check_shape
from . import _checks
from ._checks import MAX_DIM, check_chunk_size, check_cu_seqlens, check_keys, check_like, check_validate
from ._common import wide_dtype
from .bwd_dqk import bwd_dqk
from .bwd_wy import bwd_wy
from .config import Launch, check_launch
from .d_check import check_d
from .dh_pass import dh_pass
from .drule import DRule
from .dv_local import dv_local
from .gram_solve import gram_solve
from .l2norm import l2norm
from .output import output
from .state_pass import state_pass
from .tables import chunk_tables
from .wy_factors import wy_factors

__all__ = ["chunk_osdn"]


# chunk_tables under its former name (benchmarks and tests import it from here)
_chunk_tables = chunk_tables


class _ChunkOSDN(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, q, k, v, beta, d, log_alpha, h0, scale, s_max, C, tables, output_final_state, flag, launch
    ):
        cu, offs, bounds, NC = tables
        if flag is not None and d is not None and launch.d_check_for(k.shape[-1]) == "pass":
            check_d(d, flag, launch=launch)
        kt, c, g, ai = gram_solve(k, d, beta, log_alpha, bounds, s_max, C, flag=flag, launch=launch)
        w, u = wy_factors(k, v, beta, g, ai, bounds, C, flag=flag, launch=launch)
        h, vnew, ht = state_pass(kt, w, u, g, h0, cu, offs, NC, C, output_final_state, launch=launch)
        del w, u
        o = output(q, kt, vnew, h, g, bounds, scale, C, flag=flag, launch=launch)
        ctx.save_for_backward(q, k, v, beta, d, log_alpha, h0, ai)
        ctx.meta = (scale, s_max, C, tables, launch)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        _checks.poll()  # value checks of earlier calls that have finished (no synchronisation)
        q, k, v, beta, d, log_alpha, h0, ai = ctx.saved_tensors
        scale, s_max, C, tables, launch = ctx.meta
        cu, offs, bounds, NC = tables
        do = do.contiguous()
        dht = dht.contiguous() if dht is not None else None
        kt, c, g, _ = gram_solve(k, d, beta, log_alpha, bounds, s_max, C, solve=False, launch=launch)
        w, u = wy_factors(k, v, beta, g, ai, bounds, C, launch=launch)
        h, vnew, _ = state_pass(kt, w, u, g, h0, cu, offs, NC, C, False, launch=launch)
        del u
        dvl = dv_local(q, kt, g, do, bounds, scale, C, launch=launch)
        dh, du, dh0 = dh_pass(
            q, kt, w, g, do, dvl, dht, cu, offs, NC, scale, C, h0 is not None, launch=launch
        )
        del dvl, w
        dq, dkt, dw, dg = bwd_dqk(q, kt, g, vnew, h, do, dh, du, bounds, scale, C, launch=launch)
        del h, dh, vnew
        dk, dd, dv, db, dla = bwd_wy(k, d, c, kt, v, beta, g, ai, dw, du, dkt, dg, bounds, C, launch=launch)
        return (
            dq.to(q.dtype),
            dk.to(k.dtype),
            dv.to(v.dtype),
            db.to(beta.dtype),
            dd.to(d.dtype) if dd is not None else None,
            dla,
            dh0,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def chunk_osdn(
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
    cu_seqlens=None,
    d_rule=None,
    validate: bool = True,
    use_qk_l2norm_in_kernel: bool = False,
    launch: Launch | None = None,
):
    """OSDN (DeltaNet with write key ``k̃ = c·d⊙k``) in chunkwise form, Triton forward and backward.

    Args:
        q: queries of shape ``[B, T, H, K]``.
        k: read/erase keys of shape ``[B, T, H, K]`` (not normalized here unless ``use_qk_l2norm_in_kernel``).
        v: values of shape ``[B, T, H, V]``.
        beta: write strengths of shape ``[B, T, H]`` in (0, 1].
            ``q, k, v, beta`` may be non-contiguous (a strided view is copied to a contiguous tensor first).
        d: diagonal preconditioner of shape ``[B, T, H, K]`` or broadcastable to it, ``> 0``. Default
            ``None``: DeltaNet (``d ≡ 1``), unless ``d_rule`` computes it.
        alpha: optional decay of shape ``[B, T, H]`` in (0, 1] (gated OSDN). Default ``None``.
        scale: read-out scale, default ``K ** -0.5``.
        initial_state: optional start state of shape ``[N, H, K, V]`` (``N = B``, or the number of sequences
            with ``cu_seqlens``). Default ``None`` (zeros).
        output_final_state: also return the final state ``[N, H, K, V]`` (float32; float64 for float64 input).
        s_max: optional write-gain clip in (0, 2): ``k̃ ← min(1, s_max / s) · k̃`` with ``s = β kᵀ(d ⊙ k)``.
        chunk_size: tokens per chunk, one of 16, 32, 64 (default 64).
        cu_seqlens: optional cumulative sequence lengths ``[N + 1]`` (integer) of a packed batch; then
            ``B`` must be 1 and chunks never straddle sequences.
        d_rule: optional :class:`osdn_theory.kernels.DRule`: compute ``d`` by the spec's state-free rule
            (then ``d`` must be ``None``).
        validate: check value ranges (``β ∈ (0, 1]``, ``α ∈ (0, 1]``, ``d > 0``, finite ``q, k, v, d``).
            ``True`` (default): the kernels test each input as they load it (no extra pass, no host
            synchronisation); a bad value makes the output NaN and raises ``ValueError`` naming the argument —
            at once on the CPU (interpreter), on a GPU at the first later call of this module that finds the
            check finished, in the backward, or in :func:`osdn_theory.kernels.check_values`. ``"sync"``: the
            same checks, raised at this call (one host synchronisation). ``False``: no value checks. Shapes,
            dtypes and devices are always checked.
        use_qk_l2norm_in_kernel: L2-normalise ``q`` and ``k`` over the head dimension first, as fla's
            ``chunk_delta_rule`` does with this flag (:func:`osdn_theory.kernels.l2norm.l2norm`, ``eps = 1e-6``,
            differentiable; a separate torch pass, not fused into the kernel). A ``d_rule`` sees the
            normalised keys. Default ``False``.
        launch: optional :class:`osdn_theory.kernels.config.Launch`: launch configurations of the stages for this
            call (block sizes, warps, pipelining; see :mod:`osdn_theory.kernels.config`). Default ``None``: every
            stage's own rule. Used by the tuning benchmark and the tests.

    Returns:
        ``(o, final_state)``: ``o`` of shape ``[B, T, H, V]`` in the input dtype; ``final_state`` or ``None``.

    Inputs may be float16, bfloat16 or float32 on a GPU; under the Triton interpreter float16, float32 or
    float64 (its ``tl.dot`` is wrong for bfloat16, which is refused there). Accumulation and the state are
    float32 (float64 for float64 input). ``K, V ≤ 256``. Gradients flow to ``q, k, v, beta, d, alpha`` and
    ``initial_state``.
    """
    if not isinstance(output_final_state, bool):
        raise ValueError(
            f"output_final_state: expected a bool, got {type(output_final_state).__name__} {output_final_state!r}"
        )
    if not isinstance(use_qk_l2norm_in_kernel, bool):
        raise ValueError(
            "use_qk_l2norm_in_kernel: expected a bool, got "
            f"{type(use_qk_l2norm_in_kernel).__name__} {use_qk_l2norm_in_kernel!r}"
        )
    validate = check_validate(validate)
    launch = check_launch(launch)
    _checks.poll()  # value checks of earlier calls that have finished (no synchronisation)
    # strided views (e.g. q, k, v split from one projection, or a transposed head layout) are copied once
    q, k, v = (x.contiguous() if isinstance(x, torch.Tensor) else x for x in (q, k, v))
    k = check_keys(k)
    B, T, H, K = k.shape
    q = check_like("q", q, k, [B, T, H, K], "[B, T, H, K] (same as k)")
    v = check_like("v", v, k, [B, T, H, None], "[B, T, H, V]")
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    V = v.shape[-1]
    if not 1 <= V <= MAX_DIM:
        raise ValueError(f"v: expected head dim 1 <= V <= {MAX_DIM}, got V = {V}")
    beta = check_like("beta", beta, k, [B, T, H], "[B, T, H]", contiguous=False).contiguous()
    C = check_chunk_size(chunk_size)
    scale = K**-0.5 if scale is None else check_scalar("scale", scale, 0.0, None, lo_open=True)
    if s_max is not None:
        s_max = check_scalar("s_max", s_max, 0.0, 2.0, lo_open=True, hi_open=True)
    cu_seqlens, N = check_cu_seqlens(cu_seqlens, B, T, k.device)
    if alpha is not None:
        alpha = check_like("alpha", alpha, k, [B, T, H], "[B, T, H]", contiguous=False)
    if d_rule is not None:
        if not isinstance(d_rule, DRule):
            raise ValueError(f"d_rule: expected an osdn_theory.kernels.DRule, got {type(d_rule).__name__}")
        if d is not None:
            raise ValueError("d_rule: expected d = None when a d_rule is given, got both")
        d = d_rule.compute(
            k, beta, cu_seqlens=cu_seqlens, chunk_size=C, validate=False, launch=launch
        )  # checked below
    if d is not None:
        d = as_tensor("d", d)
        if d.dtype != k.dtype or d.device != k.device:
            raise ValueError(
                f"d: expected dtype {k.dtype} and device {k.device} (same as k), got {d.dtype}, {d.device}"
            )
        d = broadcast("d", d, (B, T, H, K), "[B, T, H, K]")
        d = d.contiguous()
    if initial_state is not None:
        initial_state = as_tensor("initial_state", initial_state)
        check_shape("initial_state", initial_state, [N, H, K, V], "[N, H, K, V]")
        if initial_state.device != k.device:
            raise ValueError(
                f"initial_state: expected device {k.device} (same as k), got {initial_state.device}"
            )
        initial_state = initial_state.to(wide_dtype(k.dtype)).contiguous()
    flag = _checks.new_flag(validate, k.device)
    log_alpha = None
    if alpha is not None:
        log_alpha = torch.log(alpha.to(wide_dtype(k.dtype))).contiguous()
    tables = chunk_tables(cu_seqlens, B, T, C, k.device)
    NT = B * T
    o, ht = _ChunkOSDN.apply(
        q.reshape(NT, H, K),
        k.reshape(NT, H, K),
        v.reshape(NT, H, V),
        beta.reshape(NT, H),
        d.reshape(NT, H, K) if d is not None else None,
        log_alpha.reshape(NT, H) if log_alpha is not None else None,
        initial_state,
        float(scale),
        s_max,
        C,
        tables,
        bool(output_final_state),
        flag,
        launch,
    )
    tensors = dict(q=q, k=k, v=v, beta=beta, alpha=alpha, d=d)
    _checks.report(flag, "chunk_osdn", tensors, sync=validate == "sync")
    return o.reshape(B, T, H, V), (ht if output_final_state else None)
