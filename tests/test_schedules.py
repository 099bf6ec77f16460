"""Schedules: formulas, composition, vectorisation, dictionary/TOML round trips and argument errors."""

from __future__ import annotations

import math

import pytest
import tomli_w
import tomllib
import torch

from osdn_theory.apf import APF, DecayAfterTrigger, RunningJacobiPrior, SpikeTrigger
from osdn_theory.preconditioners import AdaGradStep, ScheduledStep
from osdn_theory.schedules import (
    Constant,
    config_from_dict,
    config_to_dict,
    from_dict,
    inverse_sqrt,
    join_schedules,
    piecewise_constant,
    registered_names,
    to_dict,
)
from osdn_theory.schedules import constant as constant_schedule
from osdn_theory.schedules import exponential_decay as exp_decay
from osdn_theory.tolerances import EXACT_FLOAT64

STEPS = list(range(1, 13))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= EXACT_FLOAT64 * max(1.0, abs(b))


def _check_formula(sched, formula):
    for t in STEPS:
        assert _close(sched(t), formula(t)), (t, sched(t), formula(t))
    vec = sched(torch.tensor(STEPS).reshape(3, 4))
    assert vec.dtype == torch.float64 and vec.shape == (3, 4)
    ref = torch.tensor([formula(t) for t in STEPS], dtype=torch.float64).reshape(3, 4)
    assert torch.allclose(vec, ref, rtol=EXACT_FLOAT64, atol=0.0)


def test_constant():
    _check_formula(constant_schedule(0.3), lambda t: 0.3)
    assert isinstance(constant_schedule(0.3)(5), float)


@pytest.mark.parametrize("offset", [0.0, 2.5])
def test_inverse_sqrt(offset):
    _check_formula(inverse_sqrt(0.7, offset=offset), lambda t: 0.7 / math.sqrt(t + offset))


def test_exponential_decay():
    _check_formula(exp_decay(2.0, 0.8), lambda t: 2.0 * 0.8 ** (t - 1))
    _check_formula(exp_decay(2.0, 0.8, transition_steps=3), lambda t: 2.0 * 0.8 ** ((t - 1) / 3))
    _check_formula(
        exp_decay(2.0, 0.8, transition_steps=3, staircase=True), lambda t: 2.0 * 0.8 ** ((t - 1) // 3)
    )
    _check_formula(exp_decay(2.0, 0.5, end_value=0.3), lambda t: max(2.0 * 0.5 ** (t - 1), 0.3))
    _check_formula(exp_decay(1.0, 1.5, end_value=4.0), lambda t: min(1.5 ** (t - 1), 4.0))


def test_piecewise_constant():
    s = piecewise_constant([1.0, 0.5, 0.1], [3, 7])
    _check_formula(s, lambda t: 1.0 if t <= 3 else (0.5 if t <= 7 else 0.1))
    _check_formula(piecewise_constant([0.4]), lambda t: 0.4)


def test_join_schedules_formula():
    # value_t = s_i(t − b_i) for b_i < t ≤ b_{i+1}: each piece restarts at its own step 1
    s = join_schedules([constant_schedule(1.0), inverse_sqrt(1.0), exp_decay(3.0, 0.5)], [3, 7])

    def ref(t):
        if t <= 3:
            return 1.0
        if t <= 7:
            return 1.0 / math.sqrt(t - 3)
        return 3.0 * 0.5 ** (t - 7 - 1)

    _check_formula(s, ref)
    assert s(4) == 1.0 and s(8) == 3.0  # first token after each boundary sees step 1


def test_join_accepts_dicts_and_nests():
    inner = join_schedules([{"name": "constant", "value": 2.0}, inverse_sqrt(2.0)], [2])
    outer = join_schedules([inner, constant_schedule(0.0)], [5])
    _check_formula(outer, lambda t: 2.0 if t <= 2 else (2.0 / math.sqrt(t - 2) if t <= 5 else 0.0))


ALL = [
    constant_schedule(0.25),
    inverse_sqrt(0.5),
    inverse_sqrt(0.5, offset=10),
    exp_decay(1.0, 0.9, transition_steps=4, staircase=True, end_value=0.1),
    exp_decay(1.0, 0.9),
    piecewise_constant([1.0, 0.1], [100]),
    join_schedules([inverse_sqrt(1.0), piecewise_constant([0.5, 0.2], [4])], [10]),
]


@pytest.mark.parametrize("sched", ALL, ids=lambda s: s.name)
def test_round_trip_dict_and_toml(sched):
    d = to_dict(sched)
    assert d["name"] == sched.name
    back = from_dict(d)
    assert back == sched
    # a sweep file stores the dictionary as TOML
    text = tomli_w.dumps({"step": d})
    back_toml = from_dict(tomllib.loads(text)["step"])
    assert back_toml == sched
    ts = torch.arange(1, 30)
    assert torch.equal(back_toml(ts), sched(ts))


def test_sweep_file_short_form():
    assert from_dict({"name": "inverse_sqrt", "value": 0.5}) == inverse_sqrt(0.5)
    assert from_dict(tomllib.loads('s = {name = "inverse_sqrt", value = 0.5}')["s"])(4) == 0.25
    for n in ("constant", "inverse_sqrt", "exponential_decay", "piecewise_constant", "join_schedules"):
        assert n in registered_names()


@pytest.mark.parametrize(
    "bad",
    [0, -3, 1.0, True, "3", torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), torch.tensor([True])],
    ids=["zero", "negative", "float", "bool", "str", "float-tensor", "zero-in-tensor", "bool-tensor"],
)
def test_bad_step(bad):
    with pytest.raises(ValueError, match="^step:"):
        inverse_sqrt(1.0)(bad)


