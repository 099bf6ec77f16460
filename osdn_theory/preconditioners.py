"""The online diagonal preconditioner of OSDN, learned by hypergradient feedback (spec §5, claims C5–C7).

Protocol (OSGM): ``d_1 = d_init``; token ``t`` is written with ``d_t`` (write key ``k̃_t = d_t ⊙ k_t``), its
feedback ``f_t(d)`` is observed, and one online-gradient step gives ``d_{t+1}``. With ``u_t = k_t ⊙ k_t``
and the write gain ``s_t(d) = β_t u_tᵀ d``, the feedback rules are

=========  ==============================================  ==================================  ============
rule       feedback ``f_t(d)``                             gradient ``g_t = ∇f_t(d_t)``        state
=========  ==============================================  ==================================  ============
``ratio``  ``(1 − s_t(d))² = ‖r⁺_t‖² / ‖e_t‖²``           ``−2 β_t (1 − s_t) u_t``            free
``hyper``  ``((1 − s_t(d))² − 1) / (2‖k_t‖²)``            ``−β_t (1 − s_t) u_t / ‖k_t‖²``     free
``raw``    ``½‖r⁺_t(d)‖² = ½ (1 − s_t)² ‖e_t‖²``           ``−β_t ‖e_t‖² (1 − s_t) u_t``       dependent
``next``   ``ℓ_{t+1}(S_t(d)) = ½‖e_{t+1}(d)‖²``            ``−β_t (e_tᵀ e_{t+1}) (k_t ⊙ k_{t+1})``  dependent
=========  ==============================================  ==================================  ============

(``e_t = S_{t−1} k_t − v_t`` is the pre-write residual, ``r⁺_t = S_t k_t − v_t = (1 − s_t) e_t``; with a decay
``α`` the pre-write state is ``α_t S_{t−1}``, which changes neither state-free rule, and ``next`` uses the
true next residual ``e_{t+1} = α_{t+1} S_t k_{t+1} − v_{t+1}``, whose gradient carries a factor
``α_{t+1}``.) Every feedback is a quadratic in ``d`` along one direction ``w`` (``u_t``, or
``k_t ⊙ k_{t+1}`` for ``next``), with curvature ``L_t = λ_max(∇²f_t)``: ``2β²‖u‖²`` (ratio),
``β²‖u‖²/‖k‖²`` (hyper), ``β²‖e‖²‖u‖²`` (raw), ``α²β²‖e_t‖²‖w‖²`` (next).

The state-free rules depend on ``(k, β)`` only, so :func:`d_scan` computes all ``d_t`` first (O(K) per token,
batched over B and H) and any OSDN solver then runs with ``d``. With a step ``η_t`` that does not depend on
``d``, the ratio update is the **affine recurrence**::

    d_{t+1} = (I − 2η_t β_t² u_t u_tᵀ) d_t + 2η_t β_t u_t

— a delta rule on ``d`` with key ``u_t``, target ``1/β_t`` and strength ``2η_t β_t²``
(:func:`ratio_scan_as_delta_rule` computes it with :func:`osdn_theory.recurrences.osdn_recurrent`).

Every feedback rule is a registered :class:`FeedbackRule` (``rule="ratio"`` names one); a user's state-free
rule, registered with :func:`osdn_theory.register`, runs wherever the built-ins do (``docs/extending.md``).

Step rules (serialisable, :func:`to_dict` / :func:`from_dict`):

* :class:`ScheduledStep` — ``η_t = schedule(t)`` (a :mod:`osdn_theory.schedules` schedule).
* :class:`NormalizedStep` — ``η_t = c / L_t`` with ``c ∈ (0, 2)``; for ratio ``η_t = c / (2 β_t² ‖u_t‖²)``, and
  for every rule ``w_tᵀ d_{t+1}`` moves a fraction ``c`` of the way to the token's optimum, e.g.
  ``1 − s_t(d_{t+1}) = (1 − c)(1 − s_t(d_t))`` for ratio and hyper (both then give the same ``d``).
  ``L_t = 0`` (a zero key, or ``e_t = 0`` for raw/next) gives a null step.
* :class:`AdaGradStep` — AdaGrad on the feedback gradient, as in the OSGM reference code:
  ``G_t = G_{t−1} + g_t ⊙ g_t`` (diagonal) or ``+ ‖g_t‖²`` (scalar), ``η_t = eta0 / √(G_t + eps)``. Its step
  depends on past gradients, hence on ``d``: the update is then **not affine**.

Positivity: ``positivity="floor"`` (default) sets ``d ← max(d, d_min)`` after every update (``d_min``
defaults to :data:`DEFAULT_D_MIN`). The floor is a one-sided box projection: where it acts the update is
not affine, so each result reports ``floor_active`` per token and ``affine`` overall. ``positivity="none"``
applies no projection: :func:`d_scan` then returns the exact (affine) recurrence even where it leaves the
positive orthant (``DScan.nonpositive`` flags those tokens), while :func:`osdn_adaptive`, whose memory
write needs ``d > 0``, raises ``ValueError`` naming ``positivity`` at the first ``d ≤ 0``. The write-gain
clip ``s_max`` of :func:`osdn_adaptive` acts on the write key only and never on the scanned ``d``.

APF (spec §8, :mod:`osdn_theory.apf`): after the step, ``d_{t+1} = (1 − λ_t) d^{upd}_{t+1} + λ_t d^{prior}_t``,
then the floor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch

from ._validate import (
    _desc,
    as_tensor,
    check_bool,
    check_choice,
    check_range,
    check_same,
    check_scalar,
    check_shape,
    keys_and_beta,
)
from .apf import APF, as_apf
from .recurrences import Diagnostics, _write_key, osdn_recurrent, prepare_inputs
from .registry import Serializable, build, lookup, names, register
from .schedules import Schedule, as_schedule

__all__ = [
    "RULES",
    "STATE_FREE_RULES",
    "POSITIVITY",
    "DEFAULT_D_MIN",
    "StepRule",
    "FeedbackRule",
    "RatioRule",
    "HyperRule",
    "RawRule",
    "NextRule",
    "as_feedback_rule",
    "feedback_rules",
    "ScheduledStep",
    "NormalizedStep",
    "AdaGradStep",
    "as_step_rule",
    "to_dict",
    "from_dict",
    "DScan",
    "AdaptiveResult",
    "ratio_feedback",
    "hyper_feedback",
    "d_scan",
    "ratio_scan_as_delta_rule",
    "osdn_adaptive",
]

#: The built-in feedback rules (every registered name is accepted: :func:`feedback_rules`).
RULES = ("ratio", "hyper", "raw", "next")
#: The built-in state-free rules (a registered rule declares ``state_free``).
STATE_FREE_RULES = ("ratio", "hyper")
POSITIVITY = ("floor", "none")

#: Default floor of ``positivity="floor"`` when ``d_min`` is not given.
DEFAULT_D_MIN = 1e-6


# ---------------------------------------------------------------------------------------------------------
# Step rules
# ---------------------------------------------------------------------------------------------------------


class StepRule(Serializable):
    """How the step ``η_t`` of the d-update is chosen; ``η_t`` is ``[B, H]`` (or ``[B, H, K]`` per feature).

    A new step rule is a frozen dataclass subclassing this one, with a ``name`` and :meth:`eta` (and
    :meth:`init` / :meth:`restart` if it keeps state), registered with :func:`osdn_theory.register`. It
    declares the shape of its step: ``per_feature = True`` (a class attribute or a property) means ``η_t`` is
    ``[B, H, K]``, otherwise ``[B, H]``; :attr:`DScan.step` is sized by it.
    """

    kind: ClassVar[str] = "step_rule"

    #: whether η_t depends on d through past gradients (then the update is not affine in d)
    depends_on_d: ClassVar[bool] = False

    #: whether η_t has one entry per feature (``[B, H, K]``) rather than one per head (``[B, H]``)
    per_feature: ClassVar[bool] = False

    def init(self, B: int, H: int, K: int, dtype: torch.dtype, device) -> dict:
        return {}

    def restart(self, state: dict, mask: torch.Tensor) -> None:
        """Restart the rule's memory where ``mask: bool [B, H]`` (the clock is restarted by the caller)."""

    def eta(self, state: dict, clock: torch.Tensor, g: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """Step for the gradient ``g: [B, H, K]`` with curvature ``L: [B, H]`` at clock ``clock: long [B, H]``."""
        raise NotImplementedError


@register
@dataclasses.dataclass(frozen=True)
class ScheduledStep(StepRule):
    """``η_t = schedule(t)``, ``t`` the 1-based token index (restarted by an APF trigger if asked).

    ``schedule`` is a :class:`osdn_theory.schedules.Schedule`, its dictionary, or a number (a constant step).
    """

    name: ClassVar[str] = "scheduled"
    schedule: Schedule

    def __post_init__(self):
        object.__setattr__(self, "schedule", as_schedule(self.schedule, "schedule"))

    def eta(self, state, clock, g, L):
        eta = self.schedule(clock).to(dtype=g.dtype, device=g.device)
        if bool((eta < 0).any()):
            raise ValueError(
                f"step: expected a schedule of non-negative steps, got η = {float(eta.min()):.6g}"
            )
        return eta


@register
@dataclasses.dataclass(frozen=True)
class NormalizedStep(StepRule):
    """``η_t = c / L_t`` (null step where ``L_t = 0``), ``c ∈ (0, 2)``; ratio: ``η_t = c / (2 β_t² ‖u_t‖²)``.

    Gives ``1 − s_t(d_{t+1}) = (1 − c)(1 − s_t(d_t))`` on the current key (ratio and hyper rules).
    """

    name: ClassVar[str] = "normalized"
    c: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "c", check_scalar("c", self.c, 0.0, 2.0, lo_open=True, hi_open=True))

    def eta(self, state, clock, g, L):
        return torch.where(L > 0, self.c / torch.where(L > 0, L, 1.0), 0.0)


