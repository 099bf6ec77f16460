"""Adaptive Preconditioner Forgetting (APF, spec §8): a gate that pulls the preconditioner back to a prior.

After the feedback step of token ``t`` has produced ``d^{upd}_{t+1}``, the gate forms::

    d_{t+1} = (1 − λ_t) d^{upd}_{t+1} + λ_t d^{prior}_t

with a *prior* ``d^{prior}_t`` (computed from tokens ``≤ t``) and a *rate* ``λ_t ∈ [0, 1]``. The map
``d_t ↦ d_{t+1}`` stays affine whenever ``λ_t`` does not depend on ``d`` (every rate here except
:class:`SpikeTrigger`, and :class:`DecayAfterTrigger` driven by it).

Priors (all ``[B, H, K]`` per token, keys only):

* :class:`OnesPrior` — ``d^{prior} = 1`` (DeltaNet).
* :class:`CalibratedScalarPrior` — ``d^{prior}_t = c / (β_t · EMA_t‖k‖²) · 1`` (token-local Newton on average).
* :class:`RunningJacobiPrior` — ``d^{prior}_t = c / EMA_t(u)``, ``u = k ⊙ k`` (diagonal right-Newton).

Rates (each a named, serialisable dataclass; every trigger is evaluated per ``(b, h)``):

* :class:`NoForgetting` — ``λ_t = 0``.
* :class:`ConstantForgetting` — ``λ_t = lam``.
* :class:`SpikeTrigger` — fires when the fast/slow EMA ratio of the calibration loss ``(1 − s_t)²`` crosses
  ``tau`` upward; ``λ_t = lam`` on firing tokens. Depends on ``d`` (sequential d-scan, still O(K) per token).
* :class:`NoveltyTrigger` — fires when the relative shift ``‖EMA^fast(u) − EMA^slow(u)‖₁ / ‖EMA^slow(u)‖₁``
  of the key energy profile crosses ``tau`` upward; keys only.
* :class:`DecayAfterTrigger` — ``λ_t = lam0 · 2^{−(t − t*)/half_life}`` after the last firing ``t*`` of its
  trigger (from ``t* = 1`` when no trigger is given), ``0`` before the first firing.

Every EMA here is bias-corrected: ``m_t = ρ m_{t−1} + (1 − ρ) x_t``, ``w_t = ρ w_{t−1} + (1 − ρ)``, value
``m_t / w_t`` (so the first value is ``x_1``); ``ρ ∈ [0, 1)`` is the decay factor (``fast < slow``).

``APF(prior, rate, restart_clock)`` bundles them; with ``restart_clock=True`` a firing also restarts the
step rule's clock (schedules see step 1 again; AdaGrad forgets its accumulator) for that ``(b, h)``.
Use it as ``d_scan(k, beta, apf=APF(...))`` or ``osdn_adaptive(..., apf=APF(...))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from ._validate import _desc, check_scalar
from .registry import Serializable, build, register

__all__ = [
    "APF",
    "Prior",
    "OnesPrior",
    "CalibratedScalarPrior",
    "RunningJacobiPrior",
    "Rate",
    "Trigger",
    "NoForgetting",
    "ConstantForgetting",
    "DecayAfterTrigger",
    "SpikeTrigger",
    "NoveltyTrigger",
    "as_apf",
    "to_dict",
    "from_dict",
]


class _EMA:
    """Bias-corrected exponential moving average over a batch; ``value`` is NaN-free once updated."""

    def __init__(self, rho: float, shape, dtype, device):
        self.rho = rho
        self.m = torch.zeros(shape, dtype=dtype, device=device)
        self.w = torch.zeros(shape[:2], dtype=dtype, device=device)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        self.m = self.rho * self.m + (1.0 - self.rho) * x
        self.w = self.rho * self.w + (1.0 - self.rho)
        w = self.w if self.m.ndim == self.w.ndim else self.w[..., None]
        return self.m / w


def _check_ema(name: str, x: Any) -> float:
    return check_scalar(name, x, 0.0, 1.0, hi_open=True)


# ---------------------------------------------------------------------------------------------------------
# Priors
# ---------------------------------------------------------------------------------------------------------


class Prior(Serializable):
    """A prior preconditioner ``d^{prior}_t`` built from keys and write strengths of tokens ``≤ t``."""

    kind: ClassVar[str] = "prior"

    def init(self, B: int, H: int, K: int, dtype: torch.dtype, device) -> dict:
        return {}

    def update(self, state: dict, u: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """Observe token ``t`` (``u = k ⊙ k: [B, H, K]``, ``beta: [B, H]``); return ``d^{prior}_t: [B, H, K]``."""
        raise NotImplementedError


@register
@dataclasses.dataclass(frozen=True)
class OnesPrior(Prior):
    """``d^{prior} = 1``: forgetting pulls back to DeltaNet."""

    name: ClassVar[str] = "ones"

    def update(self, state, u, beta):
        return torch.ones_like(u)


@register
@dataclasses.dataclass(frozen=True)
class CalibratedScalarPrior(Prior):
    """``d^{prior}_t = c / (β_t · max(EMA_t‖k‖², eps)) · 1``: a scalar that makes ``s ≈ c`` on average.

    ``ema ∈ [0, 1)`` is the EMA decay factor; ``c > 0`` (default 1, the token-local Newton value).
    """

    name: ClassVar[str] = "calibrated_scalar"
    ema: float
    c: float = 1.0
    eps: float = 1e-12

    def __post_init__(self):
        object.__setattr__(self, "ema", _check_ema("ema", self.ema))
        object.__setattr__(self, "c", check_scalar("c", self.c, 0.0, None, lo_open=True))
        object.__setattr__(self, "eps", check_scalar("eps", self.eps, 0.0, None, lo_open=True))

    def init(self, B, H, K, dtype, device):
        return {"ema": _EMA(self.ema, (B, H), dtype, device)}

    def update(self, state, u, beta):
        m = state["ema"].update(u.sum(-1)).clamp_min(self.eps)
        return (self.c / (beta * m))[..., None].expand_as(u).clone()


@register
@dataclasses.dataclass(frozen=True)
class RunningJacobiPrior(Prior):
    """``d^{prior}_t = c / max(EMA_t(u), eps)`` per feature, ``u = k ⊙ k`` (running diagonal right-Newton).

    For stationary keys of variances ``a``, ``c = 1 / (β (K + 2))`` makes this the fixed point ``d*`` of C6.
    """

    name: ClassVar[str] = "running_jacobi"
    c: float
    ema: float
    eps: float = 1e-12

    def __post_init__(self):
        object.__setattr__(self, "c", check_scalar("c", self.c, 0.0, None, lo_open=True))
        object.__setattr__(self, "ema", _check_ema("ema", self.ema))
        object.__setattr__(self, "eps", check_scalar("eps", self.eps, 0.0, None, lo_open=True))

    def init(self, B, H, K, dtype, device):
        return {"ema": _EMA(self.ema, (B, H, K), dtype, device)}

    def update(self, state, u, beta):
        return self.c / state["ema"].update(u).clamp_min(self.eps)


# ---------------------------------------------------------------------------------------------------------
# Rates
# ---------------------------------------------------------------------------------------------------------


class Rate(Serializable):
    """A forgetting rate ``λ_t ∈ [0, 1]`` and trigger flags, per ``(b, h)``."""

    kind: ClassVar[str] = "rate"

    #: whether λ_t depends on d (then the gate is not affine in d and the d-scan is sequential in d)
    depends_on_d: ClassVar[bool] = False

    def init(self, B: int, H: int, K: int, dtype: torch.dtype, device) -> dict:
        return {}

    def step(
        self, state: dict, t: int, u: torch.Tensor, r: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Observe token ``t`` (``u: [B, H, K]``, calibration loss ``r = (1 − s_t)²: [B, H]``).

        Returns ``(λ_t: [B, H], fired_t: bool [B, H])``.
        """
        raise NotImplementedError


