"""The documents stay in step with the code: every file and claim label the claims table names exists."""

from __future__ import annotations

import re
from pathlib import Path

from osdn_theory.claims import labels
from osdn_theory.tolerances import EXACT_FLOAT64

ROOT = Path(__file__).resolve().parents[1]


def _claims_table() -> list[list[str]]:
    text = (ROOT / "docs" / "theory.md").read_text()
    section = text[text.index("## 11. Claims table") : text.index("## 12.")]
    rows = [r for r in section.splitlines() if r.startswith("| ") and not r.startswith("| Label")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows]


def test_claims_table_names_existing_files_and_labels():
    rows = _claims_table()
    assert len(rows) >= 9
    registered = set(labels())
    named_labels: set[str] = set()
    for label_cell, _statement, sym, num, tests, verdict in rows:
        assert verdict, f"{label_cell}: the claims table must state the verdict statistic"
        named_labels.update(x.strip() for x in label_cell.split(","))
        for f in re.findall(r"`([\w./-]+\.py)`", sym):
            assert (ROOT / "proofs_check" / f).is_file(), (
                f"proofs_check/{f} named in docs/theory.md is missing"
            )
        for f in re.findall(r"`([\w./-]+\.py)`", num):
            assert (ROOT / "osdn_theory" / "claims" / f).is_file(), (
                f"claims/{f} named in docs/theory.md is missing"
            )
        for f in re.findall(r"`([\w./-]+\.py)`", tests):
            assert (ROOT / "tests" / f).is_file(), f"tests/{f} named in docs/theory.md is missing"
    assert named_labels == registered, (
        f"claims table and registry differ: only in docs {sorted(named_labels - registered)}, "
        f"only in registry {sorted(registered - named_labels)}"
    )


def test_every_proof_script_is_in_the_claims_table():
    table = (ROOT / "docs" / "theory.md").read_text()
    for f in sorted((ROOT / "proofs_check").glob("c[0-9]*_*.py")):
        assert f"`{f.name}`" in table, f"{f.name} is not referenced in docs/theory.md's claims table"


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "python -m pytest -n 2" in readme and "osdn verify" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -n 2" in ci, ".ci/run must run the README's test command"
    assert "\nosdn verify " in ci, ".ci/run must run the README's main job (the claims report)"
    for path in re.findall(r"`((?:sweeps|benchmarks|notebooks|docs)/[\w./-]+\.(?:toml|py|md))`", readme):
        assert (ROOT / path).exists(), f"README names {path}, which does not exist"


def test_readme_tour_runs(capsys):
    """The README's 30-second tour is executed as written and prints a chunk-vs-recurrence error ≤ 1e-12."""
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## A 30-second tour") :]
    code = tour[tour.index("```python") + len("```python") : tour.index("```", tour.index("```python") + 9)]
    exec(compile(code, "README.md (tour)", "exec"), {})
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed <= EXACT_FLOAT64
