"""One results folder, one sweep spec: refusal of a different spec (or changed metric settings), explicit
appending, the per-session manifest history, bit-for-bit resume after a real kill, environment errors as one
``error:`` line with exit 2, SIGINT, diverged runs, and torch threads per task."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from osdn_theory.cli import app
from osdn_theory.sweeps.evaluate import DIVERGED_R1
from osdn_theory.sweeps.executors import make_executor
from osdn_theory.sweeps.runner import run_sweep
from osdn_theory.sweeps.spec import DEFAULT_METRICS, load_spec, spec_hash
from osdn_theory.sweeps.store import MANIFEST, RESULTS, ResultsStore

from ._processes import start

STREAM = {"family": "piecewise", "T": 96, "K": 4, "V": 2, "segment_len": 32, "condition": 10.0, "noise": 0.1}
SPIKE = {
    "name": "osdn",
    "step": {"name": "normalized", "c": 0.3},
    "s_max": 1.5,
    "apf": {
        "prior": {"name": "running_jacobi", "c": 1 / 6, "ema": 0.9},
        "rate": {"name": "spike_trigger", "fast": 0.5, "slow": 0.95, "tau": 2.0, "warmup": 8},
    },
}
METRICS = dict(DEFAULT_METRICS, window=8, profile_before=4, profile_after=16)


def _toml(path: Path, methods, seeds=(0, 1), stream=STREAM, metrics=METRICS, **top) -> Path:
    import tomli_w

    raw = {"name": path.stem, "seeds": list(seeds), "metrics": metrics, "stream": [stream], "method": methods}
    path.write_text(tomli_w.dumps(dict(raw, **top)))
    return path


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / RESULTS).read_text().splitlines()]


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text())


def _sweep(*args: str):
    r = CliRunner().invoke(app, ["sweep", *args, "--no-progress"])
    return r


def _one_error_line(r) -> str:
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert "Traceback" not in r.output, r.output
    errs = [x for x in lines if x.startswith("error:")]
    assert len(errs) == 1, r.output
    return errs[0]


# ---------------------------------------------------------------------------------------------------------
# one spec per folder


def test_different_metric_settings_are_refused_and_leave_results_untouched(tmp_path):
    a = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    b = _toml(tmp_path / "b.toml", [{"name": "deltanet"}], metrics=dict(METRICS, recovery_tol=0.5))
    out = tmp_path / "out"
    assert _sweep(str(a), "--out", str(out), "--executor", "serial").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    r = _sweep(str(b), "--out", str(out), "--executor", "serial")
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert "another sweep spec" in line and "recovery_tol 0.25 there, 0.5 here" in line
    assert "--append-different-spec" in line
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before  # results.jsonl, manifest, sweep.json, parquet: all untouched
    with pytest.raises(ValueError, match="another sweep spec"):
        run_sweep(b, out, executor="serial", progress=False)


def test_different_runs_are_refused_same_runs_in_another_layout_resume(tmp_path):
    a = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    out = tmp_path / "out"
    run_sweep(a, out, executor="serial", progress=False, max_runs=1)
    more = _toml(tmp_path / "more.toml", [{"name": "deltanet"}, SPIKE])  # a superset: still another spec
    fewer = _toml(tmp_path / "fewer.toml", [{"name": "deltanet"}], seeds=(0,))
    for f in (more, fewer):
        with pytest.raises(ValueError, match="another sweep spec"):
            run_sweep(f, out, executor="serial", progress=False)
    # the same runs spelled differently (name, batch_size) are the same spec: resume
    same = _toml(tmp_path / "same.toml", [{"name": "deltanet"}], batch_size=3)
    assert load_spec(same).spec_hash == load_spec(a).spec_hash
    s = run_sweep(same, out, executor="serial", progress=False)
    assert (s.skipped, s.executed) == (1, 1)


def test_append_different_spec_keeps_each_records_spec_hash(tmp_path):
    a = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    b = _toml(tmp_path / "b.toml", [{"name": "deltanet"}], metrics=dict(METRICS, recovery_tol=0.5))
    out = tmp_path / "out"
    run_sweep(a, out, executor="serial", progress=False)
    r = _sweep(str(b), "--out", str(out), "--executor", "serial", "--append-different-spec")
    assert r.exit_code == 0, r.output
    ha, hb = load_spec(a).spec_hash, load_spec(b).spec_hash
    recs = _lines(out)
    assert [x["spec_hash"] for x in recs] == [ha, ha, hb, hb]
    man = _manifest(out)
    assert man["mixed"] and set(man["specs"]) == {ha, hb} and man["metrics_settings"] is None
    assert man["specs"][ha]["n_ok"] == 2 and man["specs"][hb]["metrics_settings"]["recovery_tol"] == 0.5
    assert man["n_runs"] == 4 and [s["spec_hash"] for s in man["sessions"]] == [ha, hb]
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 4
    import pandas as pd

    assert sorted(pd.read_parquet(out / "results.parquet")["spec_hash"]) == sorted([ha, ha, hb, hb])
    # the folder now holds two specs: even spec a needs the flag to run here again
    with pytest.raises(ValueError, match="another sweep spec"):
        run_sweep(a, out, executor="serial", progress=False)
    assert run_sweep(a, out, executor="serial", progress=False, append_different_spec=True).executed == 0


def test_folder_written_before_spec_hashes_is_checked_by_its_run_hashes(tmp_path):
    a = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    out = tmp_path / "out"
    run_sweep(a, out, executor="serial", progress=False, max_runs=1)
    # rewrite the folder as the previous format wrote it: no spec hash on records, manifest without specs
    recs = _lines(out)
    for x in recs:
        del x["spec_hash"]
    (out / RESULTS).write_text("".join(json.dumps(x) + "\n" for x in recs))
    man = _manifest(out)
    (out / MANIFEST).write_text(json.dumps({"sweep": "a", "runs": man["runs"], "sessions": []}))
    b = _toml(tmp_path / "b.toml", [{"name": "deltanet"}], metrics=dict(METRICS, window=4))
    with pytest.raises(ValueError, match="another sweep spec"):
        run_sweep(b, out, executor="serial", progress=False)
    s = run_sweep(a, out, executor="serial", progress=False)
    assert (s.skipped, s.executed) == (1, 1)
    assert list(_manifest(out)["specs"]) == [load_spec(a).spec_hash]
    assert spec_hash(list(man["runs"])) == load_spec(a).spec_hash


def test_manifest_keeps_every_session(tmp_path):
    a = _toml(tmp_path / "a.toml", [{"name": "deltanet"}, SPIKE])
    out = tmp_path / "out"
    run_sweep(a, out, executor="serial", progress=False, max_runs=1)
    run_sweep(a, out, executor="serial", progress=False)
    man = _manifest(out)
    s1, s2 = man["sessions"]
    for s in (s1, s2):
        assert s["state"] == "finished" and s["spec_hash"] == load_spec(a).spec_hash
        assert s["executor"] == "serial" and s["threads"] == 1 and s["code_version"]["package"]
        assert s["started"] <= s["finished"] and s["runs"] == 4
    assert (s1["planned"], s1["executed"], s2["skipped"], s2["executed"]) == (1, 1, 1, 3)
    assert man["n_ok"] == 4 and man["spec_hash"] == load_spec(a).spec_hash


# ---------------------------------------------------------------------------------------------------------
# kill and resume


@pytest.mark.slow
def test_killed_sweep_resumes_bit_for_bit(tmp_path):
    """SIGKILL the real CLI mid-sweep, rerun the same command: the records equal an uninterrupted sweep's
    exactly (metrics and series, float for float), and the killed session is marked as such."""
    methods = [dict(SPIKE, s_max=x) for x in (1.2, 1.5, 1.8)]
    stream = dict(STREAM, T=1200, segment_len=400)
    f = _toml(tmp_path / "s.toml", methods, seeds=(0, 1, 2), stream=stream)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "osdn_theory.cli", "sweep", str(f), "--out", str(out)]
    cmd += ["--executor", "serial", "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 120:
        if (out / RESULTS).exists() and (out / RESULTS).read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_before = (out / RESULTS).read_bytes().count(b"\n")
    assert 2 <= n_before < 9, "the sweep must be killed mid-way for this test to mean anything"
    assert _manifest(out)["sessions"][-1]["state"] == "running"
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    sessions = _manifest(out)["sessions"]
    assert [s["state"] for s in sessions] == ["killed", "finished"]
    ref = tmp_path / "ref"
    run_sweep(f, ref, executor="serial", batch_size=1, progress=False)
    got = {r["hash"]: r for r in _lines(out)}
    want = {r["hash"]: r for r in _lines(ref)}
    assert set(got) == set(want) and len(got) == 9
    for h, r in want.items():
        assert got[h]["metrics"] == r["metrics"]  # exact equality (NaN-free metrics of these runs)
        assert got[h]["series"] == r["series"]


# ---------------------------------------------------------------------------------------------------------
# environment errors and signals


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_unreachable_scheduler_is_one_error_line(tmp_path):
    f = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    out = tmp_path / "out"
    addr = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.time()
    r = _sweep(str(f), "--out", str(out), "--executor", "dask", "--scheduler", addr, "--connect-timeout", "1")
    assert time.time() - t0 < 30
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert "cannot reach the Dask scheduler" in line and addr in line
    s = _manifest(out)["sessions"][-1]
    assert s["state"] == "error" and "cannot reach" in s["error"] and s["finished"]
    assert not (out / RESULTS).exists()


@pytest.mark.slow
def test_no_live_workers_is_one_error_line(tmp_path):
    from dask.distributed import LocalCluster

    f = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    out = tmp_path / "out"
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        r = _sweep(
            str(f),
            "--out",
            str(out),
            "--executor",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
            "--worker-timeout",
            "1",
        )
    assert r.exit_code == 2
    assert "no live Dask worker" in _one_error_line(r)
    assert _manifest(out)["sessions"][-1]["state"] == "error"


def test_full_disk_is_one_error_line_and_the_manifest_says_error(tmp_path, monkeypatch):
    f = _toml(tmp_path / "a.toml", [{"name": "deltanet"}, SPIKE])
    out = tmp_path / "out"
    real = ResultsStore.append
    calls = []

    def append(self, record):
        calls.append(record["hash"])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real(self, record)

    monkeypatch.setattr(ResultsStore, "append", append)
    r = _sweep(str(f), "--out", str(out), "--executor", "serial")
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert "No space left on device" in line and "rerun the same command" in line
    s = _manifest(out)["sessions"][-1]
    assert s["state"] == "error" and "No space left" in s["error"] and s["executed"] == 1
    monkeypatch.setattr(ResultsStore, "append", real)
    s = run_sweep(f, out, executor="serial", progress=False)  # space is back: resume
    assert (s.skipped, s.executed) == (1, 3)


def test_unwritable_folder_is_one_error_line(tmp_path, monkeypatch):
    f = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    (tmp_path / "file").write_text("x")
    r = _sweep(str(f), "--out", str(tmp_path / "file" / "sub"), "--executor", "serial")
    assert r.exit_code == 2 and "cannot write to" in _one_error_line(r)
    # a folder the sweep may not write (simulated: the tests may run as root, which ignores permissions)
    import osdn_theory.sweeps.store as store_mod

    def denied(path, obj):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(store_mod, "_atomic_write_json", denied)
    r = _sweep(str(f), "--out", str(tmp_path / "ro"), "--executor", "serial")
    assert r.exit_code == 2
    line = _one_error_line(r)
    assert "Permission denied" in line and "make it writable" in line


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_is_one_error_line(tmp_path):
    f = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        r = _sweep(str(f), "--out", str(out), "--executor", "serial")
    finally:
        out.chmod(0o700)
    assert r.exit_code == 2 and "Permission denied" in _one_error_line(r)


@pytest.mark.slow
def test_sigint_says_how_to_resume_and_the_manifest_says_interrupted(tmp_path):
    methods = [dict(SPIKE, s_max=x) for x in (1.2, 1.5, 1.8)]
    f = _toml(tmp_path / "s.toml", methods, seeds=(0, 1), stream=dict(STREAM, T=1200, segment_len=400))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "osdn_theory.cli", "sweep", str(f), "--out", str(out)]
    cmd += ["--executor", "serial", "--batch-size", "1", "--no-progress"]
    proc = start(cmd)
    t0 = time.time()
    while time.time() - t0 < 120 and not (
        (out / RESULTS).exists() and (out / RESULTS).read_bytes().count(b"\n") >= 1
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "rerun the same command" in err and "Traceback" not in err
    assert _manifest(out)["sessions"][-1]["state"] == "interrupted"
    n = (out / RESULTS).read_bytes().count(b"\n")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and f"{n} already done" in res.stdout


# ---------------------------------------------------------------------------------------------------------
# arguments that have no effect, threads, diverged runs


def test_workers_rejected_where_it_has_no_effect(tmp_path):
    f = _toml(tmp_path / "a.toml", [{"name": "deltanet"}])
    r = _sweep(str(f), "--out", str(tmp_path / "o"), "--executor", "serial", "--workers", "2")
    assert r.exit_code == 2 and "workers: has no effect with executor 'serial'" in _one_error_line(r)
    r = _sweep(
        str(f),
        "--out",
        str(tmp_path / "o"),
        "--executor",
        "dask",
        "--scheduler",
        "tcp://x:1",
        "--workers",
        "2",
    )
    assert r.exit_code == 2 and "workers: has no effect with a Dask scheduler" in _one_error_line(r)
    with pytest.raises(ValueError, match="threads"):
        make_executor("serial", threads=0)
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_serial_tasks_run_with_one_torch_thread_unless_told_otherwise():
    old = torch.get_num_threads()
    for threads in (1, 2):
        ex = make_executor("serial", threads=threads)
        fut = ex.submit(torch.get_num_threads)
        assert next(iter(ex.as_completed([fut]))).result() == threads
        assert torch.get_num_threads() == old  # the caller's setting is restored


def test_diverging_memory_is_recorded_as_diverged(tmp_path):
    f = _toml(tmp_path / "a.toml", [{"name": "osdn"}, {"name": "deltanet"}], seeds=(0,))  # no s_max
    out = tmp_path / "out"
    r = _sweep(str(f), "--out", str(out), "--executor", "serial")
    assert r.exit_code == 0, r.output
    assert "1 diverged" in r.output and "recorded as diverged" in r.output
    recs = {x["config"]["method"]["name"]: x for x in _lines(out)}
    d = recs["osdn"]
    assert d["status"] == "diverged" and d["metrics"]["r1"] > DIVERGED_R1 and "R1" in d["diverged"]
    assert recs["deltanet"]["status"] == "ok"
    man = _manifest(out)
    assert man["n_diverged"] == 1 and man["n_ok"] == 1
    s = run_sweep(f, out, executor="serial", progress=False, retry_failed=True)
    assert s.executed == 0  # diverged is a finished result, not a failure to retry


@pytest.mark.slow
def test_sigint_to_a_pool_sweep_leaves_no_workers_and_a_true_manifest(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group (the sweep and its pool workers)."""
    import psutil

    methods = [dict(SPIKE, s_max=x) for x in (1.2, 1.5, 1.8, 1.9)]
    f = _toml(tmp_path / "s.toml", methods, seeds=(0, 1, 2), stream=dict(STREAM, T=1500, segment_len=500))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "osdn_theory.cli", "sweep", str(f), "--out", str(out), "--workers", "2"]
    cmd += ["--batch-size", "1", "--no-progress"]
    proc = start(cmd, new_session=True)
    t0 = time.time()
    while time.time() - t0 < 120 and not (
        (out / RESULTS).exists() and (out / RESULTS).read_bytes().count(b"\n") >= 1
    ):
        time.sleep(0.01)
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "rerun the same command" in err
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive, f"pool workers outlived the interrupted sweep: {[p.pid for p in alive]}"
    s = _manifest(out)["sessions"][-1]
    assert s["state"] == "interrupted" and s["executed"] == (out / RESULTS).read_bytes().count(b"\n")