@register
@dataclasses.dataclass(frozen=True)
class AdaGradStep(StepRule):
    """AdaGrad on the feedback gradient: ``G_t = G_{t−1} + g_t ⊙ g_t``, ``η_t = eta0 / √(G_t + eps)``.

    ``diagonal=True`` (default, as in the OSGM reference code) keeps one accumulator per feature
    (``η_t: [B, H, K]``); ``diagonal=False`` accumulates ``‖g_t‖²`` (``η_t: [B, H]``). Not affine in ``d``.
    """

    name: ClassVar[str] = "adagrad"
    depends_on_d: ClassVar[bool] = True
    eta0: float
    eps: float = 1e-20
    diagonal: bool = True

    @property
    def per_feature(self) -> bool:  # type: ignore[override]
        return self.diagonal

    def __post_init__(self):
        object.__setattr__(self, "eta0", check_scalar("eta0", self.eta0, 0.0, None, lo_open=True))
        object.__setattr__(self, "eps", check_scalar("eps", self.eps, 0.0, None, lo_open=True))
        check_bool("diagonal", self.diagonal)

    def init(self, B, H, K, dtype, device):
        return {"G": torch.zeros((B, H, K) if self.diagonal else (B, H), dtype=dtype, device=device)}

    def restart(self, state, mask):
        m = mask[..., None] if self.diagonal else mask
        state["G"] = torch.where(m, 0.0, state["G"])

    def eta(self, state, clock, g, L):
        state["G"] = state["G"] + (g * g if self.diagonal else (g * g).sum(-1))
        return self.eta0 / torch.sqrt(state["G"] + self.eps)


def as_step_rule(x: Any, argname: str = "step") -> StepRule:
    """A :class:`StepRule` from a rule, its dictionary, a schedule or a number (both → :class:`ScheduledStep`)."""
    if isinstance(x, StepRule):
        return x
    if isinstance(x, Mapping):
        return build(x, argname, StepRule)
    if isinstance(x, Schedule) or (
        isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)
    ):
        return ScheduledStep(as_schedule(x, argname))
    raise ValueError(
        f"{argname}: expected a StepRule (ScheduledStep, NormalizedStep, AdaGradStep or a registered one), "
        f"its dictionary, a schedule or a number, got {_desc(x)}"
    )


def to_dict(rule: StepRule) -> dict[str, Any]:
    """Plain-dictionary form of a step rule, e.g. ``{"name": "normalized", "c": 0.5}``."""
    if not isinstance(rule, StepRule):
        raise ValueError(f"rule: expected a StepRule, got {_desc(rule)}")
    return rule.to_dict()


