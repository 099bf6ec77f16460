"""C3 — the chunkwise UT/WY form equals the recurrence (spec §3).

With the write key ``k̃ = d ⊙ k`` only three things change against DeltaNet's chunk form: the intra-chunk
Gram ``K K̃ᵀ``, the state update with ``K̃`` and the intra-chunk score ``Q K̃ᵀ``. Checked:
:func:`osdn_theory.osdn_chunkwise` against :func:`osdn_theory.osdn_recurrent` for several chunk sizes,
an odd ``T`` (tail chunk padded), with and without gating, clip and initial state, at the tolerance for
algebraically identical float64 forms. Symbolic proof for chunk sizes 2 and 3:
``proofs_check/c3_chunk_form.py``.
"""

from __future__ import annotations

import math

import torch

from ..chunkwise import osdn_chunkwise
from ..recurrences import osdn_recurrent
from ..tolerances import EXACT_FLOAT64, rel_err
from ._common import F64, generator, random_inputs, worst
from ._registry import Outcome, Size, claim


@claim(
    "C3",
    title="Chunk form = recurrence",
    statement="UT/WY chunkwise OSDN (Gram K K̃ᵀ, state update K̃, score Q K̃ᵀ) reproduces the recurrence",
    assumptions=["any chunk size C ≥ 1, any T (tail padded with β = 0)", "gated: α ∈ (0, 1]", "float64"],
    comparison="equal within tol",
    quick=dict(B=1, T=37, H=2, K=6, V=5, chunk_sizes=(1, 2, 3, 8, 16, 64)),
    full=dict(B=2, T=257, H=2, K=16, V=12, chunk_sizes=(1, 2, 3, 5, 16, 32, 64, 300)),
    proof="proofs_check.c3_chunk_form",
)
def c3_chunk_form(size: Size, seed: int) -> Outcome:
    g = generator(seed, 3)
    errs: dict[str, float] = {}
    for gated in (False, True):
        for s_max in (None, 1.5):
            q, k, v, beta, d, alpha = random_inputs(
                g, size.B, size.T, size.H, size.K, size.V, normalize=False, d_box=(0.2, 2.0), gated=gated
            )
            h0 = torch.randn(size.B, size.H, size.K, size.V, generator=g, dtype=F64)
            kw = dict(alpha=alpha, initial_state=h0, output_final_state=True, s_max=s_max)
            o_ref, s_ref = osdn_recurrent(q, k, v, beta, d, **kw)
            for C in size.chunk_sizes:
                o, s = osdn_chunkwise(q, k, v, beta, d, chunk_size=C, **kw)
                tag = f"{'gated' if gated else 'ungated'}-clip{s_max}-C{C}"
                errs[tag] = worst(rel_err(o, o_ref), rel_err(s, s_ref))
    worst_case = max(errs, key=lambda t: (math.isnan(errs[t]), errs[t]))
    return Outcome(
        measured=errs[worst_case],
        bound=EXACT_FLOAT64,
        evidence=dict(
            worst_case=worst_case,
            errors=errs,
            T=size.T,
            chunk_sizes=list(size.chunk_sizes),
            shape=[size.B, size.T, size.H, size.K, size.V],
            dtype="float64",
            seed=seed,
        ),
    )
