"""Every notebook (jupytext percent-format source in notebooks/*.py) runs top to bottom in quick mode."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9]*.py"))


def test_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == [
        "01_super_geometric",
        "02_contraction",
        "03_apf_sweeps",
        "04_kernel_vs_reference",
        "05_recall",
        "06_trained_recall",
    ]


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that runs this interpreter, found first via JUPYTER_PATH (so the notebooks import the
    osdn_theory under test, whatever other 'python3' kernel the machine has registered)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "osdn-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "osdn test", "language": "python"})
    )
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(root) + (os.pathsep + old if old else "")
    yield "osdn-test"
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


def _execute(path: Path, kernel_name: str, monkeypatch, workdir: Path):
    import jupytext  # the 'notebooks' extra, installed by .ci/run: a missing one must fail, not skip
    from nbclient import NotebookClient

    nb = jupytext.read(path)
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1 and "FULL = False" in params[0].source, "quick mode must be the default"
    import osdn_theory

    checkout = path.parents[1]
    if Path(osdn_theory.__file__).resolve().is_relative_to(checkout):
        # the tests import the checkout: the kernel must too (an installed copy, as CI tests, needs nothing)
        monkeypatch.setenv("PYTHONPATH", str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    client = NotebookClient(
        nb, timeout=240, kernel_name=kernel_name, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return nb


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [p for p in NOTEBOOKS if p.stem in ("03_apf_sweeps", "04_kernel_vs_reference", "06_trained_recall")],
    ids=lambda p: p.stem,
)
def test_notebook_runs_from_any_working_folder(path, kernel_name, monkeypatch, tmp_path):
    """Notebooks that read repository files find them (or do without) from a folder outside the checkout;
    they used to stop with a bare StopIteration looking for pyproject.toml. Notebook 06 finds no results there
    and runs its CPU smoke (inside the checkout it reads the committed sweep instead)."""
    nb = _execute(path, kernel_name, monkeypatch, tmp_path)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors, [e.get("ename") for e in errors]
    if path.stem == "06_trained_recall":
        text = "".join(
            o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
        )
        assert "CPU smoke: 6 runs (0 failed)" in text


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_name, monkeypatch):
    nb = _execute(path, kernel_name, monkeypatch, path.parent)
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
    images = sum(
        1
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    )
    assert images >= 1, "each notebook must show at least one figure"
    if path.stem == "06_trained_recall":  # inside the checkout it reads GPU results (the committed sweep)
        text = "".join(
            o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
        )
        assert "finished runs in" in text and "CPU smoke" not in text
