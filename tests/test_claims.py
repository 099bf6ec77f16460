"""The claims registry: every claim passes at the quick budget, the registry logic can fail, inputs validate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from osdn_theory.claims import (
    COMPARISONS,
    ClaimResult,
    Outcome,
    claim,
    get_claim,
    labels,
    registry,
    run_claim,
    run_claims,
    select,
)
from osdn_theory.claims import _registry as reg_mod
from osdn_theory.metrics import contraction_factor_bound
from osdn_theory.tolerances import EXACT_FLOAT64, rtol

EXPECTED = {
    "C1", "C2", "C3", "C4", "C4-bound", "C4-neg-jacobi", "C4-neg-nonsym", "C5", "C5-neg-raw", "C5-normalized",
    "C6", "C7", "C7-batch", "C7-neg", "C7-neg-box", "C7-neg-near-diagonal", "C7-neg-nolearn", "C8",
    "C8-neg-erratum", "C9", "C9-neg-noforget", "C9-neg-toward-one", "R-recall",
}  # fmt: skip


def test_registry_lists_every_claim_in_label_order():
    labs = labels()
    assert set(labs) == EXPECTED
    assert labs[0] == "C1" and labs.index("C4") < labs.index("C4-bound") < labs.index("C5")
    for spec in registry().values():
        assert spec.comparison in COMPARISONS
        assert spec.statement and spec.title
        assert set(spec.quick) and set(spec.full) >= set(spec.quick)


@pytest.mark.parametrize("label", sorted(EXPECTED))
def test_claim_quick(label):
    """Each claim at the quick budget: PASS for pass/fail claims, a finite number for measurements."""
    r = get_claim(label)(budget="quick", seed=0)
    assert r.error is None
    d = r.to_dict()
    json.dumps(d, allow_nan=False)  # JSON-serialisable, no NaN
    if r.comparison == "measurement":
        assert r.passed is None and r.verdict == "measured"
        assert np.isfinite(r.measured)
    else:
        assert r.passed is True, f"{label}: measured {r.measured} vs bound {r.bound}; evidence {r.evidence}"
    assert r.negative_control == ("-neg" in label)


@pytest.mark.slow
@pytest.mark.parametrize(
    "label", ["C4-neg-nonsym", "C5-neg-raw", "C7-neg", "C7", "C7-batch", "C8-neg-erratum"]
)
def test_claim_other_seeds(label):
    """Claims and negative controls are not tied to one seed."""
    for seed in (1, 2):
        assert get_claim(label)(budget="quick", seed=seed).passed is True


def test_select_family_and_errors():
    assert [s.label for s in select("C4")] == ["C4", "C4-bound", "C4-neg-jacobi", "C4-neg-nonsym"]
    assert [s.label for s in select(["C1", " C8 "])] == ["C1", "C8", "C8-neg-erratum"]
    with pytest.raises(ValueError, match="only: unknown claim label 'C99'.*valid labels are C1"):
        select("C1,C99")
    with pytest.raises(ValueError, match="only: expected at least one"):
        select(" , ")
    with pytest.raises(ValueError, match="label: unknown claim 'X'"):
        get_claim("X")
    with pytest.raises(ValueError, match="budget"):
        get_claim("C1").size("medium")
    with pytest.raises(ValueError, match="seed"):
        run_claim(get_claim("C1"), seed=-1)
    with pytest.raises(ValueError, match="budget"):
        run_claims("C1", budget="huge")


@pytest.fixture
def scratch_registry(monkeypatch):
    """A private copy of the registry so test claims do not leak into the real one."""
    reg_mod._load_all()
    monkeypatch.setattr(reg_mod, "_REGISTRY", dict(reg_mod._REGISTRY))
    return reg_mod._REGISTRY


@pytest.mark.parametrize(
    "comparison, measured, bound, expected",
    [
        ("equal within tol", 1e-12, 1e-10, True),
        ("equal within tol", 1e-8, 1e-10, False),
        ("upper bound", 0.5, 1.0, True),
        ("upper bound", 1.5, 1.0, False),
        ("lower bound", 3.0, 2.0, True),
        ("lower bound", 1.0, 2.0, False),
        ("upper bound", float("nan"), 1.0, False),
        ("measurement", 1.0, None, None),
    ],
)
def test_verdict_from_comparison(scratch_registry, comparison, measured, bound, expected):
    spec = claim("T-x", title="t", statement="s", comparison=comparison, quick=dict(n=1))(
        lambda size, seed: Outcome(measured=measured, bound=bound)
    )
    r = run_claim(spec)
    assert r.passed is expected
    json.dumps(r.to_dict(), allow_nan=False)


def test_errors_are_recorded_or_raised(scratch_registry):
    def boom(size, seed):
        raise RuntimeError("broken claim")

    spec = claim("T-boom", title="t", statement="s", comparison="upper bound", quick=dict(n=1))(boom)
    r = run_claim(spec, catch=True)
    assert r.verdict == "ERROR" and r.passed is False and "broken claim" in r.error
    with pytest.raises(RuntimeError, match="broken claim"):
        run_claim(spec)
    trend = claim("T-trend", title="t", statement="s", comparison="trend", quick=dict(n=1))(
        lambda size, seed: Outcome(measured=1.0)
    )
    with pytest.raises(ValueError, match="trend"):
        run_claim(trend)
    with pytest.raises(ValueError, match="label: claim 'T-boom' is already registered"):
        claim("T-boom", title="t", statement="s", comparison="upper bound", quick={})(boom)
    with pytest.raises(ValueError, match="comparison"):
        claim("T-y", title="t", statement="s", comparison="roughly", quick={})
    with pytest.raises(ValueError, match="label"):
        claim("", title="t", statement="s", comparison="trend", quick={})


def test_size_is_read_only_mapping():
    size = get_claim("C3").size("full")
    assert size.budget == "full" and size.T == size["T"] and "T" in dict(size)
    with pytest.raises(AttributeError, match="no parameter"):
        _ = size.nonexistent
    with pytest.raises(TypeError):
        size._values["T"] = 1  # type: ignore[index]


def test_claim_result_json_handles_numpy_and_nonfinite():
    r = ClaimResult(
        label="L", title="t", statement="s", assumptions=[], measured=1.0, bound=2.0, comparison="upper bound",
        passed=True, evidence=dict(a=np.float64(1.5), b=np.arange(3), c=torch.tensor([1.0]), d=float("inf")),
    )  # fmt: skip
    d = r.to_dict()
    assert d["evidence"] == dict(a=1.5, b=[0, 1, 2], c=[1.0], d="inf")
    json.dumps(d, allow_nan=False)


def test_contraction_factor_bound_matches_formula():
    k = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)
    beta = torch.tensor([[[0.5]]], dtype=torch.float64)
    assert float(contraction_factor_bound(k, beta, 1.0, 3.0)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k: expected shape"):
        contraction_factor_bound(k[0], beta, 1.0, 3.0)
    with pytest.raises(ValueError, match="beta: expected shape"):
        contraction_factor_bound(k, beta[0], 1.0, 3.0)
    with pytest.raises(ValueError, match="d_min"):
        contraction_factor_bound(k, beta, 0.0, 3.0)
    with pytest.raises(ValueError, match="d_max"):
        contraction_factor_bound(k, beta, 2.0, 1.0)


def test_nonsym_control_depends_on_the_dropped_assumption():
    """With d ∝ 1 (symmetric transition) and 0 < s < 2 the spectral norm is ≤ 1: the control's effect is
    caused by a non-constant d, not by the construction."""
    from osdn_theory.claims.c4_contraction import _transition

    g = torch.Generator().manual_seed(0)
    k = torch.randn(200, 5, generator=g, dtype=torch.float64)
    k = k / k.norm(dim=-1, keepdim=True)
    c = 0.1 + 1.8 * torch.rand(
        200, 1, generator=g, dtype=torch.float64
    )  # s = β c ‖k‖² ∈ (0.1, 1.9) for β = 1
    spec = torch.linalg.matrix_norm(_transition(k, c.expand(-1, 5), 1.0), ord=2)
    assert float(spec.max()) <= 1 + EXACT_FLOAT64


def test_raw_rule_is_state_free_under_the_normalized_step():
    """Finding behind C5-neg-raw's choice of step: with η = c/L_t, L_t = β²‖e‖²‖u‖², the raw rule's ‖e‖²
    cancels and it coincides with the ratio rule; the state dependence shows only with a scheduled step."""
    from osdn_theory.preconditioners import NormalizedStep, osdn_adaptive
    from osdn_theory.tolerances import rel_err

    g = torch.Generator().manual_seed(0)
    k = torch.randn(1, 32, 1, 4, generator=g, dtype=torch.float64) / 2
    beta = torch.full((1, 32, 1), 0.7, dtype=torch.float64)
    v = torch.randn(1, 32, 1, 3, generator=g, dtype=torch.float64)
    raw = osdn_adaptive(k, k, v, beta, rule="raw", step=NormalizedStep(0.5)).d
    ratio = osdn_adaptive(k, k, v, beta, rule="ratio", step=NormalizedStep(0.5)).d
    assert rel_err(raw, ratio) <= rtol(torch.float64)


def test_results_frame_and_report_errors(tmp_path):
    from osdn_theory.claims import results_frame, write_report

    rs = run_claims("C1,C2")
    df = results_frame(rs)
    assert list(df["label"]) == ["C1", "C2"] and list(df["verdict"]) == ["PASS", "PASS"]
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ValueError, match="out: expected a directory"):
        write_report(rs, f, budget="quick", seed=0, duration_s=0.0)
    d = tmp_path / "r"
    with pytest.raises(ValueError, match="budget"):
        write_report(rs, d, budget="medium", seed=0, duration_s=0.0)
    with pytest.raises(ValueError, match="seed"):
        write_report(rs, d, budget="quick", seed=-2, duration_s=0.0)
    with pytest.raises(ValueError, match="duration_s"):
        write_report(rs, d, budget="quick", seed=0, duration_s=float("nan"))
    with pytest.raises(ValueError, match="results: expected ClaimResult"):
        write_report([*rs, {"label": "C9"}], d, budget="quick", seed=0, duration_s=0.0)
    assert not d.exists()


@pytest.mark.slow
def test_every_claim_at_full_budget():
    """``osdn verify --full`` (about half a minute on one core): every pass/fail claim passes."""
    results = run_claims(budget="full", seed=0, catch=True)
    bad = {r.label: (r.measured, r.bound, r.error) for r in results if r.verdict in ("FAIL", "ERROR")}
    assert not bad, bad
    assert {r.label for r in results} == EXPECTED


def test_worst_propagates_nan_where_max_would_drop_it(scratch_registry):
    """``max(0.1, nan)`` is 0.1: a claim taking the worst of its errors with ``max`` could pass on NaN."""
    from osdn_theory.claims._common import worst

    assert max(0.1, float("nan")) == 0.1  # the pitfall
    assert np.isnan(worst(0.1, float("nan"))) and np.isnan(worst(float("nan"), 0.1))
    assert worst(1e-13, 3e-12, 2e-14) == 3e-12
    with pytest.raises(ValueError, match="values"):
        worst()
    spec = claim("T-nan", title="t", statement="s", comparison="equal within tol", quick=dict(n=1))(
        lambda size, seed: Outcome(measured=worst(0.0, float("nan")), bound=1e-10)
    )
    assert run_claim(spec).passed is False


def test_recall_tuning_and_evaluation_seeds_are_disjoint():
    """R-recall picks its step rule on tuning streams and reports on evaluation streams: never the same ones
    (with the former base 10 000 they coincided at root seed 10)."""
    from osdn_theory.claims.r_recall import seed_sets

    for seed in (0, 1, 10, 11, 123):
        tuning, evaluation = seed_sets(seed, 8)
        assert len(set(tuning)) == len(set(evaluation)) == 8 and not set(tuning) & set(evaluation)
    with pytest.raises(ValueError, match="seed"):
        seed_sets(-1, 3)
    with pytest.raises(ValueError, match="n: expected"):
        seed_sets(0, 0)


@pytest.mark.parametrize(
    "label, module, name",
    [("C5-neg-raw", "c5_affine_update", "osdn_adaptive"), ("C8-neg-erratum", "c8_rls", "rls")],
)
def test_negative_controls_fail_when_the_dropped_variant_returns_nan(monkeypatch, label, module, name):
    """rel_err is inf for a NaN output, which is ≥ any separation bound: the controls must not read a broken
    (NaN) variant as the predicted effect."""
    import importlib
    import types

    mod = importlib.import_module(f"osdn_theory.claims.{module}")
    real = getattr(mod, name)

    def nan_variant(*args, **kw):
        res = real(*args, **kw)
        if kw.get("rule") == "raw":  # C5-neg-raw: the raw rule's d
            return types.SimpleNamespace(d=torch.full_like(res.d, float("nan")))  # the claim reads only .d
        if kw.get("variant") == "erratum" and kw.get("gamma") != 1.0:  # C8-neg-erratum: γ < 1 states
            o, s, diag = res
            return o, s, type(diag)(**dict(vars(diag), states=torch.full_like(diag.states, float("nan"))))
        return res

    monkeypatch.setattr(mod, name, nan_variant)
    r = get_claim(label)(budget="quick", seed=0)
    assert r.passed is False, r.evidence
