"""Triton chunkwise OSDN kernel (set TRITON_INTERPRET=1 before importing to run it on CPU).

Public API: :func:`chunk_osdn` (forward and backward), :class:`DRule` (the state-free ``ratio`` rule
that computes ``d`` from the keys, differentiable by default) and :func:`check_values` (waits for the
device-side value checks of earlier calls and raises :class:`ValueCheckError` for a bad one;
:func:`discard_values` clears them instead); :func:`chunk_delta_rule_compat` takes fla
``chunk_delta_rule``'s arguments in fla's order. Each stage lives in its own module (kernel, launcher, torch
twin; :mod:`.stages` lists them in order, :mod:`.reference` the twins); launch configurations are passed per
call as a :class:`.config.Launch`.
"""

from .._validate import ValueCheckError
from ._checks import check_values, discard_values
from .chunk import chunk_osdn
from .compat import chunk_delta_rule_compat
from .drule import DRule, d_ratio_scan
from .l2norm import l2norm

__all__ = [
    "chunk_osdn",
    "chunk_delta_rule_compat",
    "DRule",
    "d_ratio_scan",
    "check_values",
    "discard_values",
    "ValueCheckError",
    "l2norm",
]
