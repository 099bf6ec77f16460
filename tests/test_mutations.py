"""The mutation suite (``osdn_theory.mutants``): every planted bug makes one of its declared claims FAIL.

(a) without a mutant every declared target claim passes; (b) each killable mutant makes at least one of its
targets FAIL (ERROR only where the mutant says why an exception from the library's own checks is a
legitimate detection); (c) a mutant's patches are undone on exit, also after an exception; (d) ``osdn
verify --mutants`` prints the kill matrix, writes ``mutants.json`` / ``mutants.md`` and exits 1 on a
survivor. Each mutant runs only against its declared targets, in declared order, and stops at the first kill.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from osdn_theory import mutants as mut
from osdn_theory.claims._registry import get_claim, run_claim, select
from osdn_theory.cli import app

runner = CliRunner()

KILLABLE = [m for m in mut.MUTANTS.values() if m.unkillable is None]

#: Mutants that cannot be killed yet because the claim that should catch them is still being reworked
#: (temporary: strict xfail, so that the mark must go once the claim kills the mutant).
PENDING: dict[str, str] = {}


def _targets(m: mut.Mutant) -> list[str]:
    return mut.target_labels(m)


@pytest.fixture(scope="module")
def baseline() -> dict[str, str]:
    """Verdict of every declared target claim without any mutant (quick budget, seed 0)."""
    labels = sorted({lab for m in KILLABLE for lab in _targets(m)})
    return {s.label: run_claim(s, catch=True).verdict for s in select(labels)}


def test_registry_is_well_formed():
    names = mut.mutant_names()
    assert len(names) == len(set(names)) >= 18
    for m in mut.MUTANTS.values():
        assert m.description and m.name == mut.get_mutant(m.name).name
        # A mutant either names the claims that catch it or says in writing why none can.
        assert bool(m.targets) != bool(m.unkillable), m.name
        if m.targets:
            assert _targets(m), m.name  # every target label exists in the registry
    with pytest.raises(ValueError, match="unknown mutant 'nope'"):
        mut.get_mutant("nope")


def test_targets_pass_without_mutants(baseline):
    failing = {lab: v for lab, v in baseline.items() if v != "PASS"}
    assert not failing, failing


def _param(m: mut.Mutant):
    marks = [pytest.mark.xfail(strict=True, reason=PENDING[m.name])] if m.name in PENDING else []
    return pytest.param(m, id=m.name, marks=marks)


@pytest.mark.parametrize("mutant", [_param(m) for m in KILLABLE])
def test_mutant_is_killed(mutant, baseline):
    seen = {}
    with mutant.applied():
        for spec in [get_claim(lab) for lab in _targets(mutant)]:  # declared order: cheap claims first
            r = run_claim(spec, catch=True)
            seen[spec.label] = r.error or r.verdict
            killed = r.verdict == "FAIL" or (r.verdict == "ERROR" and mutant.error_ok is not None)
            if killed and baseline[spec.label] == "PASS":
                return
    pytest.fail(f"mutant {mutant.name} survived its targets: {seen}")


def test_unkillable_mutant_changes_the_measurement():
    """r1-not-squared: no verdict can see it, but R1 as R-recall computes it changes (tests/test_metrics.py's
    hand-computed R1 = 4/5 becomes 2/3 under the bug)."""
    from osdn_theory.claims import r_recall

    state = torch.tensor([[[[1.0], [0.0]]]], dtype=torch.float64)
    k = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0]], [[2.0]]]], dtype=torch.float64)  # residuals 0 and −2
    assert float(r_recall.stored_set_residual_ratio(state, k, v)) == pytest.approx(0.8)
    with mut.get_mutant("r1-not-squared").applied():
        assert float(r_recall.stored_set_residual_ratio(state, k, v)) == pytest.approx(2 / 3)
    assert float(r_recall.stored_set_residual_ratio(state, k, v)) == pytest.approx(0.8)


def _snapshot() -> dict[tuple[str, str], int]:
    """Identity of every module-level attribute of every loaded osdn_theory module."""
    return {
        (name, attr): id(val)
        for name, mod in list(sys.modules.items())
        if mod is not None and (name == "osdn_theory" or name.startswith("osdn_theory."))
        for attr, val in list(vars(mod).items())
    }


@pytest.mark.parametrize("mutant", list(mut.MUTANTS.values()), ids=lambda m: m.name)
def test_mutant_restores_the_code(mutant):
    mut._load_library()
    before = _snapshot()
    with mutant.applied():
        during = _snapshot()
        assert during != before, f"{mutant.name} patched nothing"
    assert _snapshot() == before
    with pytest.raises(RuntimeError, match="boom"), mutant.applied():
        raise RuntimeError("boom")
    assert _snapshot() == before


def test_cli_mutants_subset(tmp_path):
    out = tmp_path / "mut"
    res = runner.invoke(
        app,
        ["verify", "--mutants", "--mutant", "chunk-gram-KK,beta-x0.98,no-null-step", "--only", "C2,C3"]
        + ["--out", str(out), "--seed", "1"],
    )
    assert res.exit_code == 0, res.output
    assert "kill matrix" in res.output and "chunk-gram-KK" in res.output and "not tested" in res.output
    data = json.loads((out / "mutants.json").read_text())
    assert data["seed"] == 1 and data["claims"] == ["C2", "C3"] and data["survived"] == []
    assert data["baseline"] == {"C2": "PASS", "C3": "PASS"}
    rows = {r["name"]: r for r in data["mutants"]}
    assert rows["chunk-gram-KK"]["killed_by"] == ["C3"] and rows["beta-x0.98"]["killed_by"] == ["C2"]
    assert rows["no-null-step"]["tested"] is False and rows["no-null-step"]["killed"] is False
    md = (out / "mutants.md").read_text()
    assert "| mutant | C2 | C3 | killed |" in md and "| `chunk-gram-KK` | · | F | yes |" in md


def test_cli_mutants_survivor_exits_1(tmp_path, monkeypatch):
    noop = mut.Mutant("noop", "patches nothing observable", ("C1",), lambda p: None)
    monkeypatch.setitem(mut.MUTANTS, "noop", noop)
    res = runner.invoke(
        app, ["verify", "--mutants", "--mutant", "noop", "--targets-only", "--out", str(tmp_path)]
    )
    assert res.exit_code == 1, res.output
    assert "SURVIVING mutants: noop" in res.output
    assert json.loads((tmp_path / "mutants.json").read_text())["survived"] == ["noop"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mutants", "--mutant", "bogus"], "unknown mutant 'bogus'"),
        (["--mutant", "beta-x0.98"], "needs --mutants"),
        (["--targets-only"], "needs --mutants"),
    ],
)
def test_cli_mutants_bad_arguments(args, message, tmp_path):
    res = runner.invoke(app, ["verify", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())
