"""Step-size and forgetting schedules: pure functions of the 1-based token index (spec §5, §8).

A schedule is a small frozen object, built by a factory (``constant``, ``inverse_sqrt``, ...), that maps a
step ``t`` to a value::

    sched = inverse_sqrt(0.5)          # η_t = 0.5 / √t
    sched(1), sched(4)                 # 0.5, 0.25
    sched(torch.tensor([1, 4, 9]))     # tensor([0.5, 0.25, 0.1667], dtype=float64)

``t`` is the 1-based token index (``t ≥ 1``), a Python ``int`` (the result is a ``float``) or an integer
tensor of any shape (the result is a float64 tensor of the same shape). Schedules compose with
:func:`join_schedules`, and every schedule round-trips through a plain dictionary, so that a sweep file can
write ``{name = "inverse_sqrt", value = 0.5}``::

    to_dict(inverse_sqrt(0.5))          # {"name": "inverse_sqrt", "value": 0.5, "offset": 0.0}
    from_dict({"name": "inverse_sqrt", "value": 0.5}) == inverse_sqrt(0.5)

The same dictionary machinery (the package registry, :mod:`osdn_theory.registry`, keyed by ``name``)
serialises the step and feedback rules of :mod:`osdn_theory.preconditioners` and the forgetting gates of
:mod:`osdn_theory.apf`; names are unique across them. Dictionaries contain only numbers, booleans, strings, lists and nested
dictionaries (``None`` fields are omitted), so they can be written to TOML or JSON as they are;
:func:`config_to_dict` / :func:`config_from_dict` handle any of these objects (a sweep runner needs only them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ._validate import _desc, check_scalar
from .registry import Serializable, build, is_registered, names, register

__all__ = [
    "Schedule",
    "Constant",
    "InverseSqrt",
    "ExponentialDecay",
    "PiecewiseConstant",
    "JoinSchedules",
    "constant",
    "inverse_sqrt",
    "exponential_decay",
    "piecewise_constant",
    "join_schedules",
    "as_schedule",
    "to_dict",
    "from_dict",
    "registered_names",
    "config_to_dict",
    "config_from_dict",
]

# ---------------------------------------------------------------------------------------------------------
# Serialisation: the package registry (osdn_theory.registry) holds every named configuration class.
# ---------------------------------------------------------------------------------------------------------


def _register(cls: type) -> type:
    """Class decorator kept for existing code: :func:`osdn_theory.registry.register`."""
    return register(cls)


def _from_dict_any(d: Any, argname: str, kind: type | None = None) -> Any:
    """Kept for existing code: :func:`osdn_theory.registry.build`."""
    return build(d, argname, kind)


def config_to_dict(obj: Serializable) -> dict[str, Any]:
    """Dictionary form of any registered configuration object: schedule, step rule, feedback rule, APF gate,
    prior or rate."""
    if not isinstance(obj, Serializable) or not is_registered(obj):
        raise ValueError(f"obj: expected a registered configuration object, got {_desc(obj)}")
    return obj.to_dict()


def config_from_dict(d: Mapping[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict`: build whatever registered object ``d["name"]`` names."""
    return build(d, "d")


def registered_names() -> list[str]:
    """Every name that :func:`config_from_dict` understands (schedules, step and feedback rules, APF objects)."""
    return names()


# ---------------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------------


def _steps(step: Any) -> tuple[torch.Tensor, bool]:
    """Validate ``step`` (int ≥ 1 or integer tensor with all entries ≥ 1); return (float64 tensor, is_scalar)."""
    if isinstance(step, bool):
        raise ValueError(f"step: expected an integer >= 1 or an integer tensor, got {_desc(step)}")
    if isinstance(step, int | np.integer):
        if step < 1:
            raise ValueError(f"step: expected the 1-based token index (>= 1), got {step!r}")
        return torch.tensor(float(step), dtype=torch.float64), True
    if isinstance(step, torch.Tensor):
        if step.dtype.is_floating_point or step.dtype.is_complex or step.dtype == torch.bool:
            raise ValueError(f"step: expected an integer tensor, got {_desc(step)}")
        if step.numel() and int(step.min()) < 1:
            raise ValueError(f"step: expected 1-based token indices (>= 1), got min {int(step.min())}")
        return step.to(torch.float64), False
    raise ValueError(f"step: expected an integer >= 1 or an integer tensor, got {_desc(step)}")


def _out(x: torch.Tensor, scalar: bool) -> float | torch.Tensor:
    return float(x) if scalar else x


