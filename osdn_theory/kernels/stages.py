"""The stages of the chunkwise OSDN pipeline (spec §3), in order: an index of the per-stage modules.

Each stage lives in its own module with its Triton kernel, its launcher and its plain-torch twin:

1. :mod:`.gram_solve` — write key ``k̃ = c·d⊙k`` (clip factor ``c``), in-chunk log-decay ``g`` and
   ``A⁻¹ = (I + diag(β)·tril₋₁(Γ ⊙ K K̃ᵀ))⁻¹`` per chunk.
2. :mod:`.wy_factors` — ``W = A⁻¹ diag(β) diag(e^g) K`` and ``Ũ = A⁻¹ diag(β) V``.
3. :mod:`.state_pass` — inter-chunk recurrence: start state ``h_n`` of each chunk and ``U = Ũ − W h_n``.
4. :mod:`.output` — ``O = scale·(diag(e^g) Q h_n + tril₀(Γ ⊙ Q K̃ᵀ) U)``.

Backward: :mod:`.dv_local`, :mod:`.dh_pass` (reverse state recurrence), :mod:`.bwd_dqk` (gradients through
scores and state reads) and :mod:`.bwd_wy` (gradients through the WY factors, the triangular solve, the Gram
matrix, the decay and the write key). The d rule: :mod:`.d_scan` (forward) and :mod:`.d_scan_bwd`. Shared
Triton helpers, the value-check bits and the block rules are in :mod:`._common`; the twins are also listed in
:mod:`.reference`. Each launcher takes ``launch=`` (:class:`.config.Launch`, per-stage launch
configurations passed down with the call; there is no module-level switch). The launchers check nothing (``chunk_osdn`` and ``d_ratio_scan`` check for them).
"""

from __future__ import annotations

from ._common import (
    BAD_ALPHA,
    BAD_BETA,
    BAD_D,
    BAD_K,
    BAD_Q,
    BAD_V,
    INTERPRET,
    _block,
    _bv,
    acc_dtype,
    wide_dtype,
)
from .bwd_dqk import _bwd_dqk_kernel, bwd_dqk
from .bwd_wy import _bk_wy, _bwd_wy_kernel, bwd_wy
from .config import DEFAULT_LAUNCH, STAGE_NAMES, Launch, LaunchConfig
from .dh_pass import _dh_kernel, dh_pass
from .dv_local import _dv_local_kernel, dv_local
from .gram_solve import _gram_solve_kernel, gram_solve
from .output import _output_kernel, output
from .state_pass import _state_kernel, state_pass
from .wy_factors import _wy_kernel, wy_factors

__all__ = [
    "DEFAULT_LAUNCH",
    "STAGE_NAMES",
    "Launch",
    "LaunchConfig",
    "BAD_ALPHA",
    "BAD_BETA",
    "BAD_D",
    "BAD_K",
    "BAD_Q",
    "BAD_V",
    "INTERPRET",
    "_block",
    "_bk_wy",
    "_bv",
    "_bwd_dqk_kernel",
    "_bwd_wy_kernel",
    "_dh_kernel",
    "_dv_local_kernel",
    "_gram_solve_kernel",
    "_output_kernel",
    "_state_kernel",
    "_wy_kernel",
    "acc_dtype",
    "wide_dtype",
    "gram_solve",
    "wy_factors",
    "state_pass",
    "output",
    "dv_local",
    "dh_pass",
    "bwd_dqk",
    "bwd_wy",
]
