"""Results store: crash-safe JSON lines, truncated-tail recovery, Parquet table, manifest."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from osdn_theory.sweeps.store import RESULTS, ResultsStore, code_version, machine_info, records_to_frame


def _rec(h, status="ok", **metrics):
    return {
        "hash": h,
        "status": status,
        "config": {"stream": {"family": "piecewise", "T": 8}, "method": {"name": "deltanet"}, "seed": 0},
        "metrics": metrics or {"r1": 0.5},
        "series": {"cal_profile": [1.0, 2.0]},
    }


def test_append_reopen_and_last_record_wins(tmp_path):
    with ResultsStore(tmp_path) as st:
        st.append(_rec("a"))
        st.append(_rec("b", "failed"))
        st.append(_rec("b", r1=0.25))
    st2 = ResultsStore(tmp_path)
    assert st2.done() == {"a", "b"}
    assert st2.records["b"]["status"] == "ok" and st2.records["b"]["metrics"]["r1"] == 0.25
    assert st2.done(include_failed=False) == {"a", "b"}
    lines = (tmp_path / RESULTS).read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["hash"] for line in lines)


def test_truncated_last_line_is_dropped_and_file_repaired(tmp_path):
    with ResultsStore(tmp_path) as st:
        st.append(_rec("a"))
        st.append(_rec("b"))
    path = tmp_path / RESULTS
    good = path.read_bytes()
    path.write_bytes(good + b'{"hash": "c", "status": "o')  # killed mid-write
    st = ResultsStore(tmp_path)
    assert st.done() == {"a", "b"}
    assert st.dropped_tail == len(b'{"hash": "c", "status": "o')
    assert path.read_bytes() == good  # repaired: appending continues on a clean line
    st.append(_rec("c"))
    st.close()
    assert ResultsStore(tmp_path).done() == {"a", "b", "c"}


def test_reader_ignores_but_never_truncates_an_unfinished_line(tmp_path):
    """A reader (plots, notebooks) may open the folder while a sweep is writing its next line: it must not cut
    that line, or the writer's remaining bytes land after the cut and corrupt a middle line."""
    with ResultsStore(tmp_path) as st:
        st.append(_rec("a"))
    path = tmp_path / RESULTS
    partial = path.read_bytes() + b'{"hash": "b", "status": "o'
    path.write_bytes(partial)
    ro = ResultsStore(tmp_path, repair=False)
    assert ro.done() == {"a"} and ro.dropped_tail > 0
    assert path.read_bytes() == partial  # untouched
    with pytest.raises(ValueError, match="read-only"):
        ro.append(_rec("c"))
    # the writer finishes its line: the file is valid and holds both records
    path.write_bytes(partial + b'k", "config": {}}\n')
    assert ResultsStore(tmp_path).done() == {"a", "b"}
    with pytest.raises(ValueError, match="repair"):
        ResultsStore(tmp_path, repair=1)


def test_corrupt_last_line_with_newline_is_dropped(tmp_path):
    with ResultsStore(tmp_path) as st:
        st.append(_rec("a"))
    path = tmp_path / RESULTS
    path.write_bytes(path.read_bytes() + b'{"hash": "z"\n')
    assert ResultsStore(tmp_path).done() == {"a"}


def test_corrupt_middle_line_is_an_error(tmp_path):
    with ResultsStore(tmp_path) as st:
        st.append(_rec("a"))
    path = tmp_path / RESULTS
    path.write_bytes(b"garbage\n" + path.read_bytes())
    with pytest.raises(ValueError, match="line 1"):
        ResultsStore(tmp_path)


def test_bad_records_and_paths(tmp_path):
    st = ResultsStore(tmp_path / "new" / "dir")
    with pytest.raises(ValueError, match="record"):
        st.append({"status": "ok"})
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="out"):
        ResultsStore(f)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / RESULTS).write_text('{"no_hash": 1}\n{"hash": "a", "status": "ok"}\n')
    with pytest.raises(ValueError, match="'hash' and 'status'"):
        ResultsStore(tmp_path / "x")


def test_parquet_roundtrip_and_manifest(tmp_path):
    with ResultsStore(tmp_path) as st:
        st.append(_rec("a", r1=0.1))
        st.append(_rec("b", r1=0.2))
        p = st.write_parquet(["b"])
        st.write_manifest({"n": 1})
    df = pd.read_parquet(p)
    assert df["hash"].tolist() == ["b"] and df["r1"].tolist() == [0.2]
    assert df["stream.family"].tolist() == ["piecewise"] and list(df["series.cal_profile"][0]) == [1.0, 2.0]
    assert ResultsStore(tmp_path).read_manifest() == {"n": 1}
    frame = records_to_frame([_rec("a"), {**_rec("b"), "config": {"method": {"name": "osdn", "x": [1]}}}])
    assert frame["method.x"].tolist()[1] == "[1]"  # mixed-type config columns are stringified for Parquet


def test_code_version_and_machine():
    cv = code_version()
    assert cv["package"]
    assert cv["git_commit"] is None or len(cv["git_commit"]) == 40
    m = machine_info()
    assert m["cpu_count"] >= 1 and m["torch"]