class Schedule(Serializable):
    """A pure function ``t ↦ value`` of the 1-based token index ``t`` (int, or integer tensor of any shape)."""

    kind: ClassVar[str] = "schedule"

    def __call__(self, step: int | torch.Tensor) -> float | torch.Tensor:
        t, scalar = _steps(step)
        return _out(self._value(t), scalar)

    def _value(self, t: torch.Tensor) -> torch.Tensor:  # t: float64 tensor, entries >= 1
        raise NotImplementedError


@register
@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    """``value_t = value``."""

    name: ClassVar[str] = "constant"
    value: float

    def __post_init__(self):
        object.__setattr__(self, "value", check_scalar("value", self.value))

    def _value(self, t):
        return torch.full_like(t, self.value)


@register
@dataclasses.dataclass(frozen=True)
class InverseSqrt(Schedule):
    """``value_t = value / √(t + offset)``."""

    name: ClassVar[str] = "inverse_sqrt"
    value: float
    offset: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "value", check_scalar("value", self.value))
        object.__setattr__(self, "offset", check_scalar("offset", self.offset, 0.0, None))

    def _value(self, t):
        return self.value / torch.sqrt(t + self.offset)


@register
@dataclasses.dataclass(frozen=True)
class ExponentialDecay(Schedule):
    """``value_t = value · rate^p`` with ``p = (t − 1) / transition_steps`` (``⌊p⌋`` if ``staircase``).

    With ``end_value`` the result is bounded by it: ``max(value_t, end_value)`` when ``rate < 1``,
    ``min(value_t, end_value)`` when ``rate > 1``. At ``t = 1`` the value is ``value``.
    """

    name: ClassVar[str] = "exponential_decay"
    value: float
    rate: float
    transition_steps: int = 1
    staircase: bool = False
    end_value: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "value", check_scalar("value", self.value))
        object.__setattr__(self, "rate", check_scalar("rate", self.rate, 0.0, None, lo_open=True))
        object.__setattr__(
            self,
            "transition_steps",
            check_scalar("transition_steps", self.transition_steps, 1, None, integer=True),
        )
        if not isinstance(self.staircase, bool):
            raise ValueError(f"staircase: expected a bool, got {_desc(self.staircase)}")
        if self.end_value is not None:
            object.__setattr__(self, "end_value", check_scalar("end_value", self.end_value))

    def _value(self, t):
        p = (t - 1.0) / self.transition_steps
        if self.staircase:
            p = torch.floor(p)
        out = self.value * torch.pow(torch.tensor(self.rate, dtype=torch.float64), p)
        if self.end_value is not None:
            out = out.clamp_min(self.end_value) if self.rate < 1 else out.clamp_max(self.end_value)
        return out


def _check_boundaries(boundaries: Any, n: int | None = None) -> tuple[int, ...]:
    if isinstance(boundaries, torch.Tensor | np.ndarray):
        boundaries = boundaries.tolist()
    if not isinstance(boundaries, Sequence) or isinstance(boundaries, str):
        raise ValueError(
            f"boundaries: expected a sequence of increasing integers >= 1, got {_desc(boundaries)}"
        )
    out = tuple(check_scalar("boundaries", b, 1, None, integer=True) for b in boundaries)
    if any(b1 >= b2 for b1, b2 in zip(out[:-1], out[1:], strict=True)):
        raise ValueError(f"boundaries: expected strictly increasing integers, got {list(out)}")
    if n is not None and len(out) != n:
        raise ValueError(f"boundaries: expected {n} entries (one fewer than the pieces), got {len(out)}")
    return out


@register
@dataclasses.dataclass(frozen=True)
class PiecewiseConstant(Schedule):
    """``value_t = values[j]`` with ``j = #{i : boundaries[i] < t}``.

    So ``values[0]`` for ``t ≤ boundaries[0]``, ``values[i]`` for ``boundaries[i−1] < t ≤ boundaries[i]``,
    and ``values[-1]`` after the last boundary; ``len(values) = len(boundaries) + 1``.
    """

    name: ClassVar[str] = "piecewise_constant"
    values: tuple[float, ...]
    boundaries: tuple[int, ...] = ()

    def __post_init__(self):
        vals = self.values
        if isinstance(vals, torch.Tensor | np.ndarray):
            vals = vals.tolist()
        if not isinstance(vals, Sequence) or isinstance(vals, str) or len(vals) == 0:
            raise ValueError(f"values: expected a non-empty sequence of numbers, got {_desc(self.values)}")
        object.__setattr__(self, "values", tuple(check_scalar("values", v) for v in vals))
        object.__setattr__(self, "boundaries", _check_boundaries(self.boundaries, len(self.values) - 1))

    def _value(self, t):
        b = torch.tensor(self.boundaries, dtype=torch.float64)
        idx = (t[..., None] > b).sum(-1) if len(self.boundaries) else torch.zeros_like(t, dtype=torch.long)
        return torch.tensor(self.values, dtype=torch.float64)[idx]


