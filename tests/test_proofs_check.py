"""The sympy proofs: every module proves its identities, the runner's exit code reflects failures."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import sympy as sp

from proofs_check import MODULES, Checker, sym_matrix, sym_vector


@pytest.mark.parametrize("label, name", sorted(MODULES.items()))
def test_proof_module(label, name, capsys):
    mod = importlib.import_module(f"proofs_check.{name}")
    assert mod.main() == 0
    out = capsys.readouterr().out
    assert "[proved]" in out and "FAILED" not in out


def test_runner_exits_zero_and_lists_modules():
    res = subprocess.run([sys.executable, "-m", "proofs_check"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"all {len(MODULES)} modules proved" in res.stdout


def test_checker_detects_a_false_identity(capsys):
    c = Checker("negative control")
    x, y = sp.symbols("x y", real=True)
    assert c.zero("(x + y)² = x² + y² is false", (x + y) ** 2 - x**2 - y**2) is False
    assert c.zero("(x + y)² = x² + 2xy + y²", (x + y) ** 2 - x**2 - 2 * x * y - y**2) is True
    M = sym_matrix("M", 2, 2)
    assert c.zero("M = Mᵀ is false for a generic M", M - M.T) is False
    assert c.true("a false fact", False) is False
    assert c.done() == 1
    assert "FAILED: 3 of 4" in capsys.readouterr().out


def test_runner_fails_when_a_module_fails(monkeypatch, capsys):
    import proofs_check.__main__ as runner

    bad = type(sys)("proofs_check.check_bad")
    bad.main = lambda: 1
    monkeypatch.setitem(sys.modules, "proofs_check.check_bad", bad)
    monkeypatch.setattr(runner, "MODULES", {"X": "check_bad"})
    assert runner.main() == 1
    assert "1 module(s) failed: check_bad" in capsys.readouterr().out


def test_symbol_constructors():
    v = sym_vector("d", 3, positive=True)
    assert v.shape == (3, 1) and all(s.is_positive for s in v)
    assert sym_matrix("S", 2, 3).shape == (2, 3)
