"""The claims registry: one :class:`ClaimSpec` per claim label, each producing a :class:`ClaimResult`.

A claim is a plain function ``fn(size, seed) -> Outcome`` decorated with :func:`claim`. The decorator
records the label, the statement, the assumptions, the kind of comparison and two problem sizes (``quick``
and ``full``); :func:`run_claim` times the function and wraps its :class:`Outcome` into a JSON-serialisable
:class:`ClaimResult`. The same registry drives ``osdn verify``, the tests and the notebooks.

Kinds of comparison (``ClaimResult.comparison``):

* ``"equal within tol"`` — ``measured`` is a relative error, ``bound`` the tolerance;
  passes iff measured ≤ bound.
* ``"upper bound"`` — passes iff measured ≤ bound.
* ``"lower bound"`` — passes iff measured ≥ bound.
* ``"trend"`` — a qualitative statement about a sequence (e.g. super-geometric decay); the claim decides.
* ``"measurement"`` — a number reported with its spread, no verdict (``passed is None``).

A *negative control* is a claim whose assumption was removed on purpose; ``passed`` then means the check
behaved as the theory predicts for the broken assumption (the bound is violated, the decay is geometric).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from .._validate import check_choice, check_scalar

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

COMPARISONS = ("equal within tol", "upper bound", "lower bound", "trend", "measurement")
BUDGETS = ("quick", "full")


class Size(Mapping):
    """Read-only problem size of one claim run: ``size.T``, ``size["T"]`` and ``size.budget`` (quick|full)."""

    def __init__(self, budget: str, values: Mapping[str, Any]):
        self._budget = budget
        self._values = MappingProxyType(dict(values))

    @property
    def budget(self) -> str:
        return self._budget

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"size ({self._budget}) has no parameter {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Size({self._budget!r}, {dict(self._values)!r})"


@dataclass
class Outcome:
    """What a claim function returns: the numbers; the registry adds the claim's metadata and timing.

    ``passed`` may be left ``None`` for ``equal within tol``/``upper bound``/``lower bound`` claims, in which
    case it is computed from ``measured`` and ``bound``. ``series`` holds curves for figures
    (name → list of floats); ``evidence`` holds every number a reader needs to audit the verdict.
    """

    measured: float | None
    bound: float | None = None
    passed: bool | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class ClaimResult:
    """One verified (or measured) claim; ``to_dict()`` is JSON-serialisable."""

    label: str
    title: str
    statement: str
    assumptions: list[str]
    measured: float | None
    bound: float | None
    comparison: str
    passed: bool | None
    evidence: dict[str, Any]
    negative_control: bool = False
    duration_s: float = 0.0
    budget: str = "quick"
    seed: int = 0
    proof: str | None = None
    series: dict[str, list[float]] = field(default_factory=dict)
    error: str | None = None

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.passed is None:
            return "measured"
        return "PASS" if self.passed else "FAIL"

    def to_dict(self, *, include_series: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
        if not include_series:
            d.pop("series")
        return _jsonable(d)


def _jsonable(x: Any) -> Any:
    """Recursively convert numpy/torch scalars and arrays to plain Python (non-finite floats to strings)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, str):
        return _jsonable(x.tolist())
    if isinstance(x, bool) or x is None or isinstance(x, str | int):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else repr(x)
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f if math.isfinite(f) else repr(f)


@dataclass(frozen=True)
class ClaimSpec:
    """A registered claim: metadata plus the function ``fn(size, seed) -> Outcome``."""

    label: str
    title: str
    statement: str
    assumptions: tuple[str, ...]
    comparison: str
    negative_control: bool
    quick: Mapping[str, Any]
    full: Mapping[str, Any]
    proof: str | None
    fn: Callable[[Size, int], Outcome]

    def size(self, budget: str) -> Size:
        check_choice("budget", budget, BUDGETS)
        return Size(budget, self.quick if budget == "quick" else self.full)

    def __call__(self, budget: str = "quick", seed: int = 0) -> ClaimResult:
        return run_claim(self, budget=budget, seed=seed)


_REGISTRY: dict[str, ClaimSpec] = {}


def claim(
    label: str,
    *,
    title: str,
    statement: str,
    assumptions: Iterable[str] = (),
    comparison: str,
    quick: Mapping[str, Any],
    full: Mapping[str, Any] | None = None,
    negative_control: bool = False,
    proof: str | None = None,
) -> Callable[[Callable[[Size, int], Outcome]], ClaimSpec]:
    """Register ``fn(size, seed) -> Outcome`` under ``label``; returns the :class:`ClaimSpec`.

    ``quick`` and ``full`` are the problem sizes (``full`` defaults to ``quick``); ``proof`` names the
    ``proofs_check`` module holding the symbolic proof, if any.
    """
    if not isinstance(label, str) or not label:
        raise ValueError(f"label: expected a non-empty string, got {label!r}")
    check_choice("comparison", comparison, COMPARISONS)

    def deco(fn: Callable[[Size, int], Outcome]) -> ClaimSpec:
        if label in _REGISTRY:
            raise ValueError(f"label: claim {label!r} is already registered")
        spec = ClaimSpec(
            label=label,
            title=title,
            statement=statement,
            assumptions=tuple(assumptions),
            comparison=comparison,
            negative_control=negative_control,
            quick=MappingProxyType(dict(quick)),
            full=MappingProxyType(dict(full if full is not None else quick)),
            proof=proof,
            fn=fn,
        )
        _REGISTRY[label] = spec
        return spec

    return deco


