"""fla's calling convention for :func:`chunk_osdn`: a drop-in for ``fla.ops.delta_rule.chunk_delta_rule``.

``chunk_delta_rule_compat(q, k, v, beta, scale, initial_state, output_final_state, *, cu_seqlens,
use_qk_l2norm_in_kernel)`` takes fla's arguments — the first seven in fla's positional order, the rest by
keyword only, because fla's releases order ``cu_seqlens`` and ``use_qk_l2norm_in_kernel`` differently, so a
positional call could silently swap them — and returns ``(o, final_state)`` like fla, with ``d`` or a ``d_rule`` as optional extra keywords (``d = None`` and no rule
is DeltaNet, the op fla computes). Layout as fla: ``[B, T, H, ·]``, no head-first layout. What differs from
fla: fp32 inputs are computed with IEEE fp32 dots (fla refuses fp32), values are checked (``validate``,
default on, see :func:`chunk_osdn`), and fla's deprecated ``head_first`` argument is not accepted.
"""

from __future__ import annotations

from .chunk import chunk_osdn

__all__ = ["chunk_delta_rule_compat"]


def chunk_delta_rule_compat(
    q,
    k,
    v,
    beta,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    *,
    cu_seqlens=None,
    use_qk_l2norm_in_kernel: bool = False,
    d=None,
    d_rule=None,
    validate=True,
):
    """``(o, final_state)`` of DeltaNet (or OSDN with ``d`` / ``d_rule``) with fla ``chunk_delta_rule``'s
    arguments; ``final_state`` is ``None`` unless ``output_final_state``. See :func:`chunk_osdn`."""
    return chunk_osdn(
        q,
        k,
        v,
        beta,
        d,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        d_rule=d_rule,
        validate=validate,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
    )