def from_dict(d: Mapping[str, Any]) -> StepRule:
    """Inverse of :func:`to_dict` (dispatch on ``d["name"]``: scheduled, normalized, adagrad)."""
    return build(d, "d", StepRule)


# ---------------------------------------------------------------------------------------------------------
# Feedback rules
# ---------------------------------------------------------------------------------------------------------


class FeedbackRule(Serializable):
    """The protocol of a feedback rule: what the d-update descends, token by token (``docs/extending.md``).

    A feedback rule is a frozen dataclass subclassing this class, with a ``name`` (how ``rule=`` and sweep files
    refer to it) and :meth:`feedback`, registered with :func:`osdn_theory.register`. Its fields are its
    parameters (``rule = {name = "my_rule", b2 = 0.99}`` in a sweep file; a bare name builds it with its
    defaults). It then runs in :func:`d_scan`, :func:`osdn_adaptive`, the sweep method ``osdn`` and
    ``osdn verify --plugin FILE --method NAME`` exactly like ``ratio`` and ``hyper``.

    Per token ``t`` (shapes per ``(b, h)``; ``u = k_t ⊙ k_t: [B, H, K]``, ``beta: [B, H]``, ``d = d_t: [B, H, K]``)
    :meth:`feedback` returns ``(g, L, f)``:

    * ``g: [B, H, K]`` — the gradient (or any descent direction) of the rule's feedback at ``d_t``; the step rule
      scales it: ``d_{t+1} = d_t − η_t g`` (then the APF gate and the positivity floor);
    * ``L: [B, H]`` — the effective curvature ``L_t ≥ 0`` along ``g``: for a quadratic feedback
      ``gᵀ∇²f g / (∇fᵀg)``, so that :class:`NormalizedStep` (``η_t = c / L_t``) moves a fraction ``c`` of the
      way to the token's optimum along ``g`` (for the built-ins, ``g ∥ u_t`` and this is the table's ``L_t``);
      ``L_t = 0`` gives a null step;
    * ``f: [B, H]`` — the rule's own feedback value ``f_t(d_t)``, recorded in :attr:`DScan.rule_feedback`.

    The framework records the write gain ``s_t = β_t u_tᵀ d_t`` and the calibration loss ``(1 − s_t)²`` itself.
    A rule with memory (moments, counters) keeps it in the dictionary :meth:`init` returns, updated in place
    by :meth:`feedback`; :meth:`restart` clears it where an APF trigger fires with ``restart_clock``.

    Class attributes: ``state_free`` (``True``: the rule sees keys only, so ``d`` is scanned before the memory;
    the state-dependent ``raw`` and ``next`` are built into :func:`osdn_adaptive` and a registered rule must be
    state-free) and ``affine`` (``True`` only when ``g`` is affine in ``d``, ``L`` does not depend on ``d`` and
    no state carries ``d`` forward; then :attr:`DScan.affine` can be true).
    """

    kind: ClassVar[str] = "feedback_rule"
    state_free: ClassVar[bool] = True
    affine: ClassVar[bool] = False

    def init(self, B: int, H: int, K: int, dtype: torch.dtype, device) -> dict:
        """The rule's state for a batch of ``B × H`` streams with ``K`` features (default: none)."""
        return {}

    def restart(self, state: dict, mask: torch.Tensor) -> None:
        """Forget the state where ``mask: bool [B, H]`` (an APF trigger fired with ``restart_clock``)."""

    def feedback(
        self, state: dict, u: torch.Tensor, beta: torch.Tensor, d: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(g [B, H, K], L [B, H], f [B, H])`` at ``d = d_t`` for the token with ``u = k ⊙ k`` and ``beta``."""
        raise NotImplementedError


class _BuiltinStateFree(FeedbackRule):
    """A built-in state-free rule: its feedback is :func:`_state_free_grad` under the rule's name."""

    affine: ClassVar[bool] = True

    def feedback(self, state, u, beta, d):
        g, L, _, _, f = _state_free_grad(self.name, u, beta, d)
        return g, L, f


@register
@dataclasses.dataclass(frozen=True)
class RatioRule(_BuiltinStateFree):
    """``f_t(d) = (1 − s_t(d))²``, ``g_t = −2 β_t (1 − s_t) u_t``, ``L_t = 2β_t²‖u_t‖²`` (module docstring)."""

    name: ClassVar[str] = "ratio"


@register
@dataclasses.dataclass(frozen=True)
class HyperRule(_BuiltinStateFree):
    """OSGM hypergradient ``f_t(d) = ((1 − s_t)² − 1)/(2‖k_t‖²)``, ``g_t = −β_t (1 − s_t) u_t / ‖k_t‖²``."""

    name: ClassVar[str] = "hyper"


@register
@dataclasses.dataclass(frozen=True)
class RawRule(FeedbackRule):
    """``f_t(d) = ½‖r⁺_t(d)‖²`` (state-dependent: runs jointly with the memory in :func:`osdn_adaptive`)."""

    name: ClassVar[str] = "raw"
    state_free: ClassVar[bool] = False


@register
@dataclasses.dataclass(frozen=True)
class NextRule(FeedbackRule):
    """``f_t(d) = ½‖e_{t+1}(d)‖²`` (state-dependent: runs jointly with the memory in :func:`osdn_adaptive`)."""

    name: ClassVar[str] = "next"
    state_free: ClassVar[bool] = False


_BUILTIN_STATE_FREE = (RatioRule, HyperRule)
_BUILTIN_JOINT = (RawRule, NextRule)


def feedback_rules() -> list[str]:
    """The names ``rule=`` accepts: the built-ins and every registered feedback rule."""
    return names("feedback_rule")


def as_feedback_rule(x: Any, argname: str = "rule") -> FeedbackRule:
    """A :class:`FeedbackRule` from a rule, a registered name (built with its defaults) or its dictionary."""
    if isinstance(x, type) and issubclass(x, FeedbackRule):
        x = x.name
    if isinstance(x, str):
        cls = lookup("feedback_rule", x, argname)
        try:
            rule = cls()
        except TypeError:
            raise ValueError(
                f"{argname}: feedback rule {x!r} has parameters without defaults; give its dictionary, "
                f"{{'name': {x!r}, ...}}"
            ) from None
    elif isinstance(x, Mapping):
        rule = build(x, argname, FeedbackRule)
    elif isinstance(x, FeedbackRule):
        rule = x
    else:
        raise ValueError(
            f"{argname}: expected a feedback rule name {feedback_rules()}, a FeedbackRule or its dictionary, "
            f"got {_desc(x)}"
        )
    if not rule.state_free and not isinstance(rule, _BUILTIN_JOINT):
        raise ValueError(
            f"{argname}: feedback rule {rule.name!r} declares state_free = False; only the built-in 'raw' and "
            "'next' run jointly with the memory, a registered rule must be state-free"
        )
    return rule


# ---------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DScan:
    """The preconditioner sequence of a run and what produced it (all per token ``t``, 1-based in the math).

    Attributes:
        d: ``[B, T, H, K]``, the ``d_t`` that writes token ``t`` (``d[:, 0] = d_init``).
        d_final: ``[B, H, K]``, ``d_{T+1}`` (for ``next`` the feedback of token T is never observed: ``d_T``).
        feedback: ``[B, T, H]``, calibration loss ``r_t(d_t) = (1 − β_t u_tᵀ d_t)²`` (before any clip).
        rule_feedback: ``[B, T, H]``, the rule's own ``f_t(d_t)`` (table in the module docstring); for
            ``next`` the last token's entry is NaN (no next token).
        write_gain: ``[B, T, H]``, ``s_t = β_t u_tᵀ d_t`` (before any clip).
        step: ``[B, T, H]`` (``[B, T, H, K]`` for diagonal AdaGrad), the ``η_t`` of the update that produced
            ``d_{t+1}`` (0 where no update happened: last token of ``next``).
        lam: ``[B, T, H]``, the APF rate ``λ_t`` used to form ``d_{t+1}`` (0 without APF).
        triggered: bool ``[B, T, H]``, APF trigger firings.
        floor_active: bool ``[B, T, H]``, tokens where the positivity floor changed ``d_{t+1}``.
        nonpositive: bool ``[B, T, H]``, tokens whose ``d_t`` has an entry ``≤ 0`` (only possible with
            ``positivity="none"``; such a ``d`` cannot drive an OSDN write).
        prior: ``[B, T, H, K]`` APF prior ``d^{prior}_t`` (``None`` without APF; NaN on the last token of
            ``next``, whose update never happens).
        rule: the feedback rule.
        affine: whether ``d_init ↦ d`` is affine for this run (state-free rule, step and APF rate independent
            of ``d``, floor never active).
    """

    d: torch.Tensor
    d_final: torch.Tensor
    feedback: torch.Tensor
    rule_feedback: torch.Tensor
    write_gain: torch.Tensor
    step: torch.Tensor
    lam: torch.Tensor
    triggered: torch.Tensor
    floor_active: torch.Tensor
    prior: torch.Tensor | None
    rule: str
    affine: bool

    @property
    def nonpositive(self) -> torch.Tensor:
        return (self.d <= 0).any(-1)


@dataclasses.dataclass(frozen=True)
class AdaptiveResult:
    """Result of :func:`osdn_adaptive`.

    Attributes:
        o: outputs ``[B, T, H, V]``.
        final_state: ``[B, H, K, V]`` if ``output_final_state`` else ``None``.
        diagnostics: :class:`osdn_theory.recurrences.Diagnostics` of the run (effective, clipped write gain).
        scan: the :class:`DScan` of the preconditioner (``d``, steps, APF rates and triggers, labels).
    """

    o: torch.Tensor
    final_state: torch.Tensor | None
    diagnostics: Diagnostics
    scan: DScan

    @property
    def d(self) -> torch.Tensor:
        """``[B, T, H, K]``: the ``d_t`` that wrote token ``t``."""
        return self.scan.d

    @property
    def feedback(self) -> torch.Tensor:
        """``[B, T, H]``: token-local ratio ``‖r⁺_t‖² / ‖e_t‖² = (1 − s_t)²`` with the effective (clipped) ``s_t``."""
        return (1.0 - self.diagnostics.write_gain) ** 2


# ---------------------------------------------------------------------------------------------------------
# Validation and the per-token update
# ---------------------------------------------------------------------------------------------------------


def _keys_beta(k, beta, alpha, dtype):
    k, beta = keys_and_beta(k, beta, dtype=dtype)
    if alpha is not None:
        alpha = as_tensor("alpha", alpha, dtype=dtype)
        check_shape("alpha", alpha, list(k.shape[:3]), "[B, T, H]")
        check_same("alpha", alpha, "k", k)
        check_range("alpha", alpha, 0.0, 1.0, lo_open=True)
    return k, beta, alpha


def _d_init(d_init, B, H, K, dtype, device) -> torch.Tensor:
    if isinstance(d_init, int | float | np.integer | np.floating) and not isinstance(d_init, bool):
        d0 = torch.full((B, H, K), float(d_init), dtype=dtype, device=device)
    else:
        d0 = as_tensor("d_init", d_init, dtype=dtype, device=device)
        if d0.ndim not in (1, 2, 3):
            raise ValueError(
                f"d_init: expected a number or a tensor of shape [K], [H, K] or [B, H, K] = {[B, H, K]}, "
                f"got {_desc(d_init)}"
            )
        try:
            d0 = torch.broadcast_to(d0, (B, H, K)).clone()
        except RuntimeError:
            raise ValueError(
                f"d_init: expected a number or a tensor of shape [K], [H, K] or [B, H, K] = {[B, H, K]}, "
                f"got {_desc(d_init)}"
            ) from None
    check_range("d_init", d0, 0.0, None, lo_open=True)
    return d0


def _positivity(positivity, d_min) -> float | None:
    check_choice("positivity", positivity, POSITIVITY)
    if positivity == "none":
        if d_min is not None:
            raise ValueError(f"d_min: expected None with positivity='none' (no floor), got {d_min!r}")
        return None
    return DEFAULT_D_MIN if d_min is None else check_scalar("d_min", d_min, 0.0, None, lo_open=True)


class _Update:
    """One d-update per token: step rule, APF gate, positivity. Shared by the scan and the joint loop."""

    def __init__(self, step: StepRule, apf: APF | None, floor: float | None, B, H, K, dtype, device):
        self.step_rule, self.apf, self.floor = step, apf, floor
        self.step_state = step.init(B, H, K, dtype, device)
        self.clock = torch.ones(B, H, dtype=torch.long, device=device)
        if apf is not None:
            self.prior_state = apf.prior.init(B, H, K, dtype, device)
            self.rate_state = apf.rate.init(B, H, K, dtype, device)

    def __call__(self, t: int, d, g, L, u, beta, r):
        """Token ``t`` (1-based): ``d_t, g_t, L_t, u_t, β_t, r_t`` → ``d_{t+1}, η_t, λ_t, fired_t, floor_t, prior_t``."""
        prior = None
        if self.apf is not None:
            lam, fired = self.apf.rate.step(self.rate_state, t, u, r)
            if self.apf.restart_clock:
                self.clock = torch.where(fired, 1, self.clock)
                self.step_rule.restart(self.step_state, fired)
        else:
            lam = torch.zeros_like(r)
            fired = torch.zeros(r.shape, dtype=torch.bool, device=r.device)
        eta = self.step_rule.eta(self.step_state, self.clock, g, L)
        want = tuple(g.shape) if self.step_rule.per_feature else tuple(g.shape[:-1])
        if not isinstance(eta, torch.Tensor) or tuple(eta.shape) != want:
            raise ValueError(
                f"step: step rule {self.step_rule.name!r} returned η of "
                f"{_desc(eta) if not isinstance(eta, torch.Tensor) else 'shape ' + str(list(eta.shape))}, "
                f"expected shape {list(want)} ({'[B, H, K]: per_feature = True' if self.step_rule.per_feature else '[B, H]: per_feature = False'})"
            )
        d_new = d - (eta if eta.ndim == g.ndim else eta[..., None]) * g
        if self.apf is not None:
            prior = self.apf.prior.update(self.prior_state, u, beta)
            d_new = (1.0 - lam)[..., None] * d_new + lam[..., None] * prior
        if self.floor is None:
            floor_active = torch.zeros(r.shape, dtype=torch.bool, device=r.device)
        else:
            floor_active = (d_new < self.floor).any(-1)
            d_new = d_new.clamp_min(self.floor)
        self.clock = self.clock + 1
        return d_new, eta, lam, fired, floor_active, prior


def _state_free_grad(rule: str, u, beta, d):
    """``(g, L, s, r, rule_feedback)`` at ``d`` (all per ``(b, h)``): gradient, curvature, write gain, ratio
    feedback ``r = (1 − s)²`` and the rule's own feedback (``r`` for ratio)."""
    s = beta * (u * d).sum(-1)
    one_m_s = 1.0 - s
    r = one_m_s**2
    uu = (u * u).sum(-1)
    if rule == "ratio":
        g = (-2.0 * beta * one_m_s)[..., None] * u
        L = 2.0 * beta**2 * uu
        f = r
    else:  # hyper
        nk2 = u.sum(-1)
        pos = nk2 > 0
        inv = torch.where(pos, 1.0 / torch.where(pos, nk2, 1.0), 0.0)
        g = (-beta * one_m_s * inv)[..., None] * u
        L = beta**2 * uu * inv
        f = (r - 1.0) * 0.5 * inv
    return g, L, s, r, f


def _rule_feedback(fb: FeedbackRule, state, u, beta, d):
    """A registered rule's ``(g, L, s, r, f)``, each output checked against the protocol (errors name ``rule``)."""
    out = fb.feedback(state, u, beta, d)
    if not isinstance(out, tuple | list) or len(out) != 3:
        raise ValueError(
            f"rule: feedback rule {fb.name!r}: feedback() must return (g, L, f), got {_desc(out)}"
        )
    g, L, f = out
    for what, x, shape, lay in (
        ("g", g, d.shape, "[B, H, K]"),
        ("L", L, beta.shape, "[B, H]"),
        ("f", f, beta.shape, "[B, H]"),
    ):
        if not isinstance(x, torch.Tensor) or x.shape != shape:
            got = f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else _desc(x)
            raise ValueError(
                f"rule: feedback rule {fb.name!r} returned {what} of {got}, expected shape {list(shape)} {lay}"
            )
    if bool((L < 0).any()):
        raise ValueError(
            f"rule: feedback rule {fb.name!r} returned a negative curvature L (min {float(L.min()):.6g})"
        )
    s = beta * (u * d).sum(-1)
    return g.to(d.dtype), L.to(d.dtype), s, (1.0 - s) ** 2, f.to(d.dtype)


def _alloc(B, T, H, K, step_rule, apf, dtype, device):
    e = lambda *shape: torch.empty(*shape, dtype=dtype, device=device)
    step_shape = (B, T, H, K) if step_rule.per_feature else (B, T, H)
    return dict(
        d=e(B, T, H, K),
        feedback=e(B, T, H),
        rule_feedback=e(B, T, H),
        write_gain=e(B, T, H),
        step=e(*step_shape),
        lam=e(B, T, H),
        triggered=torch.zeros(B, T, H, dtype=torch.bool, device=device),
        floor_active=torch.zeros(B, T, H, dtype=torch.bool, device=device),
        prior=None if apf is None else e(B, T, H, K),
    )


def _record(buf, t, eta, lam, fired, floor_active, prior):
    buf["step"][:, t] = eta
    buf["lam"][:, t] = lam
    buf["triggered"][:, t] = fired
    buf["floor_active"][:, t] = floor_active
    if prior is not None:
        buf["prior"][:, t] = prior


def _first_token(bad: torch.Tensor) -> int:
    """1-based index of the first token flagged in ``bad: bool [B, T, ...]``."""
    return int(bad.reshape(bad.shape[0], bad.shape[1], -1).any(-1).any(0).nonzero()[0, 0]) + 1


def _check_run(buf, d_final, strict: bool) -> None:
    """Divergence (always) and ``d ≤ 0`` (when the memory write needs ``d > 0``), checked once per run."""
    d_all = torch.cat([buf["d"], d_final[:, None]], 1)
    finite = torch.isfinite(d_all)
    if not bool(finite.all()):
        raise ValueError(
            f"step: the d-update diverged (non-finite d from token t = {_first_token(~finite)}); use a smaller "
            "step (the ratio rule is stable iff 0 < 2 η_t β_t² ‖u_t‖² < 2, e.g. NormalizedStep(c), c in (0, 2))"
        )
    if strict and bool((buf["d"] <= 0).any()):
        raise ValueError(
            f"positivity: with 'none' the d-update reached d <= 0 at token t = {_first_token(buf['d'] <= 0)} "
            f"(min {float(buf['d'].min()):.6g}), but the memory write needs d > 0; use positivity='floor' "
            "(d_min > 0) or a smaller step"
        )


def _finish(buf, d_final, rule: FeedbackRule, step_rule, apf) -> DScan:
    affine = (
        rule.state_free
        and rule.affine
        and not step_rule.depends_on_d
        and (apf is None or not apf.depends_on_d)
        and not bool(buf["floor_active"].any())
    )
    return DScan(d_final=d_final, rule=rule.name, affine=affine, **buf)


# ---------------------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------------------


def _feedback_inputs(k, beta, d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate ``k: [B, T, H, K]``, ``beta: [B, T, H]`` in (0, 1] and a finite ``d`` broadcastable to ``k``."""
    k = as_tensor("k", k)
    k, beta = keys_and_beta(k, beta, dtype=k.dtype)
    d = as_tensor("d", d, dtype=k.dtype)
    try:
        d = torch.broadcast_to(d, k.shape)
    except RuntimeError:
        raise ValueError(f"d: expected a shape broadcastable to {list(k.shape)}, got {_desc(d)}") from None
    check_range("d", d)
    return k, beta, d


def _ratio(k: torch.Tensor, beta: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``(1 − β Σ_i d_i k_i²)²`` without validation (shared with :func:`osdn_theory.comparators.feedback_losses`)."""
    return (1.0 - beta * (d * k * k).sum(-1)) ** 2


def ratio_feedback(k, beta, d) -> torch.Tensor:
    """Ratio feedback ``r_t(d) = (1 − β_t Σ_i d_i k_{t,i}²)²`` of shape ``[B, T, H]``.

    Defined for any real ``d`` (the identity ``r⁺ = (1 − s) e`` does not need ``d > 0``).

    Args:
        k: keys of shape ``[B, T, H, K]``.
        beta: write strengths of shape ``[B, T, H]`` in (0, 1].
        d: preconditioner, ``[B, T, H, K]`` or broadcastable to it (e.g. ``[K]``, a fixed d); finite.
    """
    return _ratio(*_feedback_inputs(k, beta, d))


def hyper_feedback(k, beta, d) -> torch.Tensor:
    """OSGM hypergradient feedback ``h_t(d) = ((1 − s_t)² − 1) / (2‖k_t‖²)``, ``[B, T, H]`` (0 for zero keys).

    Equals ``(ℓ_t(S_t(d)) − ℓ_t(S_{t−1})) / ‖∇ℓ_t(S_{t−1})‖²_F``. Shapes as in :func:`ratio_feedback`.
    """
    k, beta, d = _feedback_inputs(k, beta, d)
    r = _ratio(k, beta, d)
    nk2 = (k * k).sum(-1)
    return torch.where(nk2 > 0, (r - 1.0) / (2.0 * torch.where(nk2 > 0, nk2, 1.0)), 0.0)


def d_scan(
    k,
    beta,
    *,
    rule: str | FeedbackRule | Mapping = "ratio",
    step: StepRule | Schedule | float | Mapping = NormalizedStep(0.5),
    d_init: float | torch.Tensor = 1.0,
    d_min: float | None = None,
    positivity: str = "floor",
    apf: APF | Mapping | None = None,
    alpha=None,
    dtype: torch.dtype | None = torch.float64,
) -> DScan:
    """Scan the state-free preconditioner ``d_t`` from the keys (spec §5; O(K) per token, batched over B, H).

    ``d_1 = d_init``; for ``t = 1..T``: ``g_t = ∇f_t(d_t)``, ``d_{t+1} = d_t − η_t g_t``, then the APF gate
    ``d_{t+1} ← (1 − λ_t) d_{t+1} + λ_t d^{prior}_t`` and the floor ``d_{t+1} ← max(d_{t+1}, d_min)``.
    For ``rule="ratio"`` and a step independent of ``d``:
    ``d_{t+1} = (I − 2η_t β_t² u_t u_tᵀ) d_t + 2η_t β_t u_t`` with ``u_t = k_t ⊙ k_t``.

    Args:
        k: keys of shape ``[B, T, H, K]`` (not normalized here).
        beta: write strengths of shape ``[B, T, H]`` in (0, 1].
        rule: ``"ratio"`` (default), ``"hyper"`` or any registered state-free :class:`FeedbackRule` (its name,
            the rule, or its dictionary); the state-dependent ``"raw"``/``"next"`` need :func:`osdn_adaptive`.
        step: a :class:`StepRule` (default ``NormalizedStep(0.5)``), its dictionary, or a schedule / number
            (→ :class:`ScheduledStep`).
        d_init: ``d_1 > 0``: a number (default 1.0, DeltaNet), or a tensor ``[K]``, ``[H, K]`` or ``[B, H, K]``.
        d_min: floor of ``positivity="floor"`` (default :data:`DEFAULT_D_MIN`); must be ``None`` with "none".
        positivity: ``"floor"`` (default) or ``"none"`` (no projection; ``d ≤ 0`` is returned and flagged).
        apf: optional :class:`osdn_theory.apf.APF` gate (or its dictionary).
        alpha: optional decay ``[B, T, H]`` in (0, 1]; validated only — neither state-free feedback depends
            on it (``r⁺_t = (1 − s_t) e_t`` also holds with ``e_t = α_t S_{t−1} k_t − v_t``).
        dtype: computation dtype, default float64; ``None`` keeps the dtype of ``k``.

    Returns:
        :class:`DScan` (``d: [B, T, H, K]``, feedback, steps, APF rates, triggers, labels).
    """
    fb = as_feedback_rule(rule)
    if not fb.state_free:
        raise ValueError(
            f"rule: expected a state-free rule (e.g. {list(STATE_FREE_RULES)}) for d_scan, got {fb.name!r}; "
            "the state-dependent rules run jointly with the memory in osdn_adaptive"
        )
    step_rule = as_step_rule(step)
    apf = as_apf(apf)
    floor = _positivity(positivity, d_min)
    k, beta, alpha = _keys_beta(k, beta, alpha, dtype)
    B, T, H, K = k.shape
    dt, dev = k.dtype, k.device
    d = _d_init(d_init, B, H, K, dt, dev)
    u = k * k
    upd = _Update(step_rule, apf, floor, B, H, K, dt, dev)
    buf = _alloc(B, T, H, K, step_rule, apf, dt, dev)
    builtin = type(fb) in _BUILTIN_STATE_FREE
    fb_state = None if builtin else fb.init(B, H, K, dt, dev)
    restart = apf is not None and apf.restart_clock and not builtin
    for t in range(T):
        u_t, b_t = u[:, t], beta[:, t]
        buf["d"][:, t] = d
        if builtin:  # looked up at call time: the mutation suite patches _state_free_grad
            g, L, s, r, f = _state_free_grad(fb.name, u_t, b_t, d)
        else:
            g, L, s, r, f = _rule_feedback(fb, fb_state, u_t, b_t, d)
        buf["write_gain"][:, t], buf["feedback"][:, t], buf["rule_feedback"][:, t] = s, r, f
        d, *rest = upd(t + 1, d, g, L, u_t, b_t, r)
        _record(buf, t, *rest)
        if restart and bool(rest[2].any()):
            fb.restart(fb_state, rest[2])
    _check_run(buf, d, strict=False)
    return _finish(buf, d, fb, step_rule, apf)


def ratio_scan_as_delta_rule(
    k, beta, c, d_init: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ratio-rule d-scan computed as a DeltaNet (delta rule) on ``d`` by :func:`osdn_recurrent`.

    With ``ū_t = u_t / ‖u_t‖`` and target ``y_t = 1 / (β_t ‖u_t‖)``, the delta rule of strength ``c_t``::

        d_{t+1} = d_t − c_t (ū_tᵀ d_t − y_t) ū_t = d_t + c_t (1 − β_t u_tᵀ d_t) u_t / (β_t ‖u_t‖²)

    is the ratio update with ``η_t = c_t / (2 β_t² ‖u_t‖²)``: ``c_t = c`` constant is ``NormalizedStep(c)``,
    and a scheduled step ``η_t`` corresponds to ``c_t = 2 η_t β_t² ‖u_t‖²``. Each ``(b, h)`` stream runs as K
    heads of a single-value-channel DeltaNet whose memory is ``dᵀ``, read out with the unit queries ``e_j``.
    No positivity floor is applied (none can act in a delta rule).

    Args:
        k: keys of shape ``[B, T, H, K]``; every key must be nonzero.
        beta: write strengths of shape ``[B, T, H]`` in (0, 1].
        c: delta-rule strength in (0, 1]: a number or a tensor of shape ``[B, T, H]``.
        d_init: ``d_1 > 0`` as in :func:`d_scan`.

    Returns:
        ``(d, d_final)`` with ``d: [B, T, H, K]`` (the ``d_t`` writing token ``t``) and ``d_final: [B, H, K]``.
    """
    k, beta, _ = _keys_beta(k, beta, None, torch.float64)
    B, T, H, K = k.shape
    if isinstance(c, int | float | np.integer | np.floating) and not isinstance(c, bool):
        c = check_scalar("c", c, 0.0, 1.0, lo_open=True)
        c = torch.full((B, T, H), c, dtype=k.dtype)
    else:
        c = as_tensor("c", c, dtype=k.dtype)
        check_shape("c", c, [B, T, H], "[B, T, H]")
        check_range("c", c, 0.0, 1.0, lo_open=True)
    d0 = _d_init(d_init, B, H, K, k.dtype, k.device)
    u = k * k
    nu = torch.linalg.vector_norm(u, dim=-1)  # [B, T, H]
    if bool((nu == 0).any()):
        raise ValueError("k: expected every key to be nonzero (the delta-rule form normalizes u = k ⊙ k)")
    ubar = u / nu[..., None]
    y = 1.0 / (beta * nu)
    # K heads per (b, h): head j reads coordinate j of d with query e_j.
    kk = ubar[:, :, :, None, :].expand(B, T, H, K, K).reshape(B, T, H * K, K)
    vv = y[:, :, :, None, None].expand(B, T, H, K, 1).reshape(B, T, H * K, 1)
    bb = c[:, :, :, None].expand(B, T, H, K).reshape(B, T, H * K)
    eye = torch.eye(K, dtype=k.dtype, device=k.device)
    qq = eye.expand(B, T, H, K, K).reshape(B, T, H * K, K)
    s0 = d0[:, :, None, :, None].expand(B, H, K, K, 1).reshape(B, H * K, K, 1)
    o, final = osdn_recurrent(qq, kk, vv, bb, scale=1.0, initial_state=s0, output_final_state=True)
    d_next = o[..., 0].reshape(B, T, H, K)  # d_{t+1}
    d = torch.cat([d0[:, None], d_next[:, :-1]], dim=1)
    return d, d_next[:, -1]


def osdn_adaptive(
    q,
    k,
    v,
    beta,
    *,
    rule: str | FeedbackRule | Mapping = "ratio",
    step: StepRule | Schedule | float | Mapping = NormalizedStep(0.5),
    d_init: float | torch.Tensor = 1.0,
    d_min: float | None = None,
    positivity: str = "floor",
    alpha=None,
    s_max: float | None = None,
    apf: APF | Mapping | None = None,
    scale: float | None = None,
    initial_state=None,
    output_final_state: bool = False,
    dtype: torch.dtype | None = torch.float64,
) -> AdaptiveResult:
    """OSDN with the online preconditioner: write each token with ``d_t``, then update ``d`` (float64 reference).

    State-free rules (``ratio``, ``hyper``): :func:`d_scan` followed by
    :func:`osdn_theory.recurrences.osdn_recurrent` with ``d = scan.d`` (identical results by construction).
    State-dependent rules (``raw``, ``next``, reference only) run jointly with the memory token by token; with
    the clip ``s_max`` their gradient treats the clip factor ``c_t`` as a constant (it gains a factor ``c_t``
    and uses the effective ``s_t``). For ``next`` the feedback of token t is observed when token ``t + 1``
    arrives, so ``d_{t+1}`` is formed just before token ``t + 1`` is written.

    Args:
        q: queries of shape ``[B, T, H, K]``.
        k: read/erase keys of shape ``[B, T, H, K]``.
        v: values of shape ``[B, T, H, V]``.
        beta: write strengths of shape ``[B, T, H]`` in (0, 1].
        rule: ``"ratio"`` (default), ``"hyper"``, ``"raw"`` or ``"next"`` (module docstring), or any registered
            state-free :class:`FeedbackRule` (name, rule or dictionary; it runs through :func:`d_scan`).
        step, d_init, d_min, apf: as in :func:`d_scan`.
        positivity: ``"floor"`` (default) or ``"none"`` (raise ``ValueError`` at the first ``d ≤ 0``).
        alpha: optional decay ``[B, T, H]`` in (0, 1] (gated OSDN).
        s_max: optional write-gain clip in (0, 2) (spec §2), applied to the write key only.
        scale: read-out scale, default ``K ** -0.5``.
        initial_state: optional ``[B, H, K, V]`` state (default zeros).
        output_final_state: return the final state ``[B, H, K, V]``.
        dtype: computation dtype, default float64.

    Returns:
        :class:`AdaptiveResult` with ``o``, ``final_state``, ``d``, ``diagnostics``, ``feedback``, ``scan``.
    """
    fb = as_feedback_rule(rule)
    check_bool("output_final_state", output_final_state)
    x = prepare_inputs(
        q, k, v, beta, None, alpha=alpha, scale=scale, initial_state=initial_state, s_max=s_max, dtype=dtype
    )
    if fb.state_free:
        scan = d_scan(
            x.k,
            x.beta,
            rule=fb,
            step=step,
            d_init=d_init,
            d_min=d_min,
            positivity=positivity,
            apf=apf,
            alpha=x.alpha,
            dtype=None,
        )
        if positivity == "none":
            _check_run({"d": scan.d}, scan.d_final, strict=True)
        o, final, diag = osdn_recurrent(
            x.q,
            x.k,
            x.v,
            x.beta,
            scan.d,
            alpha=x.alpha,
            scale=x.scale,
            initial_state=x.initial_state,
            output_final_state=output_final_state,
            s_max=x.s_max,
            diagnostics=True,
            dtype=None,
        )
        return AdaptiveResult(o, final, diag, scan)
    step_rule = as_step_rule(step)
    apf = as_apf(apf)
    floor = _positivity(positivity, d_min)
    return _joint(x, fb, step_rule, apf, floor, d_init, output_final_state)


def _joint(x, rule, step_rule, apf, floor, d_init, output_final_state) -> AdaptiveResult:
    """Token-by-token OSDN with a state-dependent d-update (``raw`` or ``next``)."""
    fb, rule = rule, rule.name
    B, T, H, K, V = x.shape
    dt, dev = x.k.dtype, x.k.device
    d = _d_init(d_init, B, H, K, dt, dev)
    u = x.k * x.k
    upd = _Update(step_rule, apf, floor, B, H, K, dt, dev)
    buf = _alloc(B, T, H, K, step_rule, apf, dt, dev)
    M = torch.zeros(B, H, K, V, dtype=dt, device=dev) if x.initial_state is None else x.initial_state.clone()
    o = torch.empty(B, T, H, V, dtype=dt, device=dev)
    e_pre, r_post = torch.empty_like(o), torch.empty_like(o)
    s_eff, clip = torch.empty(B, T, H, dtype=dt, device=dev), torch.empty(B, T, H, dtype=dt, device=dev)
    prev = None
    for t in range(T):
        k_t, u_t, b_t = x.k[:, t], u[:, t], x.beta[:, t]
        a_t = None if x.alpha is None else x.alpha[:, t]
        if a_t is not None:
            M = M * a_t[..., None, None]
        e = torch.einsum("bhk,bhkv->bhv", k_t, M) - x.v[:, t]  # e_t = α_t S_{t−1} k_t − v_t
        if rule == "next" and prev is not None:
            # feedback of token t−1: ℓ_t(S_{t−1}(d)) with gradient −α_t β_{t−1} c_{t−1} (e_{t−1}ᵀ e_t) w
            e_p, k_p, u_p, b_p, c_p, r_p = prev
            w = k_p * k_t
            A = b_p * c_p * (1.0 if a_t is None else a_t)
            g = (-A * (e_p * e).sum(-1))[..., None] * w
            L = A**2 * (e_p * e_p).sum(-1) * (w * w).sum(-1)
            buf["rule_feedback"][:, t - 1] = 0.5 * (e * e).sum(-1)
            d, *rest = upd(t, d, g, L, u_p, b_p, r_p)
            _record(buf, t - 1, *rest)
        buf["d"][:, t] = d
        s = b_t * (u_t * d).sum(-1)
        r = (1.0 - s) ** 2
        buf["write_gain"][:, t], buf["feedback"][:, t] = s, r
        kt, s_t, c_t = _write_key(k_t[:, None], b_t[:, None], d[:, None], x.s_max)
        kt, s_t, c_t = kt[:, 0], s_t[:, 0], c_t[:, 0]
        M = M - b_t[..., None, None] * kt[..., :, None] * e[..., None, :]
        o[:, t] = x.scale * torch.einsum("bhk,bhkv->bhv", x.q[:, t], M)
        e_pre[:, t] = e
        r_post[:, t] = torch.einsum("bhk,bhkv->bhv", k_t, M) - x.v[:, t]
        s_eff[:, t], clip[:, t] = s_t, c_t
        ee = (e * e).sum(-1)
        if rule == "raw":
            # ½‖r⁺_t‖² = ½ (1 − s_eff)² ‖e_t‖², gradient −β c ‖e‖² (1 − s_eff) u (clip factor held fixed)
            bc = b_t * c_t
            g = (-bc * ee * (1.0 - s_t))[..., None] * u_t
            L = bc**2 * ee * (u_t * u_t).sum(-1)
            buf["rule_feedback"][:, t] = 0.5 * (1.0 - s_t) ** 2 * ee
            d, *rest = upd(t + 1, d, g, L, u_t, b_t, r)
            _record(buf, t, *rest)
        else:
            prev = (e, k_t, u_t, b_t, c_t, r)
    if rule == "next":  # the feedback of the last token is never observed
        buf["rule_feedback"][:, T - 1] = float("nan")
        buf["step"][:, T - 1] = 0.0
        buf["lam"][:, T - 1] = 0.0
        if buf["prior"] is not None:
            buf["prior"][:, T - 1] = float("nan")
    _check_run(buf, d, strict=floor is None)
    scan = _finish(buf, d, fb, step_rule, apf)
    final = M if output_final_state else None
    return AdaptiveResult(o, final, Diagnostics(e_pre, r_post, s_eff, clip), scan)