@pytest.mark.parametrize("after", [1, 3])
def test_interrupt_between_a_records_write_and_its_count_keeps_the_manifest_true(
    tmp_path, monkeypatch, after
):
    """Ctrl-C can land after a record's line is fsync'd and before the session counts it (the race the pool
    SIGINT test once hit: manifest ``executed`` 0, one line on disk). The manifest of an interrupted session
    counts the lines this session added to ``results.jsonl``, so it says what is on disk; the earlier session's
    lines are not counted again."""
    f = _toml(tmp_path / "s.toml", [{"name": "deltanet"}, {"name": "token_local"}], seeds=(0, 1, 2))
    out = tmp_path / "out"
    run_sweep(load_spec(f), out, executor="serial", progress=False, max_runs=2)  # an earlier session: 2 lines
    real, calls = ResultsStore.append, []

    def append_then_interrupt(self, record):
        real(self, record)
        calls.append(1)
        if len(calls) == after:
            raise KeyboardInterrupt  # after the fsync, before the runner's counter moves

    monkeypatch.setattr(ResultsStore, "append", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_spec(f), out, executor="serial", progress=False)
    s = _manifest(out)["sessions"][-1]
    assert s["state"] == "interrupted"
    assert s["executed"] == after == len(_lines(out)) - 2
    assert s["failed"] == 0


def test_config_hashes_are_computed_once_per_run(tmp_path, monkeypatch):
    """Stamping records with the spec hash must not rehash every run per record (that was quadratic)."""
    import osdn_theory.sweeps.spec as spec_mod

    f = _toml(tmp_path / "a.toml", [{"name": "deltanet"}, {"name": "token_local"}], seeds=list(range(6)))
    spec = load_spec(f)
    calls = []
    real = spec_mod.config_hash
    monkeypatch.setattr(spec_mod, "config_hash", lambda obj: calls.append(1) or real(obj))
    run_sweep(spec, tmp_path / "out", executor="serial", progress=False)
    assert len(calls) <= 40, f"{len(calls)} config hashes for a sweep of {len(spec.runs)} runs"