@register
@dataclasses.dataclass(frozen=True)
class JoinSchedules(Schedule):
    """Sequence schedules, each restarting its own clock at 1 (formula in :func:`join_schedules`)."""

    name: ClassVar[str] = "join_schedules"
    schedules: tuple[Schedule, ...]
    boundaries: tuple[int, ...]

    def __post_init__(self):
        scheds = self.schedules
        if not isinstance(scheds, Sequence) or isinstance(scheds, str) or len(scheds) == 0:
            raise ValueError(f"schedules: expected a non-empty sequence of schedules, got {_desc(scheds)}")
        scheds = tuple(as_schedule(s, "schedules") for s in scheds)
        object.__setattr__(self, "schedules", scheds)
        object.__setattr__(self, "boundaries", _check_boundaries(self.boundaries, len(scheds) - 1))

    def _value(self, t):
        out = self.schedules[0]._value(t)
        for b, s in zip(self.boundaries, self.schedules[1:], strict=True):
            later = t > b
            # evaluate the later piece on its own 1-based clock t − b (clamped where it is not used)
            out = torch.where(later, s._value(torch.clamp(t - b, min=1.0)), out)
        return out


# ---------------------------------------------------------------------------------------------------------
# Factories (optax style)
# ---------------------------------------------------------------------------------------------------------


def constant(value: float) -> Constant:
    """Constant schedule ``value_t = value``."""
    return Constant(value)


def inverse_sqrt(value: float, offset: float = 0.0) -> InverseSqrt:
    """Inverse square-root schedule ``value_t = value / √(t + offset)`` (``offset ≥ 0``; ``η_0/√t`` of spec §5)."""
    return InverseSqrt(value, offset)


def exponential_decay(
    value: float,
    rate: float,
    *,
    transition_steps: int = 1,
    staircase: bool = False,
    end_value: float | None = None,
) -> ExponentialDecay:
    """Exponential decay ``value_t = value · rate^((t−1)/transition_steps)`` (exponent floored if ``staircase``).

    ``rate > 0``; ``end_value`` bounds the result (a floor when ``rate < 1``, a ceiling when ``rate > 1``).
    """
    return ExponentialDecay(value, rate, transition_steps, staircase, end_value)


def piecewise_constant(values: Sequence[float], boundaries: Sequence[int] = ()) -> PiecewiseConstant:
    """Piecewise-constant schedule: ``value_t = values[j]``, ``j = #{i : boundaries[i] < t}``.

    ``boundaries`` are strictly increasing integers ``≥ 1`` and ``len(values) == len(boundaries) + 1``;
    e.g. ``piecewise_constant([1.0, 0.1], [100])`` is 1 for ``t ≤ 100`` and 0.1 afterwards.
    """
    return PiecewiseConstant(tuple(values) if isinstance(values, list) else values, tuple(boundaries))


def join_schedules(schedules: Sequence[Schedule | Mapping], boundaries: Sequence[int]) -> JoinSchedules:
    """Join schedules at the given boundaries, each piece running on its own 1-based clock.

    With boundaries ``b_1 < … < b_{n−1}`` (integers ``≥ 1``, ``b_0 = 0``) and schedules ``s_0 … s_{n−1}``::

        value_t = s_i(t − b_i)    for  b_i < t ≤ b_{i+1}   (b_n = ∞)

    so the first token after boundary ``b_i`` sees step 1 of ``s_i``. Dictionaries are accepted for the
    pieces (they go through :func:`from_dict`).
    """
    return JoinSchedules(tuple(schedules), tuple(boundaries))


def as_schedule(x: Any, argname: str = "schedule") -> Schedule:
    """A :class:`Schedule` from a schedule, a dictionary (:func:`from_dict`) or a number (:func:`constant`)."""
    if isinstance(x, Schedule):
        return x
    if isinstance(x, Mapping):
        return build(x, argname, Schedule)
    if isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool):
        return Constant(x)
    if isinstance(x, Callable):
        raise ValueError(
            f"{argname}: expected a serialisable Schedule (built by this module), a dictionary or a number; "
            f"got the plain callable {_desc(x)}"
        )
    raise ValueError(f"{argname}: expected a Schedule, a dictionary or a number, got {_desc(x)}")


def to_dict(schedule: Schedule) -> dict[str, Any]:
    """Plain-dictionary form of a schedule, ``{"name": ..., **fields}`` (nested for :func:`join_schedules`)."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule: expected a Schedule, got {_desc(schedule)}")
    return schedule.to_dict()


def from_dict(d: Mapping[str, Any]) -> Schedule:
    """Inverse of :func:`to_dict`: build the schedule named by ``d["name"]`` from the other keys."""
    return build(d, "d", Schedule)
