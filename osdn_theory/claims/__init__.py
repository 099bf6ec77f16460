"""Claims registry (C1–C8 and their negative controls): each claim returns a :class:`ClaimResult`.

>>> from osdn_theory.claims import run_claims
>>> results = run_claims("C1,C4", budget="quick", seed=0)   # doctest: +SKIP

The same registry drives ``osdn verify``, the tests and the notebooks.
"""

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
    "registry",
    "run_claim",
    "run_claims",
    "select",
]
