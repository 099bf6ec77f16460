"""Sweep methods: what a ``[[method]]`` entry of a sweep file names, each a registered :class:`SweepMethod`.

Built-ins (keys besides ``name``):

- ``deltanet``: ``d ≡ 1``. Optional ``s_max``.
- ``osdn``: the state-free d-scan of :func:`osdn_theory.preconditioners.d_scan`, then the chunk form.
  Keys: ``rule`` (a registered state-free feedback rule: ``"ratio"``, ``"hyper"``, a user's name, or its
  table ``{name = "...", ...}``), ``step`` (a step-rule table, e.g. ``{name = "normalized", c = 0.5}``),
  ``d_init``, ``d_min``, ``positivity``, ``apf`` (an APF table, e.g.
  ``{prior = {name = "ones"}, rate = {name = "constant_forgetting", lam = 0.01}}``), ``s_max``.
- ``token_local``: token-local Newton ``d_t = 1/(β_t‖k_t‖²)`` (``s_t = 1``). Optional ``s_max``.
- ``rls``: recursive least squares, the cumulative right-Newton comparator; ``gamma`` (forgetting), ``lam``.

A new method subclasses :class:`SweepMethod` (``name``, ``keys``, :meth:`~SweepMethod.build`,
:meth:`~SweepMethod.preconditioner`) and is registered with ``osdn_theory.register(MyMethod())``; a sweep file
that names it lists the module that registers it under ``plugins`` (``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from .._validate import check_choice, check_scalar
from ..registry import register

__all__ = ["SweepMethod", "DeltaNetMethod", "OSDNMethod", "TokenLocalMethod", "RLSMethod", "check_s_max"]


def check_s_max(m: Mapping) -> float | None:
    """The optional write-gain clip ``s_max`` of a method table: a number in (0, 2), or ``None``."""
    s_max = m.get("s_max")
    if s_max is None:
        return None
    if isinstance(s_max, bool) or not isinstance(s_max, int | float) or not 0 < s_max < 2:
        raise ValueError(f"s_max: expected a number in (0, 2) or absent, got {s_max!r}")
    return float(s_max)


class SweepMethod:
    """The protocol of a sweep method (one instance per name, registered under kind ``"method"``).

    Attributes:
        name: what ``[[method]] name = ...`` says.
        keys: the table keys it accepts besides ``name`` (include ``"s_max"`` to accept the write-gain clip).
        full_matrix: ``True`` only for the RLS comparator (its own recurrence instead of a diagonal ``d``).
    """

    kind: ClassVar[str] = "method"
    name: ClassVar[str] = ""
    keys: ClassVar[tuple[str, ...]] = ("s_max",)
    full_matrix: ClassVar[bool] = False

    def build(self, m: Mapping[str, Any]) -> dict[str, Any]:
        """Validate the table ``m`` (keys already checked against :attr:`keys`); return the keyword arguments
        :meth:`preconditioner` needs (plain objects; errors are ``ValueError`` naming the key)."""
        return {}

    def preconditioner(
        self, kwargs: dict[str, Any], k: torch.Tensor, beta: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(d [B, T, H, K] or None for d ≡ 1, APF trigger counts [B, H] or None)`` from the stacked keys
        ``k: [B, T, H, K]`` and write strengths ``beta: [B, T, H]`` (float64)."""
        raise NotImplementedError


@register
class DeltaNetMethod(SweepMethod):
    name: ClassVar[str] = "deltanet"

    def preconditioner(self, kwargs, k, beta):
        return None, None


@register
class TokenLocalMethod(SweepMethod):
    name: ClassVar[str] = "token_local"

    def preconditioner(self, kwargs, k, beta):
        from ..comparators import token_local_newton_d

        return token_local_newton_d(k, beta), None


@register
class RLSMethod(SweepMethod):
    name: ClassVar[str] = "rls"
    keys: ClassVar[tuple[str, ...]] = ("gamma", "lam")
    full_matrix: ClassVar[bool] = True

    def build(self, m):
        return {
            "gamma": check_scalar("gamma", m.get("gamma", 1.0), 0.0, 1.0, lo_open=True),
            "lam": check_scalar("lam", m.get("lam", 1.0), 0.0, None, lo_open=True),
        }


@register
class OSDNMethod(SweepMethod):
    name: ClassVar[str] = "osdn"
    keys: ClassVar[tuple[str, ...]] = ("rule", "step", "d_init", "d_min", "positivity", "apf", "s_max")

    def build(self, m):
        from ..apf import as_apf
        from ..preconditioners import as_feedback_rule, as_step_rule

        rule = m.get("rule", "ratio")
        fb = as_feedback_rule(rule, "rule")
        if not fb.state_free:
            raise ValueError(
                f"rule: expected a state-free rule (the d-scan runs before the memory), got {fb.name!r}"
            )
        kw: dict[str, Any] = {"rule": rule if isinstance(rule, str) else fb}
        if "step" in m:
            kw["step"] = as_step_rule(m["step"])
        for key in ("d_init", "d_min"):
            if key in m:
                kw[key] = check_scalar(key, m[key], 0.0, None, lo_open=True)
        if "positivity" in m:
            kw["positivity"] = check_choice("positivity", m["positivity"], ("floor", "none"))
        if m.get("apf") is not None:
            kw["apf"] = as_apf(dict(m["apf"]), "apf")
        return kw

    def preconditioner(self, kwargs, k, beta):
        from ..preconditioners import d_scan

        scan = d_scan(k, beta, **kwargs)
        return scan.d, scan.triggered.sum(1).to(torch.float64)