def _no_fire(r: torch.Tensor) -> torch.Tensor:
    return torch.zeros(r.shape, dtype=torch.bool, device=r.device)


@register
@dataclasses.dataclass(frozen=True)
class NoForgetting(Rate):
    """``λ_t = 0`` (no forgetting)."""

    name: ClassVar[str] = "no_forgetting"

    def step(self, state, t, u, r):
        return torch.zeros_like(r), _no_fire(r)


@register
@dataclasses.dataclass(frozen=True)
class ConstantForgetting(Rate):
    """``λ_t = lam`` for every token, ``lam ∈ [0, 1]`` (``lam = 1`` resets to the prior every token)."""

    name: ClassVar[str] = "constant_forgetting"
    lam: float

    def __post_init__(self):
        object.__setattr__(self, "lam", check_scalar("lam", self.lam, 0.0, 1.0))

    def step(self, state, t, u, r):
        return torch.full_like(r, self.lam), _no_fire(r)


class Trigger(Rate):
    """A rate that fires on a rising edge of a statistic above ``tau``; ``λ_t = lam`` on firing tokens.

    Subclasses declare the fields ``fast, slow, tau, lam, warmup, eps`` and compute their statistic from two
    EMAs (``state["f"]``, ``state["s"]``), kept per ``(b, h)``, or per feature when ``per_feature``."""

    per_feature: ClassVar[bool] = False

    def __post_init__(self):
        self._check()

    def _check(self):
        object.__setattr__(self, "fast", _check_ema("fast", self.fast))
        object.__setattr__(self, "slow", _check_ema("slow", self.slow))
        if not self.fast < self.slow:
            raise ValueError(
                f"fast: expected an EMA decay factor smaller than slow = {self.slow} (a faster average), "
                f"got {self.fast}"
            )
        object.__setattr__(self, "tau", check_scalar("tau", self.tau, 0.0, None, lo_open=True))
        object.__setattr__(self, "lam", check_scalar("lam", self.lam, 0.0, 1.0))
        object.__setattr__(self, "warmup", check_scalar("warmup", self.warmup, 0, None, integer=True))
        object.__setattr__(self, "eps", check_scalar("eps", self.eps, 0.0, None, lo_open=True))

    def statistic(self, state: dict, u: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def init(self, B, H, K, dtype, device):
        shape = (B, H, K) if self.per_feature else (B, H)
        return {
            "above": torch.zeros(B, H, dtype=torch.bool, device=device),
            "f": _EMA(self.fast, shape, dtype, device),
            "s": _EMA(self.slow, shape, dtype, device),
        }

    def step(self, state, t, u, r):
        stat = self.statistic(state, u, r)
        above = stat > self.tau
        fired = above & ~state["above"] if t > self.warmup else _no_fire(r)
        state["above"] = above
        state["last_statistic"] = stat
        return torch.where(fired, self.lam, 0.0).to(r.dtype), fired


@register
@dataclasses.dataclass(frozen=True)
class SpikeTrigger(Trigger):
    """Calibration-spike trigger: fires when ``(EMA^fast + eps) / (EMA^slow + eps)`` of ``(1 − s_t)²`` crosses ``tau``.

    ``fast < slow`` are EMA decay factors in [0, 1); firing only on a rising edge (the ratio was ``≤ tau`` at
    the previous token) and not during the first ``warmup`` tokens. ``λ_t = lam`` on firing tokens.
    It reads ``s_t = β_t u_tᵀ d_t``, so it depends on ``d``.
    """

    name: ClassVar[str] = "spike_trigger"
    depends_on_d: ClassVar[bool] = True
    fast: float
    slow: float
    tau: float
    lam: float = 1.0
    warmup: int = 0
    eps: float = 1e-6

    def statistic(self, state, u, r):
        return (state["f"].update(r) + self.eps) / (state["s"].update(r) + self.eps)


@register
@dataclasses.dataclass(frozen=True)
class NoveltyTrigger(Trigger):
    """Key-novelty trigger: fires when ``‖EMA^fast(u) − EMA^slow(u)‖₁ / (‖EMA^slow(u)‖₁ + eps)`` crosses ``tau``.

    ``u_t = k_t ⊙ k_t``; keys only (independent of ``d``). Rising edge and ``warmup`` as in
    :class:`SpikeTrigger`; ``λ_t = lam`` on firing tokens.
    """

    name: ClassVar[str] = "novelty_trigger"
    per_feature: ClassVar[bool] = True
    fast: float
    slow: float
    tau: float
    lam: float = 1.0
    warmup: int = 0
    eps: float = 1e-12

    def statistic(self, state, u, r):
        f, s = state["f"].update(u), state["s"].update(u)
        return (f - s).abs().sum(-1) / (s.abs().sum(-1) + self.eps)


@register
@dataclasses.dataclass(frozen=True)
class DecayAfterTrigger(Rate):
    """``λ_t = lam0 · 2^{−(t − t*)/half_life}`` where ``t*`` is the last firing of ``trigger`` (per ``(b, h)``).

    ``λ_t = 0`` before the first firing; with ``trigger=None`` the decay starts at ``t* = 1``.
    ``half_life > 0`` is in tokens. The firing flags are those of the trigger.
    """

    name: ClassVar[str] = "decay_after_trigger"
    lam0: float
    half_life: float
    trigger: Trigger | None = None

    @property
    def depends_on_d(self) -> bool:  # type: ignore[override]
        return self.trigger is not None and self.trigger.depends_on_d

    def __post_init__(self):
        object.__setattr__(self, "lam0", check_scalar("lam0", self.lam0, 0.0, 1.0))
        object.__setattr__(
            self, "half_life", check_scalar("half_life", self.half_life, 0.0, None, lo_open=True)
        )
        trig = self.trigger
        if isinstance(trig, Mapping):
            trig = build(trig, "trigger", Trigger)
        if trig is not None and not isinstance(trig, Trigger):
            raise ValueError(
                f"trigger: expected a SpikeTrigger, a NoveltyTrigger or None, got {_desc(self.trigger)}"
            )
        object.__setattr__(self, "trigger", trig)

    def init(self, B, H, K, dtype, device):
        start = 1.0 if self.trigger is None else float("inf")
        st = {"t_star": torch.full((B, H), start, dtype=dtype, device=device)}
        if self.trigger is not None:
            st["trigger"] = self.trigger.init(B, H, K, dtype, device)
        return st

    def step(self, state, t, u, r):
        if self.trigger is None:
            fired = _no_fire(r)
        else:
            _, fired = self.trigger.step(state["trigger"], t, u, r)
            state["t_star"] = torch.where(fired, float(t), state["t_star"])
        age = t - state["t_star"]  # +inf before any firing → λ = 0
        lam = self.lam0 * torch.exp2(-age.clamp_min(0.0) / self.half_life)
        return torch.where(torch.isfinite(age), lam, 0.0), fired


# ---------------------------------------------------------------------------------------------------------
# The gate
# ---------------------------------------------------------------------------------------------------------


@register
@dataclasses.dataclass(frozen=True)
class APF(Serializable):
    """Adaptive Preconditioner Forgetting: ``d_{t+1} = (1 − λ_t) d^{upd}_{t+1} + λ_t d^{prior}_t``.

    Args:
        prior: a :class:`Prior` (default :class:`OnesPrior`) or its dictionary.
        rate: a :class:`Rate` (default :class:`NoForgetting`) or its dictionary.
        restart_clock: when the rate fires at token ``t`` for some ``(b, h)``, the step rule's clock restarts
            there (the update of token ``t`` uses step 1; AdaGrad's accumulator is cleared first).
    """

    kind: ClassVar[str] = "apf"

    name: ClassVar[str] = "apf"
    prior: Prior = dataclasses.field(default_factory=OnesPrior)
    rate: Rate = dataclasses.field(default_factory=NoForgetting)
    restart_clock: bool = False

    def __post_init__(self):
        prior, rate = self.prior, self.rate
        if isinstance(prior, Mapping):
            prior = build(prior, "prior", Prior)
        if not isinstance(prior, Prior):
            raise ValueError(f"prior: expected an APF prior (e.g. OnesPrior()), got {_desc(self.prior)}")
        if isinstance(rate, Mapping):
            rate = build(rate, "rate", Rate)
        if not isinstance(rate, Rate):
            raise ValueError(f"rate: expected an APF rate rule (e.g. NoForgetting()), got {_desc(self.rate)}")
        if not isinstance(self.restart_clock, bool):
            raise ValueError(f"restart_clock: expected a bool, got {_desc(self.restart_clock)}")
        object.__setattr__(self, "prior", prior)
        object.__setattr__(self, "rate", rate)

    @property
    def depends_on_d(self) -> bool:
        """Whether ``λ_t`` depends on ``d`` (then the gated update is no longer affine in ``d``)."""
        return bool(self.rate.depends_on_d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> APF:
        """Inverse of :meth:`to_dict` (the ``name`` key may be omitted)."""
        if isinstance(d, Mapping) and "name" not in d:
            d = {"name": cls.name, **d}
        return build(d, "d", APF)


def as_apf(x: Any, argname: str = "apf") -> APF | None:
    """``None``, an :class:`APF` or its dictionary → ``APF | None``."""
    if x is None or isinstance(x, APF):
        return x
    if isinstance(x, Mapping):  # errors name ``argname`` (not the generic ``d`` of APF.from_dict)
        return build(x if "name" in x else {"name": APF.name, **x}, argname, APF)
    raise ValueError(f"{argname}: expected None, an APF or its dictionary, got {_desc(x)}")


def to_dict(obj: APF | Prior | Rate) -> dict[str, Any]:
    """Plain-dictionary form of an APF gate, prior or rate rule (``{"name": ..., **fields}``)."""
    if not isinstance(obj, APF | Prior | Rate):
        raise ValueError(f"obj: expected an APF, a Prior or a Rate, got {_desc(obj)}")
    return obj.to_dict()


def from_dict(d: Mapping[str, Any]) -> APF | Prior | Rate:
    """Inverse of :func:`to_dict` for APF gates, priors and rate rules (dispatch on ``d["name"]``)."""
    out = build(d, "d")
    if not isinstance(out, APF | Prior | Rate):
        raise ValueError(f"d: expected the name of an APF gate, prior or rate rule, got {d['name']!r}")
    return out
