"""Triton chunkwise OSDN kernel (set TRITON_INTERPRET=1 before importing to run it on CPU).

Public API: :func:`chunk_osdn` (forward and backward) and :class:`DRule` (the state-free ``ratio`` rule
that computes ``d`` from the keys). The stages live in :mod:`.stages`, their torch twins in :mod:`.reference`.
"""

from .chunk import chunk_osdn
from .drule import DRule, d_ratio_scan

__all__ = ["chunk_osdn", "DRule", "d_ratio_scan"]
