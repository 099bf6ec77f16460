"""Every public argument of the reference solvers is validated with a message naming it."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from osdn_theory import delta_rule_recurrent, osdn_chunkwise, osdn_recurrent, rel_err, rtol, write_key
from osdn_theory.chunkwise import chunk_factors

from ._inputs import random_inputs

SOLVERS = [osdn_recurrent, osdn_chunkwise]


def _bad(x, **changes):
    y = dict(x)
    y.update(changes)
    return y


def _cases():
    x = random_inputs(1, 6, 2, 4, 3, seed=0, gated=True, init=True)
    f64 = torch.float64
    nan_k = x["k"].clone()
    nan_k[0, 1, 0, 2] = float("nan")
    return x, [
        ("k", _bad(x, k=x["k"][0]), "shape"),
        ("k", _bad(x, k=x["k"][:, :0]), "T >= 1"),
        ("k", _bad(x, k=nan_k), "finite"),
        ("k", _bad(x, k=x["k"].to(torch.int64)), "floating"),
        ("k", _bad(x, k="keys"), "torch.Tensor"),
        ("q", _bad(x, q=x["q"][..., :3]), "shape"),
        ("v", _bad(x, v=x["v"][:, :5]), "shape"),
        ("beta", _bad(x, beta=x["beta"][..., None]), "shape"),
        ("beta", _bad(x, beta=torch.zeros(1, 6, 2, dtype=f64)), r"\(0.0, 1.0\]"),
        ("beta", _bad(x, beta=torch.full((1, 6, 2), 1.5, dtype=f64)), r"\(0.0, 1.0\]"),
        ("d", _bad(x, d=-x["d"]), r"\(0.0, inf"),
        ("d", _bad(x, d=torch.ones(3, dtype=f64)), "broadcasts"),
        ("alpha", _bad(x, alpha=torch.zeros(1, 6, 2, dtype=f64)), r"\(0.0, 1.0\]"),
        ("alpha", _bad(x, alpha=x["alpha"][:, :2]), "shape"),
        ("initial_state", _bad(x, initial_state=x["initial_state"][..., :2]), "shape"),
        ("scale", _bad(x, scale=-1.0), "scale"),
        ("scale", _bad(x, scale=float("nan")), "finite"),
        ("s_max", _bad(x, s_max=2.0), r"\(0.0, 2.0\)"),
        ("s_max", _bad(x, s_max=0.0), r"\(0.0, 2.0\)"),
        ("output_final_state", _bad(x, output_final_state=1), "bool"),
    ]


_X, CASES = _cases()


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("arg,kwargs,msg", CASES, ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(CASES)])
def test_bad_argument_is_named(solver, arg, kwargs, msg):
    with pytest.raises(ValueError, match=arg if arg.startswith("^") else rf"^{arg}:") as err:
        solver(**kwargs)
    assert re.search(msg, str(err.value)), str(err.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_chunk_size_validated(bad):
    with pytest.raises(ValueError, match="chunk_size"):
        osdn_chunkwise(**_X, chunk_size=bad)


def test_dtype_none_requires_consistent_dtypes():
    x = _bad(_X, v=_X["v"].float())
    with pytest.raises(ValueError, match="v: expected dtype"):
        osdn_recurrent(**x, dtype=None)
    # the default float64 reference casts everything, so the same call succeeds
    o, _ = osdn_recurrent(**x)
    assert o.dtype == torch.float64


def test_broadcast_d_accepted():
    x = dict(_X)
    d_full = torch.broadcast_to(torch.linspace(0.5, 2.0, 4, dtype=torch.float64), x["k"].shape)
    o1, _ = osdn_recurrent(**_bad(x, d=d_full))
    o2, _ = osdn_recurrent(**_bad(x, d=np.linspace(0.5, 2.0, 4)))
    assert rel_err(o1, o2) <= rtol(torch.float64)


def test_initial_state_dtype_must_match_with_dtype_none():
    x = _bad(_X, initial_state=_X["initial_state"].float())
    with pytest.raises(ValueError, match="^initial_state: expected dtype"):
        osdn_recurrent(**x, dtype=None)
    with pytest.raises(ValueError, match="^initial_state: expected dtype"):
        delta_rule_recurrent(**{n: t for n, t in x.items() if n != "d"}, dtype=None)
    o, _ = osdn_recurrent(**x)  # the float64 default casts it
    assert o.dtype == torch.float64


@pytest.mark.parametrize(
    "change, arg",
    [
        (dict(k=_X["k"][0]), "k"),
        (dict(k=_X["k"].clone().fill_(float("inf"))), "k"),
        (dict(beta=_X["beta"][..., :1]), "beta"),
        (dict(beta=_X["beta"].float()), "beta"),
        (dict(beta=_X["beta"] * 0.0), "beta"),
        (dict(d=torch.ones(3, dtype=torch.float64)), "d"),
        (dict(d=-_X["d"]), "d"),
        (dict(d=_X["d"].float()), "d"),
        (dict(s_max=2.0), "s_max"),
    ],
)
def test_write_key_validates(change, arg):
    args = dict(k=_X["k"], beta=_X["beta"], d=_X["d"], s_max=1.0)
    args.update(change)
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        write_key(args["k"], args["beta"], args["d"], args["s_max"])


def test_write_key_values():
    kt, s, c = write_key(_X["k"], _X["beta"], np.full(4, 2.0), None)
    assert rel_err(kt, 2.0 * _X["k"]) <= rtol(torch.float64)
    assert rel_err(s, 2.0 * _X["beta"] * (_X["k"] ** 2).sum(-1)) <= rtol(torch.float64)
    assert bool((c == 1.0).all())


@pytest.mark.parametrize(
    "change, arg",
    [
        (dict(k=torch.ones(4, dtype=torch.float64)), "k"),
        (dict(kt=torch.ones(2, 3, 5, dtype=torch.float64)), "kt"),
        (dict(kt=torch.ones(2, 3, 4)), "kt"),
        (dict(beta=torch.ones(2, 4, dtype=torch.float64)), "beta"),
        (dict(beta=torch.full((2, 3), 1.5, dtype=torch.float64)), "beta"),
        (dict(g=torch.full((2, 3), 0.5, dtype=torch.float64)), "g"),
        (dict(g=torch.zeros(3, dtype=torch.float64)), "g"),
    ],
)
def test_chunk_factors_validates(change, arg):
    args = dict(
        k=torch.ones(2, 3, 4, dtype=torch.float64),
        kt=torch.ones(2, 3, 4, dtype=torch.float64),
        beta=torch.full((2, 3), 0.5, dtype=torch.float64),
        g=-torch.ones(2, 3, dtype=torch.float64).cumsum(-1),
    )
    args.update(change)
    with pytest.raises(ValueError, match=rf"^{arg}:"):
        chunk_factors(args["k"], args["kt"], args["beta"], args["g"])


@pytest.mark.parametrize(
    "k, beta, arg, msg",
    [
        (
            torch.ones(1, 0, 2, 3, dtype=torch.float64),
            torch.ones(1, 0, 2, dtype=torch.float64),
            "k",
            "T >= 1",
        ),
        (
            torch.ones(1, 4, 2, 0, dtype=torch.float64),
            torch.ones(1, 4, 2, dtype=torch.float64),
            "k",
            "K >= 1",
        ),
        (torch.ones(1, 4, 2, 3, dtype=torch.float64), torch.ones(1, 4, 2), "beta", "dtype"),
        (
            torch.ones(1, 4, 2, 3, dtype=torch.float64),
            torch.ones(1, 4, 3, dtype=torch.float64),
            "beta",
            "shape",
        ),
    ],
)
def test_keys_and_beta_shared_check(k, beta, arg, msg):
    from osdn_theory._validate import keys_and_beta
    from osdn_theory.comparators import token_local_newton_d
    from osdn_theory.preconditioners import d_scan

    for f in (lambda: keys_and_beta(k, beta), lambda: d_scan(k, beta, dtype=None)):
        with pytest.raises(ValueError, match=rf"^{arg}:.*{msg}"):
            f()
    if msg != "dtype":  # the comparators cast to float64 first
        with pytest.raises(ValueError, match=rf"^{arg}:.*{msg}"):
            token_local_newton_d(k, beta)


@pytest.mark.parametrize("solver", [osdn_recurrent, delta_rule_recurrent], ids=lambda f: f.__name__)
def test_diagnostics_flag_must_be_bool(solver):
    x = {n: t for n, t in _X.items() if solver is osdn_recurrent or n != "d"}
    with pytest.raises(ValueError, match="^diagnostics: expected a bool"):
        solver(**x, diagnostics="yes")


@pytest.mark.parametrize("bad", [np.array(["ratio", "hyper"]), torch.tensor([1, 2]), 1, None])
def test_check_choice_names_the_argument_for_any_value(bad):
    from osdn_theory._validate import check_choice

    with pytest.raises(ValueError, match="^rule: expected one of"):
        check_choice("rule", bad, ("ratio", "hyper"))
    assert check_choice("rule", "hyper", ("ratio", "hyper")) == "hyper"


def test_check_scalar_keeps_large_integers_exact():
    from osdn_theory._validate import check_scalar
    from osdn_theory.streams import TeacherStream

    big = 2**60 + 1
    assert check_scalar("seed", big, 0, None, integer=True) == big
    assert check_scalar("seed", np.int64(big), 0, None, integer=True) == big
    assert check_scalar("x", 3, 0.0, None) == 3.0 and isinstance(check_scalar("x", 3, 0.0, None), float)
    with pytest.raises(ValueError, match="^seed: expected a value in"):
        check_scalar("seed", -big, 0, None, integer=True)
    cfg = TeacherStream(T=3, K=2, V=1)
    assert not torch.equal(cfg.build(big - 1).k, cfg.build(big).k)  # distinct seeds, distinct streams


# ---------------------------------------------------------------------------------------------------------
# integer fields, cross-field checks, K >= 1


@pytest.mark.parametrize("bad", [256.0, np.float64(8.0), 2.5])
def test_integer_fields_refuse_floats(bad):
    from osdn_theory._validate import check_scalar
    from osdn_theory.streams import PiecewiseStationaryStream, from_dict

    with pytest.raises(ValueError, match="^T: expected an integer"):
        check_scalar("T", bad, 1, None, integer=True)
    with pytest.raises(ValueError, match="^T: expected an integer"):
        from_dict({"family": "piecewise", "T": bad, "segment_len": 1})
    with pytest.raises(ValueError, match="^segment_len: expected an integer"):
        PiecewiseStationaryStream(T=512, segment_len=bad)
    assert check_scalar("T", np.int32(256), 1, None, integer=True) == 256


def test_sweep_file_with_a_float_count_is_refused_before_any_run(tmp_path):
    """T = 256.0 in a sweep file used to pass the check and then fail every run."""
    from osdn_theory.sweeps.spec import parse_spec

    raw = {
        "seeds": [0],
        "stream": [{"family": "piecewise", "T": 256.0, "K": 4, "segment_len": 64}],
        "method": [{"name": "deltanet"}],
    }
    with pytest.raises(ValueError, match=r"^stream\[0\]: T: expected an integer"):
        parse_spec(raw)


def test_cross_field_checks():
    from osdn_theory.streams import from_dict
    from osdn_theory.sweeps.spec import parse_spec

    for fam in ("piecewise", "drift", "key_norm_shift", "teacher_switch"):
        with pytest.raises(ValueError, match="^segment_len: expected at most T = 64"):
            from_dict({"family": fam, "T": 64, "segment_len": 65})
        from_dict({"family": fam, "T": 64, "segment_len": 64})  # one segment: allowed
    raw = {
        "seeds": [0],
        "metrics": {"window": 40},
        "stream": [{"family": "piecewise", "T": 128, "K": 4, "segment_len": 32}],
        "method": [{"name": "deltanet"}],
    }
    with pytest.raises(ValueError, match=r"^metrics.window: expected at most stream\[0\].segment_len = 32"):
        parse_spec(raw)
    raw["metrics"]["window"] = 32
    parse_spec(raw)


def _k0_calls():
    import osdn_theory.comparators as C
    from osdn_theory.preconditioners import d_scan

    B, T, H, K, V = 1, 4, 1, 0, 2
    f64 = torch.float64
    k, v = torch.randn(B, T, H, K, dtype=f64), torch.randn(B, T, H, V, dtype=f64)
    beta, a = torch.ones(B, T, H, dtype=f64), torch.rand(B, H, K, dtype=f64)
    Km, Vm = torch.randn(5, K, dtype=f64), torch.randn(5, V, dtype=f64)
    return {
        "right_preconditioned_recurrent": lambda: C.right_preconditioned_recurrent(
            k, k, v, beta, torch.zeros(B, T, H, K, K, dtype=f64)
        ),
        "rls": lambda: C.rls(k, k, v),
        "ridge_solution": lambda: C.ridge_solution(k, v, 2),
        "windowed_rls": lambda: C.windowed_rls(k, k, v, window=2),
        "windowed_ridge_solution": lambda: C.windowed_ridge_solution(k, v, 2, window=2),
        "longhorn_write_key": lambda: C.longhorn_write_key(k, beta),
        "jacobi_d": lambda: C.jacobi_d(k, beta),
        "token_local_newton_d": lambda: C.token_local_newton_d(k, beta),
        "feedback_losses": lambda: C.feedback_losses(k, beta, torch.ones_like(k)),
        "best_fixed_diagonal": lambda: C.best_fixed_diagonal(k, beta),
        "fixed_point_d": lambda: C.fixed_point_d(a, beta[:, 0]),
        "expected_feedback": lambda: C.expected_feedback(torch.ones_like(a), a, 1.0),
        "batch_objective": lambda: C.batch_objective(torch.zeros(K, V, dtype=f64), Km, Vm),
        "batch_right_newton": lambda: C.batch_right_newton(Km, Vm),
        "batch_right_newton (no V)": lambda: C.batch_right_newton(Km),
        "batch_right_newton_step": lambda: C.batch_right_newton_step(
            torch.zeros(K, V, dtype=f64), Km, Vm, torch.zeros(K, K, dtype=f64)
        ),
        "osdn_recurrent": lambda: osdn_recurrent(k, k, v, beta, None),
        "osdn_chunkwise": lambda: osdn_chunkwise(k, k, v, beta, None),
        "delta_rule_recurrent": lambda: delta_rule_recurrent(k, k, v, beta),
        "d_scan": lambda: d_scan(k, beta),
    }


@pytest.mark.parametrize("fn", list(_k0_calls()))
def test_zero_key_features_is_a_named_error(fn):
    """K = 0 used to raise ZeroDivisionError (``K ** -0.5``) or return an empty answer."""
    with pytest.raises(ValueError, match=r"K >= 1|K = 0"):
        _k0_calls()[fn]()