@pytest.mark.parametrize(
    "make, arg",
    [
        (lambda: constant_schedule(float("nan")), "value"),
        (lambda: constant_schedule("a"), "value"),
        (lambda: inverse_sqrt(1.0, offset=-1.0), "offset"),
        (lambda: exp_decay(1.0, 0.0), "rate"),
        (lambda: exp_decay(1.0, 0.5, transition_steps=0), "transition_steps"),
        (lambda: exp_decay(1.0, 0.5, transition_steps=1.5), "transition_steps"),
        (lambda: exp_decay(1.0, 0.5, staircase=1), "staircase"),
        (lambda: exp_decay(1.0, 0.5, end_value=float("inf")), "end_value"),
        (lambda: piecewise_constant([], []), "values"),
        (lambda: piecewise_constant([1.0, 2.0], [3, 4]), "boundaries"),
        (lambda: piecewise_constant([1.0, 2.0, 3.0], [4, 4]), "boundaries"),
        (lambda: piecewise_constant([1.0, 2.0], [0]), "boundaries"),
        (lambda: join_schedules([], []), "schedules"),
        (lambda: join_schedules([constant_schedule(1.0), lambda t: 1.0], [3]), "schedules"),
        (lambda: join_schedules([constant_schedule(1.0)] * 2, [3, 4]), "boundaries"),
        (lambda: join_schedules([constant_schedule(1.0)] * 2, "3"), "boundaries"),
    ],
)
def test_bad_arguments(make, arg):
    with pytest.raises(ValueError, match=arg if arg.startswith("^") else rf"^{arg}:"):
        make()


@pytest.mark.parametrize(
    "d, match",
    [
        ({"value": 1.0}, "^d: expected a dictionary with a 'name' key"),
        ({"name": "cosine", "value": 1.0}, "^d: expected 'name'"),
        ({"name": "normalized", "c": 0.5}, "^d: expected 'name'"),  # a step rule is not a schedule
        ({"name": "constant", "value": 1.0, "rate": 2.0}, "^d: unknown keys"),
        ([1, 2], "^d:"),
        # a bad nested piece is reported under the field it sits in
        ({"name": "join_schedules", "schedules": [{"name": "cosine"}], "boundaries": []}, "^schedules:"),
    ],
)
def test_bad_dicts(d, match):
    with pytest.raises(ValueError, match=match):
        from_dict(d)


def test_to_dict_rejects_non_schedule():
    with pytest.raises(ValueError, match="^schedule:"):
        to_dict(lambda t: 1.0)


def test_schedules_are_immutable_values():
    a, b = inverse_sqrt(0.5), inverse_sqrt(0.5)
    assert a == b and hash(a) == hash(b) and a != Constant(0.5)
    with pytest.raises(AttributeError):
        a.value = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "obj",
    [
        inverse_sqrt(0.5),
        ScheduledStep(join_schedules([constant_schedule(0.1), inverse_sqrt(0.3)], [50])),
        AdaGradStep(0.2, diagonal=False),
        APF(RunningJacobiPrior(0.1, 0.9), DecayAfterTrigger(0.5, 8.0, SpikeTrigger(0.8, 0.99, 3.0)), True),
    ],
    ids=lambda o: o.name,
)
def test_generic_config_round_trip(obj):
    d = config_to_dict(obj)
    assert config_from_dict(tomllib.loads(tomli_w.dumps({"x": d}))["x"]) == obj
    names = registered_names()
    assert {"scheduled", "normalized", "adagrad", "apf", "spike_trigger", "running_jacobi"} <= set(names)


def test_generic_config_errors():
    with pytest.raises(ValueError, match="^obj:"):
        config_to_dict({"name": "constant"})
    with pytest.raises(ValueError, match="^d: expected 'name'"):
        config_from_dict({"name": "nope"})