def _load_all() -> None:
    # Importing the claim modules registers them (idempotent).
    from . import (  # noqa: F401
        c1_exact_quadratic,
        c2_right_preconditioning,
        c3_chunk_form,
        c4_contraction,
        c5_affine_update,
        c6_fixed_point,
        c7_super_geometric,
        c8_rls,
        c9_apf,
        r_recall,
    )


def registry() -> dict[str, ClaimSpec]:
    """All registered claims, in label order (C1, C2, …, then their variants)."""
    _load_all()
    return {k: _REGISTRY[k] for k in sorted(_REGISTRY, key=_label_key)}


def _label_key(label: str) -> tuple:
    head, _, tail = label.partition("-")
    num = head[1:] if head[:1] == "C" and head[1:].isdigit() else None
    return (0 if num is not None else 1, int(num) if num is not None else 0, head, tail)


def labels() -> list[str]:
    """The registered claim labels, in order."""
    return list(registry())


def get_claim(label: str) -> ClaimSpec:
    """The claim registered under ``label``; unknown labels raise ``ValueError`` listing the valid ones."""
    reg = registry()
    if label not in reg:
        raise ValueError(f"label: unknown claim {label!r}; valid labels are {', '.join(reg)}")
    return reg[label]


def select(only: Iterable[str] | str | None = None) -> list[ClaimSpec]:
    """Claims selected by ``only`` (labels, or a comma-separated string); ``None`` selects all.

    A bare family label such as ``C4`` also selects its variants (``C4-bound``, ``C4-neg-…``).
    """
    reg = registry()
    if only is None:
        return list(reg.values())
    if isinstance(only, str):
        only = [s for s in only.split(",")]
    wanted = [s.strip() for s in only if s.strip()]
    if not wanted:
        valid = ", ".join(reg)
        raise ValueError(f"only: expected at least one claim label, got {only!r}; valid labels are {valid}")
    out: list[ClaimSpec] = []
    for w in wanted:
        hits = [s for k, s in reg.items() if k == w or k.startswith(w + "-")]
        if not hits:
            raise ValueError(f"only: unknown claim label {w!r}; valid labels are {', '.join(reg)}")
        out.extend(h for h in hits if h not in out)
    return out


def run_claim(
    spec: ClaimSpec, *, budget: str = "quick", seed: int = 0, catch: bool = False, perturb: float = 0.0
) -> ClaimResult:
    """Run one claim at ``budget`` (quick|full) with ``seed``; time it and wrap its :class:`Outcome`.

    With ``catch=True`` an exception inside the claim is recorded as a failed result (verdict ``ERROR``)
    instead of propagating, so a report run can continue. ``perturb`` multiplies every random input draw by
    ``1 + perturb·u`` (:func:`~osdn_theory.claims._common.perturbed_draws`): a verdict must not change under
    ``perturb = 1e-15``.
    """
    from ._common import perturbed_draws

    size = spec.size(budget)
    seed = int(check_scalar("seed", seed, 0, None, integer=True))
    perturb = check_scalar("perturb", perturb, 0.0, 1e-3)
    t0 = time.perf_counter()
    try:
        with perturbed_draws(perturb, seed):
            out = spec.fn(size, seed)
    except Exception as exc:  # noqa: BLE001 - recorded, re-raised unless catch
        if not catch:
            raise
        return ClaimResult(
            label=spec.label,
            title=spec.title,
            statement=spec.statement,
            assumptions=list(spec.assumptions),
            measured=None,
            bound=None,
            comparison=spec.comparison,
            passed=False,
            evidence={},
            negative_control=spec.negative_control,
            duration_s=time.perf_counter() - t0,
            budget=budget,
            seed=seed,
            proof=spec.proof,
            error=f"{type(exc).__name__}: {exc}",
        )
    dt = time.perf_counter() - t0
    if not isinstance(out, Outcome):
        raise TypeError(f"claim {spec.label}: expected the claim function to return an Outcome, got {out!r}")
    passed = out.passed
    if passed is None and spec.comparison != "measurement":
        if spec.comparison == "trend":
            raise ValueError(f"claim {spec.label}: a 'trend' claim must decide passed itself")
        m, b = out.measured, out.bound
        if m is None or b is None or not (math.isfinite(m) and math.isfinite(b)):
            passed = False
        elif spec.comparison in ("equal within tol", "upper bound"):
            passed = m <= b
        else:
            passed = m >= b
    if spec.comparison == "measurement":
        passed = None
    return ClaimResult(
        label=spec.label,
        title=spec.title,
        statement=spec.statement,
        assumptions=list(spec.assumptions),
        measured=None if out.measured is None else float(out.measured),
        bound=None if out.bound is None else float(out.bound),
        comparison=spec.comparison,
        passed=None if passed is None else bool(passed),
        evidence=_jsonable(out.evidence),
        negative_control=spec.negative_control,
        duration_s=dt,
        budget=budget,
        seed=seed,
        proof=spec.proof,
        series={k: [float(x) for x in v] for k, v in out.series.items()},
    )


def run_claims(
    only: Iterable[str] | str | None = None,
    *,
    budget: str = "quick",
    seed: int = 0,
    catch: bool = True,
    progress: Callable[[ClaimSpec], None] | None = None,
) -> list[ClaimResult]:
    """Run the selected claims in label order; ``progress(spec)`` is called before each one."""
    check_choice("budget", budget, BUDGETS)
    results = []
    for spec in select(only):
        if progress is not None:
            progress(spec)
        results.append(run_claim(spec, budget=budget, seed=seed, catch=catch))
    return results
