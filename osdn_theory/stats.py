"""Verdicts as statistics over seeds: a pass fraction with an exact (Clopper–Pearson) interval.

A claim that holds "for most realisations" (super-geometric convergence, APF recovery) is judged by a
pre-registered rule: run ``n`` independent realisations, count the ``k`` that pass the per-realisation test,
and PASS only when the lower end of the two-sided Clopper–Pearson interval at ``confidence`` clears the stated
fraction ``required``. A negative control is judged by the same statistic from the other side: it FAILS the
claim's test (as the theory predicts) when the *upper* end of the interval lies below ``required``.

>>> v = fraction_verdict(50, 50, required=0.8)
>>> v.passed, round(v.low, 3)
(True, 0.929)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import beta as _beta

from ._validate import check_scalar

__all__ = ["FractionVerdict", "clopper_pearson", "fraction_verdict"]

#: Confidence of every interval in the claims report (two-sided).
CONFIDENCE = 0.95


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided binomial interval ``(low, high)`` for ``k`` successes in ``n`` trials."""
    n = check_scalar("n", n, 1, None, integer=True)
    k = check_scalar("k", k, 0, n, integer=True)
    confidence = check_scalar("confidence", confidence, 0.0, 1.0, lo_open=True, hi_open=True)
    a = 1.0 - confidence
    low = 0.0 if k == 0 else float(_beta.ppf(a / 2, k, n - k + 1))
    high = 1.0 if k == n else float(_beta.ppf(1 - a / 2, k + 1, n - k))
    return low, high


@dataclass(frozen=True)
class FractionVerdict:
    """``k`` of ``n`` realisations passed their test; ``fraction = k/n`` with interval ``[low, high]``.

    ``passed`` (positive claim): ``low ≥ required``. ``rejected`` (what a negative control needs):
    ``high < required``, i.e. the data exclude the claimed pass fraction.
    """

    k: int
    n: int
    fraction: float
    low: float
    high: float
    required: float
    confidence: float
    passed: bool
    rejected: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.k}/{self.n} = {self.fraction:.2f}, {self.confidence:.0%} CI [{self.low:.2f}, {self.high:.2f}]"
            f" vs required {self.required:.2f}"
        )


def fraction_verdict(k: int, n: int, *, required: float, confidence: float = CONFIDENCE) -> FractionVerdict:
    """Judge ``k`` passes out of ``n`` against the pre-registered fraction ``required`` in (0, 1]."""
    required = check_scalar("required", required, 0.0, 1.0, lo_open=True)
    low, high = clopper_pearson(k, n, confidence)
    return FractionVerdict(
        k=int(k),
        n=int(n),
        fraction=k / n,
        low=low,
        high=high,
        required=required,
        confidence=confidence,
        passed=bool(low >= required),
        rejected=bool(high < required),
    )
