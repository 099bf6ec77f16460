"""Claims registry (C1–C9 and their negative controls): each claim returns a :class:`ClaimResult`.

>>> from osdn_theory.claims import run_claims
>>> results = run_claims("C1,C4", budget="quick", seed=0)   # doctest: +SKIP
>>> results_frame(results)                                  # doctest: +SKIP

The same registry drives ``osdn verify``, the tests and the notebooks.
"""

from ..osgm import osgm_diagonal_gd
from ._registry import (
    BUDGETS,
    COMPARISONS,
    ClaimResult,
    ClaimSpec,
    Outcome,
    Size,
    claim,
    get_claim,
    labels,
    registry,
    run_claim,
    run_claims,
    select,
)
from .report import results_frame, write_report

__all__ = [
    "BUDGETS",
    "COMPARISONS",
    "ClaimResult",
    "ClaimSpec",
    "Outcome",
    "Size",
    "claim",
    "get_claim",
    "labels",
    "osgm_diagonal_gd",
    "registry",
    "results_frame",
    "run_claim",
    "run_claims",
    "select",
    "write_report",
]
