"""The method-generic claims, run on a user's rule: ``osdn verify --plugin FILE --method NAME``.

For a feedback rule (or a step rule, then with the ratio feedback) the claims that do not depend on which
rule produced ``d`` are run on the ``d`` it produces, with the same statistics as the built-ins:

* ``C4-bound[NAME]`` — the algorithm-aligned contraction bound evaluated on the rule's ``d``: per token, with
  the box ``[min_i d_t,i, max_i d_t,i]``, ``‖r⁺‖/‖e‖ ≤ max(|1 − β d_min‖k‖²|, |1 − β d_max‖k‖²|)``, and a strict
  contraction wherever ``β d_max ‖k‖² < 2`` (:func:`~osdn_theory.claims.c4_contraction.c4_rule_bound`).
* ``C4-clip[NAME]`` — the clip guarantee on the rule's ``d`` and on ``10 d``: ``s ≤ s_max`` and
  ``‖r⁺‖/‖e‖ ≤ max(1 − s, s_max − 1)``.
* ``C7[NAME]`` — SG-token with the rule, where its assumptions hold (unit keys, fixed β, stationary isotropic
  keys, so the exact-write comparator ``d = 1/β`` is feasible): the pass fraction over 30 (quick) / 50 (full)
  realisations judged super-geometric, with its 95 % Clopper–Pearson interval
  (:func:`osdn_theory.stats.fraction_verdict`), PASS iff its lower end ≥ 0.8, DeltaNet rejected by the same
  statistic (:func:`~osdn_theory.claims.c7_super_geometric.sg_token`).

These specs are not added to the registry (``osdn verify --list`` shows the built-ins only); they run beside
the built-ins in one report.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .._validate import _desc
from ._registry import ClaimSpec

__all__ = ["method_claims", "resolve_method"]


def resolve_method(method: Any, step: Any = None, argname: str = "method") -> tuple[Any, Any, str]:
    """``(feedback rule, step rule, label)`` of ``method``: a registered feedback rule or step rule (its name,
    object or dictionary). A step rule runs with the ratio feedback; ``step`` (a step rule, its dictionary, a
    schedule or a number) overrides the default ``NormalizedStep(0.5)``."""
    from ..preconditioners import FeedbackRule, StepRule, as_feedback_rule, as_step_rule
    from ..registry import build, lookup, names

    obj = method
    if isinstance(method, str):
        if method in names("feedback_rule"):
            obj = as_feedback_rule(method, argname)
        elif method in names("step_rule"):
            obj = build({"name": method}, argname, lookup("step_rule", method, argname))
        else:
            raise ValueError(
                f"{argname}: expected a registered feedback rule {names('feedback_rule')} or step rule "
                f"{names('step_rule')} (load its plugin first), got {method!r}"
            )
    elif isinstance(method, Mapping):
        obj = build(method, argname)
    if isinstance(obj, FeedbackRule):
        rule = as_feedback_rule(obj, argname)
        if not rule.state_free:
            raise ValueError(f"{argname}: expected a state-free feedback rule, got {rule.name!r}")
        st = None if step is None else as_step_rule(step, "step")
    elif isinstance(obj, StepRule):
        if step is not None:
            raise ValueError(f"step: {argname} {obj.name!r} is already a step rule; give no step")
        rule, st = as_feedback_rule("ratio"), obj
    else:
        raise ValueError(f"{argname}: expected a feedback rule or a step rule, got {_desc(method)}")
    label = rule.name if st is None else (obj.name if isinstance(obj, StepRule) else f"{rule.name},{st.name}")
    return rule, st, label


def method_claims(method: Any, step: Any = None) -> list[ClaimSpec]:
    """The method-generic claims (module docstring) for ``method`` (see :func:`resolve_method`)."""
    from ._registry import get_claim
    from .c4_contraction import RULE_SIZES, c4_rule_bound, c4_rule_clip
    from .c7_super_geometric import SG_REQUIRED, sg_token

    rule, st, label = resolve_method(method, step)
    c7 = get_claim("C7")
    on = f"on the d produced by {label!r}"

    def spec(base, title, statement, assumptions, comparison, quick, full, fn) -> ClaimSpec:
        return ClaimSpec(
            label=f"{base}[{label}]",
            title=title,
            statement=statement,
            assumptions=tuple(assumptions),
            comparison=comparison,
            negative_control=False,
            quick=MappingProxyType(dict(quick)),
            full=MappingProxyType(dict(full)),
            proof=None,
            fn=fn,
        )

    return [
        spec(
            "C4-bound",
            f"Contraction bound {on}",
            "per token with d_t in [min_i d_t,i, max_i d_t,i]: ‖r⁺‖/‖e‖ ≤ max(|1 − βd_min‖k‖²|, |1 − βd_max‖k‖²|), "
            f"< 1 where βd_max‖k‖² < 2, {on}",
            ["the box of each token is the range of the rule's own d_t", "anisotropic unit-direction keys"],
            "upper bound",
            RULE_SIZES["quick"],
            RULE_SIZES["full"],
            lambda size, seed: c4_rule_bound(size, seed, rule, st),
        ),
        spec(
            "C4-clip",
            f"Clip guarantee {on}",
            f"s ≤ s_max and ‖r⁺‖/‖e‖ ≤ max(1 − s, s_max − 1) with d and 10 d, {on}",
            ["s_max ∈ (0, 2)"],
            "upper bound",
            RULE_SIZES["quick"],
            RULE_SIZES["full"],
            lambda size, seed: c4_rule_clip(size, seed, rule, st),
        ),
        spec(
            "C7",
            f"SG-token with {label!r}",
            "with ‖k_t‖ = 1 the exact-write comparator d = 1/β is feasible; ρ_t = (1 − s_t)² of the rule's d is "
            "super-geometric in a fraction of realisations whose 95 % Clopper–Pearson interval has its lower end ≥ "
            f"{SG_REQUIRED}; DeltaNet rejected by the same statistic",
            [*c7.assumptions[:2], "stationary isotropic keys", f"feedback {rule.name!r}"],
            "trend",
            c7.quick,
            c7.full,
            lambda size, seed: sg_token(size, seed, rule, st),
        ),
    ]
