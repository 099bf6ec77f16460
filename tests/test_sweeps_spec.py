"""Sweep files: parsing, grid expansion, validation errors that name the key, stable config hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from osdn_theory.sweeps.spec import (
    DEFAULT_METRICS,
    canonical_json,
    config_hash,
    expand_grid,
    load_spec,
    method_label,
    parse_spec,
)

STREAM = {"family": "piecewise", "T": 64, "K": 4, "V": 2, "segment_len": 32}
OSDN = {
    "name": "osdn",
    "step": {"name": "normalized", "c": 0.2},
    "apf": {"prior": {"name": "ones"}, "rate": {"name": "constant_forgetting", "lam": 0.01}},
}


def _raw(**changes):
    raw = {
        "name": "t",
        "seeds": [0, 1],
        "stream": [dict(STREAM)],
        "method": [{"name": "deltanet"}, dict(OSDN)],
    }
    raw.update(changes)
    return raw


def test_cartesian_product_of_streams_methods_seeds():
    spec = parse_spec(_raw())
    assert len(spec.runs) == 1 * 2 * 2
    assert sorted({r.seed for r in spec.runs}) == [0, 1]
    assert spec.metrics == DEFAULT_METRICS
    assert len(set(spec.hashes)) == len(spec.runs)


def test_entry_grid_and_top_level_grid():
    m = dict(OSDN, grid={"apf.rate.lam": [0.0, 0.1, 0.2], "step.c": [0.1, 0.5]})
    spec = parse_spec(_raw(method=[m], grid={"stream.segment_len": [32, 64]}))
    assert len(spec.runs) == 3 * 2 * 2 * 2
    lams = sorted({r.method["apf"]["rate"]["lam"] for r in spec.runs})
    assert lams == [0.0, 0.1, 0.2]
    assert sorted({r.stream["segment_len"] for r in spec.runs}) == [32, 64]
    assert all("grid" not in r.method for r in spec.runs)


def test_expand_grid_order_last_key_fastest():
    out = expand_grid({"a": {"b": 0}}, {"a.b": [1, 2], "c": ["x", "y"]}, "w")
    assert [(o["a"]["b"], o["c"]) for o in out] == [(1, "x"), (1, "y"), (2, "x"), (2, "y")]


def test_explicit_runs_and_duplicates_kept_once():
    run = {"stream": dict(STREAM), "method": {"name": "deltanet"}, "seed": 3}
    spec = parse_spec({"run": [run, dict(run)]})
    assert len(spec.runs) == 1 and spec.runs[0].seed == 3


def test_config_hash_is_canonical_and_stable():
    a = {"b": 1.5, "a": [1, {"y": 2, "x": 1}]}
    b = {"a": [1, {"x": 1, "y": 2}], "b": 1.5}
    assert canonical_json(a) == canonical_json(b) == '{"a":[1,{"x":1,"y":2}],"b":1.5}'
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({"a": [1, {"x": 1, "y": 2}], "b": 1.25})
    # the definition, pinned: SHA-256 of the canonical JSON bytes (same on every machine and version)
    assert (
        config_hash({"seed": 0, "m": {"lam": 0.1}})
        == hashlib.sha256(b'{"m":{"lam":0.1},"seed":0}').hexdigest()
    )


def test_same_file_same_hashes(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text(
        'name = "x"\nseeds = {start = 2, count = 2}\n[[stream]]\nfamily = "piecewise"\nT = 64\nK = 4\n'
        'segment_len = 32\n[[method]]\nname = "osdn"\nstep = {name = "normalized", c = 0.3}\n'
        'grid = {"step.c" = [0.1, 0.3]}\n'
    )
    s1, s2 = load_spec(p), load_spec(p)
    assert s1.hashes == s2.hashes and len(s1.runs) == 4
    assert sorted({r.seed for r in s1.runs}) == [2, 3]


def test_python_sweep_file(tmp_path):
    p = tmp_path / "s.py"
    p.write_text(f"SWEEP = {json.dumps(_raw())!s}\n")
    assert len(load_spec(p).runs) == 4
    q = tmp_path / "bad.py"
    q.write_text("X = 1\n")
    with pytest.raises(ValueError, match="SWEEP"):
        load_spec(q)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"seeds": []}, "seeds"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"seeds": [-1]}, "seeds"),
        ({"seeds": {"count": 0}}, "seeds"),
        ({"bogus": 1}, "bogus"),
        ({"batch_size": 0}, "batch_size"),
        ({"metrics": {"window": 0}}, "metrics.window"),
        ({"metrics": {"recovery_tol": 1.5}}, "metrics.recovery_tol"),
        ({"metrics": {"nope": 1}}, "metrics.nope"),
        ({"stream": [dict(STREAM, family="nope")]}, r"stream\[0\].*family"),
        ({"stream": [dict(STREAM, T=0)]}, r"stream\[0\].*T"),
        ({"stream": [dict(STREAM, colour=1)]}, r"stream\[0\].*colour"),
        ({"method": [{"name": "magic"}]}, r"method\[0\]\.name"),
        ({"method": [{"name": "deltanet", "lam": 1}]}, r"method\[0\].*lam"),
        ({"method": [{"name": "deltanet", "s_max": 2.5}]}, r"method\[0\].*s_max"),
        ({"method": [dict(OSDN, rule="next")]}, r"method\[0\].*rule"),
        ({"method": [dict(OSDN, step={"name": "warp"})]}, r"method\[0\].*step"),
        ({"method": [dict(OSDN, d_init=-1.0)]}, r"method\[0\].*d_init"),
        (
            {"method": [dict(OSDN, apf={"rate": {"name": "constant_forgetting", "lam": 2.0}})]},
            r"method\[0\].*lam",
        ),
        ({"method": [dict(OSDN, grid={"apf.rate.lam": []})]}, r"method\[0\]\.grid\.apf\.rate\.lam"),
        ({"method": [dict(OSDN, grid={"apf.rate.lam": [0.1, 7.0]})]}, r"method\[0\].*lam"),
        ({"grid": {"seed": [1, 2]}}, r"grid\.seed"),
        ({"stream": []}, "stream"),
        ({"method": "deltanet"}, "method"),
    ],
)
def test_validation_errors_name_the_key(changes, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(_raw(**changes))


def test_no_runs_and_bad_files(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        parse_spec({"name": "empty"})
    with pytest.raises(ValueError, match="sweep file"):
        load_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seeds = [\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_spec(bad)
    other = tmp_path / "s.yaml"
    other.write_text("x: 1\n")
    with pytest.raises(ValueError, match="suffix"):
        load_spec(other)
    with pytest.raises(ValueError, match="finite"):
        parse_spec(_raw(method=[dict(OSDN, d_init=float("nan"))]))


def test_method_label_rejects_a_non_table():
    with pytest.raises(ValueError, match="method: expected a method table"):
        method_label("osdn")


def test_method_labels():
    assert method_label({"name": "deltanet"}) == "deltanet"
    assert method_label({"name": "rls", "gamma": 0.99}) == "rls(gamma=0.99)"
    lab = method_label(dict(OSDN, s_max=1.5))
    assert lab == "osdn[ratio,normalized(c=0.2),constant_forgetting(lam=0.01),prior=ones(),s_max=1.5]"


def test_example_sweep_files_parse():
    root = Path(__file__).resolve().parents[1] / "sweeps"
    files = sorted(root.glob("*.toml")) + sorted(root.glob("*.py"))
    assert {f.name for f in files} >= {"apf_piecewise.toml", "recall_mqar.toml", "shift_families.py"}
    import tomllib

    from osdn_theory.train.spec import load_train_spec

    n_train = 0
    for f in files:
        if f.suffix == ".toml" and "train" in tomllib.loads(f.read_text()):  # an `osdn train` file
            n_train += 1
            assert load_train_spec(f).runs, f
            continue
        spec = load_spec(f)
        assert spec.runs and len(set(spec.hashes)) == len(spec.runs)
    assert n_train >= 1  # the recall lab's training files are checked by their own loader


def test_the_module_docstring_example_parses():
    """The TOML example in ``osdn_theory.sweeps.spec``'s docstring is a valid sweep (it used keys the method
    registry rejects)."""
    import textwrap

    import tomllib

    import osdn_theory.sweeps.spec as spec_mod

    doc = spec_mod.__doc__
    block = doc[doc.index("Example (TOML)::") + len("Example (TOML)::") : doc.index("A Python sweep file")]
    spec = parse_spec(tomllib.loads(textwrap.dedent(block)))
    assert spec.name == "apf_demo" and len(spec.runs) == 3 * (1 + 3)
