"""R-recall is reported honestly: pre-registered headline, every step rule with its sign, intervals, the λ → 0
right-Newton ceiling, accuracy in points and relative, and the gap to the paper's model-scale numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from osdn_theory.claims import get_claim, run_claim, write_report
from osdn_theory.claims import r_recall as rr


@pytest.fixture(scope="module")
def quick():
    return run_claim(get_claim("R-recall"), budget="quick", seed=0)


def _ordered(ci: dict) -> bool:
    lo, hi = ci["ci95"]
    return all(map(math.isfinite, (lo, ci["mean"], hi))) and lo <= ci["mean"] <= hi


def test_evidence_has_every_field(quick):
    ev = quick.evidence
    assert quick.error is None and quick.comparison == "measurement" and quick.passed is None
    assert ev["headline_step_rule"] == rr.PRIMARY == "normalized(c=0.5)"
    assert quick.measured == pytest.approx(ev["R1_reduction_percent"]["mean"])
    assert "Student-t" in ev["interval"]
    for key in ("R1_reduction_percent", "accuracy_delta_points", "accuracy_delta_relative_percent"):
        assert set(ev[key]) == {"mean", "sd", "ci95", "n"} and ev[key]["n"] == quick_seeds()
    # every step rule tried, the default included, with the sign and value of its R1 change
    assert set(ev["R1_change_by_step_rule"]) == set(rr.CANDIDATES) == set(ev["step_rules"])
    for name, ch in ev["R1_change_by_step_rule"].items():
        red = ch["reduction_percent"]["mean"]
        assert ch["R1_vs_deltanet"] == ("lower" if red > 0 else "higher" if red < 0 else "equal"), name
        per_seed = ev["step_rules"][name]["R1_reduction_percent_per_seed"]
        assert red == pytest.approx(np.mean(per_seed))
    assert ev["selected_on_tuning_seeds"]["rule"] in rr.CANDIDATES
    assert ev["best_step_rule_on_evaluation_seeds"]["rule"] in rr.CANDIDATES
    # both the ceiling (λ → 0) and the ridge-limited λ = 1, labelled
    roles = {n: v["role"] for n, v in ev["right_newton"].items()}
    assert roles["rls(lambda=1)"].startswith("ridge-limited") and "ceiling" in roles[rr.CEILING]
    gap = ev["paper_gap"]
    assert "+32 %" in gap and "340M" in gap and "39 %" in gap and "1.3B" in gap and "not reproduced" in gap
    assert ev["table"]["rows"] and all(len(r) == len(ev["table"]["columns"]) for r in ev["table"]["rows"])


def quick_seeds() -> int:
    return get_claim("R-recall").size("quick").seeds


def test_accuracy_delta_in_points_and_relative(quick):
    ev = quick.evidence
    s = ev["step_rules"][rr.PRIMARY]
    dn = np.array(ev["recall_accuracy_deltanet_per_seed"])
    assert s["accuracy_delta_points"]["mean"] == pytest.approx(100 * (s["accuracy_mean"] - dn.mean()))
    assert np.sign(s["accuracy_delta_relative_percent"]["mean"]) == np.sign(
        s["accuracy_delta_points"]["mean"]
    )


def test_lambda_to_zero_ceiling_is_about_100_percent(quick):
    rn = quick.evidence["right_newton"]
    assert quick.evidence["ceiling_R1_reduction_percent"] >= 99.0
    assert rn["rls(lambda=1e-6)"]["R1_reduction_percent"]["mean"] >= 99.0
    assert rn["rls(lambda=1e-3)"]["R1_reduction_percent"]["mean"] >= 99.0
    # λ = 1 is far from the ceiling: it is not a headroom for a preconditioner
    assert rn["rls(lambda=1)"]["R1_reduction_percent"]["mean"] < 50.0
    assert quick.evidence["R3_headline_vs_ceiling_mean"] >= 0.0


def test_intervals_are_ordered(quick):
    ev = quick.evidence
    cis = [ev["R1_reduction_percent"], ev["accuracy_delta_points"], ev["accuracy_delta_relative_percent"]]
    cis += [c["reduction_percent"] for c in ev["R1_change_by_step_rule"].values()]
    cis += [v["R1_reduction_percent"] for v in ev["right_newton"].values()]
    for s in ev["step_rules"].values():
        cis += [s["accuracy_delta_points"], s["accuracy_delta_relative_percent"]]
    assert all(_ordered(c) for c in cis)
    assert all(c["sd"] >= 0 for c in cis)


def test_t_interval():
    ci = rr.t_interval([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["sd"] == 1.0 and ci["n"] == 3
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2}
    assert ci["ci95"] == pytest.approx([2.0 - half, 2.0 + half])
    assert rr.t_interval([5.0])["ci95"] == [5.0, 5.0]


def test_deterministic_per_seed(quick):
    again = run_claim(get_claim("R-recall"), budget="quick", seed=0)
    assert json.dumps(again.evidence, sort_keys=True) == json.dumps(quick.evidence, sort_keys=True)
    other = run_claim(get_claim("R-recall"), budget="quick", seed=1)
    assert other.evidence["stream_seeds"] != quick.evidence["stream_seeds"]
    assert other.measured != quick.measured


def test_report_shows_the_table(quick, tmp_path):
    md = write_report([quick], tmp_path, budget="quick", seed=0, duration_s=1.0, figures=False)[
        "md"
    ].read_text()
    assert "| method | R1 (mean) | R1 reduction % [95 % CI]" in md
    assert "pre-registered headline" in md and "λ → 0 right-Newton ceiling" in md and "ridge-limited" in md
    for name in rr.CANDIDATES:
        assert f"OSDN ratio, {name}" in md
    assert quick.evidence["paper_gap"] in md
