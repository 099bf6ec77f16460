"""Plain-torch twins of the Triton stages (same packed layout, same results), one beside each stage's kernel.

Each function takes the packed tensors (``[N, H, ·]``, chunk ``bounds [NC, 2]``, ``cu_seqlens``) and loops
over chunks in Python; they exist to test each stage alone, on tiny shapes, in float64. This module lists them;
each lives in its stage's module (:mod:`.gram_solve`, :mod:`.wy_factors`, …, :mod:`.d_scan`).
"""

from __future__ import annotations

from .bwd_dqk import bwd_dqk_ref
from .bwd_wy import bwd_wy_ref
from .d_scan import d_scan_ref
from .dh_pass import dh_pass_ref
from .dv_local import dv_local_ref
from .gram_solve import gram_solve_ref
from .output import output_ref
from .state_pass import state_pass_ref
from .wy_factors import wy_factors_ref

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
