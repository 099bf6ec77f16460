"""``osdn train``: training files (grids, one-line errors naming the key), the schedule, and a two-step CPU
training smoke through the command line that resumes after an interruption."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from osdn_theory.cli import app
from osdn_theory.tolerances import rtol
from osdn_theory.train import load_train_results, lr_at, parse_train_spec, summary_table, train_batch
from osdn_theory.train.spec import load_train_spec, optim_settings

from ._processes import start

SMOKE = """
name = "smoke"
seeds = [0]

[train]
steps = 2
batch_size = 4
eval_every = 1
log_every = 1

[metrics]
eval_examples = 8

[[model]]
mode = "reference"
hidden_size = 16
num_layers = 1
num_heads = 1
mlp_ratio = 1.0
grid = {d_mode = ["none", "rule", "learned"]}

[[task]]
name = "mqar"
vocab_size = 16
num_kv_pairs = 2
seq_len = 8

[[optim]]
lr = 1e-2
warmup_steps = 1
"""


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these tiny models run no faster on more, and a loaded shared machine runs them far
    slower (measured: 0.8 s alone, 10-12 s with 2 threads at load 8 on 2 cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _raw(**over):
    raw = {
        "seeds": [0, 1],
        "model": [{"mode": "reference", "grid": {"d_mode": ["none", "rule"]}}],
        "task": [{"name": "mqar", "vocab_size": 32, "seq_len": 24, "grid": {"num_kv_pairs": [2, 4]}}],
        "optim": [{"lr": 1e-3}],
    }
    raw.update(over)
    return raw


def test_grid_expands_and_hashes_are_stable():
    spec = parse_train_spec(_raw())
    assert len(spec.runs) == 2 * 2 * 2
    again = parse_train_spec(_raw())
    assert spec.spec_hash == again.spec_hash and spec.hashes == again.hashes
    labels = {r.label() for r in spec.runs}
    assert "mqar(kv=4,T=24)/osdn-rule(h=64)/seed1" in labels
    more = parse_train_spec(_raw(grid={"train.steps": [10, 20]}))
    assert len(more.runs) == 16


def test_runs_are_ordered_seed_first():
    """Seeds are the outermost loop of the run order, so that a sweep cut short holds whole replicates (every
    model and task cell of seed 0 before any of seed 1); within a seed, the cells keep the file's order."""
    spec = parse_train_spec(_raw())
    assert [r.seed for r in spec.runs] == [0, 0, 0, 0, 1, 1, 1, 1]
    first = [(r.model["d_mode"], r.task["num_kv_pairs"]) for r in spec.runs[:4]]
    assert first == [("none", 2), ("none", 4), ("rule", 2), ("rule", 4)]


@pytest.mark.parametrize(
    "over, key",
    [
        ({"epochs": 3}, "epochs"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"train": {"precision": "fp8"}}, "train.precision"),
        ({"train": {"stepz": 3}}, "train.stepz"),
        ({"metrics": {"eval_examples": -1}}, "metrics.eval_examples"),
        ({"model": [{"hidden_size": 30, "num_heads": 4}]}, "model[0].num_heads"),
        ({"model": [{"d_mode": "diag"}]}, "model[0].d_mode"),
        ({"task": [{"name": "mqar", "num_kv_pairs": 16, "seq_len": 20}]}, "task[0].seq_len"),
        ({"optim": [{"lr": 0}]}, "optim[0].lr"),
        ({"optim": [{"name": "sgd"}]}, "optim[0].name"),
        ({"grid": {"steps": [1]}}, "grid.steps"),
        ({"seeds": [0, 0]}, "seeds"),
    ],
)
def test_bad_training_files_name_the_key(over, key):
    with pytest.raises(ValueError) as err:
        parse_train_spec(_raw(**over))
    msg = str(err.value)
    assert msg.startswith(key) and "\n" not in msg, msg


SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.mark.parametrize("companion", ["recall_mqar_gpu_peers", "recall_mqar_gpu_clip"])
def test_companion_gpu_sweeps_share_the_main_grid(companion):
    """The peer and clip files are compared with ``recall_mqar_gpu.toml`` run by run, so they differ from it in
    their model tables and name only (the peers file once kept 2000 steps after the main file went to 1000)."""
    main = load_train_spec(SWEEPS / "recall_mqar_gpu.toml")
    other = load_train_spec(SWEEPS / f"{companion}.toml")
    same = {k: v for k, v in main.raw.items() if k not in ("model", "name")}
    assert {k: v for k, v in other.raw.items() if k not in ("model", "name")} == same
    for key in ("num_layers", "num_heads"):
        assert {m[key] for m in other.raw["model"]} == {m[key] for m in main.raw["model"]}, key
    widths = {w for m in main.raw["model"] for w in m["grid"]["hidden_size"]}
    assert {w for m in other.raw["model"] for w in m["grid"]["hidden_size"]} == widths


def _cell_rows(model, lr, accs, r1s, statuses=None):
    statuses = statuses or ["ok"] * len(accs)
    return [
        {"task": "mqar", "hidden_size": 64, "num_kv_pairs": 16, "seq_len": 256, "model": model, "lr": lr,
         "seed": seed, "accuracy": a, "r1_mean": r, "status": st}
        for seed, (a, r, st) in enumerate(zip(accs, r1s, statuses, strict=True))
    ]  # fmt: skip


def test_summary_counts_divergence_as_failure_and_compares_means():
    """Diverged runs count as accuracy 0 (in the mean and in the choice of learning rate), the relative change is
    a ratio of seed means and is left out when the baseline is at chance level, R1's change is over finished
    runs only."""
    import pandas as pd

    from osdn_theory.train.results import REL_CHANGE_FLOOR

    nan = float("nan")
    rows = (
        _cell_rows("deltanet", 1e-3, [0.9, 0.0, 0.6], [0.2, 0.4, 0.3])
        + _cell_rows("deltanet", 3e-3, [0.1, 0.1, 0.1], [0.5, 0.5, 0.5])
        # at 3e-3 the finished runs average 0.95 but one of three diverged: 0.633 < 0.7 at 1e-3
        + _cell_rows("osdn-rule", 3e-3, [0.95, 0.95, nan], [0.1, 0.1, nan], ["ok", "ok", "diverged"])
        + _cell_rows("osdn-rule", 1e-3, [0.7, 0.7, 0.7], [0.3, 0.3, 0.6])
    )
    t = summary_table(pd.DataFrame(rows)).set_index("model")
    base, rule = t.loc["deltanet"], t.loc["osdn-rule"]
    assert base["lr"] == 1e-3 and rule["lr"] == 1e-3
    assert (base["runs"], base["diverged"], base["learned"]) == (3, 0, 2)
    assert base["mean"] == pytest.approx(0.5) and (base["min"], base["max"]) == (0.0, 0.9)
    assert rule["rel_change"] == pytest.approx(
        0.7 / 0.5 - 1
    )  # ratio of means, not the mean of per-seed ratios
    assert rule["r1_rel_change"] == pytest.approx(0.4 / 0.3 - 1)
    # the rule at 3e-3 alone: the diverged seed is a 0, not a missing value
    t3 = summary_table(pd.DataFrame([r for r in rows if r["model"] == "deltanet" or r["lr"] == 3e-3]))
    r3 = t3.set_index("model").loc["osdn-rule"]
    assert (r3["runs"], r3["diverged"], r3["learned"]) == (3, 1, 2)
    assert r3["mean"] == pytest.approx(1.9 / 3) and r3["min"] == 0.0
    assert r3["r1_rel_change"] == pytest.approx(0.1 / 0.3 - 1)  # over the two seeds both finished
    # a baseline at chance level: no relative change
    low = [dict(r, accuracy=REL_CHANGE_FLOOR / 2) if r["model"] == "deltanet" else r for r in rows]
    assert summary_table(pd.DataFrame(low))["rel_change"].isna().all()


@pytest.mark.parametrize(
    "folder",
    sorted(p.parent.name for p in (SWEEPS.parent / "notebooks" / "data").glob("recall_*/results.jsonl")),
)
def test_committed_summaries_are_what_the_committed_runs_give(folder):
    """Each committed results folder's ``summary.csv`` is :func:`summary_table` of its own runs, so a change to
    the summary (or to the runs) cannot leave a stale table in the repository."""
    import pandas as pd

    out = SWEEPS.parent / "notebooks" / "data" / folder
    got = summary_table(load_train_results(out)).reset_index(drop=True)
    committed = pd.read_csv(out / "summary.csv")
    assert list(committed.columns) == list(got.columns)
    pd.testing.assert_frame_equal(committed, got, check_dtype=False, rtol=1e-12)


def test_learning_rate_schedule():
    o = optim_settings({"lr": 1.0, "warmup_steps": 4, "min_lr_ratio": 0.1})
    assert [lr_at(s, o, 100) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(99, o, 100) == pytest.approx(0.1)
    assert lr_at(50, optim_settings({"lr": 2.0, "schedule": "constant"}), 100) == 2.0


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]


def test_cli_two_step_training_smoke_resumes_after_interruption(tmp_path):
    f = tmp_path / "smoke.toml"
    f.write_text(SMOKE)
    out = tmp_path / "res"
    runner = CliRunner()
    args = ["train", str(f), "--out", str(out), "--device", "cpu", "--no-progress"]
    r = runner.invoke(app, [*args, "--max-runs", "1"])  # stopped after one run
    assert r.exit_code == 0, r.output
    first = _records(out)
    assert len(first) == 1 and first[0]["status"] == "ok"
    with open(out / "results.jsonl", "ab") as fh:  # a run killed mid-write leaves a cut line
        fh.write(b'{"hash": "abc", "sta')
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "3 runs, 1 already done, 2 executed" in r.output
    recs = _records(out)
    assert len(recs) == 3 and recs[0] == first[0]  # the finished run is kept as it was
    assert {x["status"] for x in recs} == {"ok"}
    for x in recs:
        assert x["series"]["loss_step"] == [1, 2] and x["series"]["eval_step"] == [1, 2]
        assert 0.0 <= x["metrics"]["accuracy"] <= 1.0 and x["metrics"]["steps"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["state"] for s in manifest["sessions"]] == ["finished", "finished"]
    assert manifest["sessions"][1]["dropped_tail_bytes"] > 0
    df = load_train_results(out)
    assert sorted(df["model"]) == ["deltanet", "osdn-learned", "osdn-rule"]
    assert (out / "results.parquet").is_file()
    assert (out / "figures" / "accuracy_vs_pairs.png").is_file() and (out / "summary.csv").is_file()
    assert "| mqar | 16 | 2 | 8 | osdn-rule |" in (out / "summary.md").read_text()
    table = summary_table(df)
    assert table["runs"].tolist() == [1, 1, 1]
    # the resumed folder holds what one uninterrupted run computes (CPU, same seeds)
    out2 = tmp_path / "res2"
    assert (
        runner.invoke(
            app, ["train", str(f), "--out", str(out2), "--device", "cpu", "--no-progress"]
        ).exit_code
        == 0
    )
    again = {x["hash"]: x["metrics"]["accuracy"] for x in _records(out2)}
    assert again == {x["hash"]: x["metrics"]["accuracy"] for x in recs}
    assert {x["hash"]: x["series"]["loss"] for x in _records(out2)} == {
        x["hash"]: x["series"]["loss"] for x in recs
    }


def test_cli_writes_the_report_after_ctrl_c_and_with_report_only(tmp_path, monkeypatch):
    import osdn_theory.sweeps.runner as runner_mod

    f = tmp_path / "smoke.toml"
    f.write_text(SMOKE)
    out = tmp_path / "res"
    real = runner_mod.run_sweep

    def one_then_ctrl_c(*a, **kw):  # one run finishes and is saved, then the user presses Ctrl-C
        real(*a, **{**kw, "max_runs": 1})
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod, "run_sweep", one_then_ctrl_c)
    args = ["train", str(f), "--out", str(out), "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 130, r.output
    assert "interrupted: 1 finished run(s) are saved" in r.output
    summary = out / "summary.md"
    assert summary.is_file() and (out / "figures" / "accuracy_vs_pairs.png").is_file()
    assert summary.read_text().count("| mqar |") == 1  # the report holds the one saved run
    monkeypatch.setattr(runner_mod, "run_sweep", real)
    summary.unlink()
    r = CliRunner().invoke(app, [*args, "--report-only"])
    assert r.exit_code == 0, r.output
    assert len(_records(out)) == 1  # nothing ran
    assert summary.read_text().count("| mqar |") == 1
    r = CliRunner().invoke(app, ["train", str(f), "--out", str(tmp_path / "none"), "--report-only"])
    assert r.exit_code == 2 and r.output.strip().startswith("error: --report-only: no saved runs")


@pytest.mark.slow
def test_ctrl_c_to_a_pool_training_sweep_saves_every_run_in_flight(tmp_path):
    """Ctrl-C in a terminal reaches the sweep and its pool workers. The workers ignore it and the sweep stops
    them with SIGTERM, on which each run finishes its step and saves its checkpoint, so nothing trained is lost.
    (A worker that died of the SIGINT broke the pool, and the pool then killed the other workers, a run in the
    middle of saving its checkpoint included: before the fix no run in flight saved at the interrupt; once on a
    GPU machine the main process's own interrupt inside the pool's wait ended as ``RuntimeError: release
    unlocked lock`` and the session was recorded as an error.)

    Both runs in flight are known to be training once each has written its first periodic checkpoint (every
    2 s); the checkpoint left after the interrupt must be a later step than the last periodic one seen."""
    import psutil

    long = SMOKE.replace("steps = 2", "steps = 1000000").replace("eval_every = 1", "eval_every = 0")
    f = tmp_path / "long.toml"
    f.write_text(long.replace("log_every = 1", "log_every = 1000"))
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "osdn_theory.cli", "train", str(f), "--out", str(out), "--device", "cpu"]
    cmd += ["--executor", "local", "--workers", "2", "--checkpoint-every", "2", "--no-progress"]
    proc = start(cmd, new_session=True)

    def steps() -> dict[str, int]:
        found = {}
        for pt in (out / "checkpoints").glob("*.pt"):  # written to a temporary file, then renamed
            found[pt.name] = torch.load(pt, weights_only=False)["loop"]["done"]
        return found

    t0 = time.time()
    while time.time() - t0 < 180 and not ((out / "checkpoints").is_dir() and len(steps()) == 2):
        time.sleep(0.05)
    before = steps()
    assert len(before) == 2, "the two runs in flight did not both start training"
    kids = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted:" in err and "Traceback" not in err and "warning" not in err
    session = json.loads((out / "manifest.json").read_text())["sessions"][-1]
    assert session["state"] == "interrupted" and session["error"] is None and session["failed"] == 0
    after = steps()
    assert set(after) == set(before)
    assert all(after[n] > before[n] for n in after), (before, after)  # saved at the interrupt
    _, alive = psutil.wait_procs(kids, timeout=10)
    assert not alive


def test_a_rerun_is_compared_run_by_run_with_the_reference(tmp_path):
    """``--compare-to``: runs are matched by configuration and seed; a changed accuracy, a changed training loss
    and a divergence are each found (a copy of the committed pilot folder with three records altered), and a
    folder compared with itself is bit-identical throughout."""
    import shutil

    from osdn_theory.train import compare_train_results

    ref = SWEEPS.parent / "notebooks" / "data" / "recall_mqar_gpu_pilot_2026-12-05"
    with pytest.raises(ValueError, match=r"^reference: expected a results folder with results.jsonl"):
        compare_train_results(ref, tmp_path)
    same = compare_train_results(ref, ref)
    n = len(load_train_results(ref))
    assert len(same) == n and same["identical"].all() and same["same_outcome"].all()
    out = tmp_path / "rerun"
    shutil.copytree(ref, out)
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ok = [r for r in recs if r["status"] == "ok"]
    low = next(r for r in ok if r["metrics"]["accuracy"] < 0.1)
    low["metrics"]["accuracy"] = 0.9  # now learned: another outcome
    nudged = next(r for r in ok if r is not low)
    nudged["metrics"]["train_loss"] += 1e-6  # same accuracy, not bit-identical
    gone = next(r for r in ok if r is not low and r is not nudged and r["metrics"]["accuracy"] < 0.1)
    gone["status"] = "diverged"
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "results.parquet").unlink(missing_ok=True)  # a stale table; the store reads results.jsonl
    m = compare_train_results(out, ref)
    assert len(m) == n
    assert int((~m["identical"]).sum()) == 3 and int((~m["same_outcome"]).sum()) == 2
    assert m.iloc[0]["hash"] == low["hash"] and m.iloc[0]["abs_diff"] == pytest.approx(0.9 - _acc(ref, low))
    assert m.set_index("hash").loc[gone["hash"], "accuracy"] == 0.0  # a divergence is scored as a failure
    f = tmp_path / "mqar.toml"
    f.write_text((SWEEPS / "recall_mqar_gpu.toml").read_text())
    r = CliRunner().invoke(
        app, ["train", str(f), "--out", str(out), "--report-only", "--compare-to", str(ref)]
    )
    assert r.exit_code == 0, r.output
    assert f"{n} shared runs: {n - 3} bit-identical, {n - 2} with the same outcome" in r.output
    assert (out / "compare.md").is_file() and (out / "compare.csv").is_file()
    r = CliRunner().invoke(
        app, ["train", str(f), "--out", str(out), "--report-only", "--compare-to", str(tmp_path / "none")]
    )
    assert r.exit_code == 2 and r.output.strip().startswith("error: --compare-to: no saved runs")


def _acc(folder: Path, record: dict) -> float:
    return next(
        json.loads(line)["metrics"]["accuracy"]
        for line in (folder / "results.jsonl").read_text().splitlines()
        if json.loads(line)["hash"] == record["hash"]
    )


def test_cli_refuses_bad_file_with_one_line(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(SMOKE.replace("seq_len = 8", "seq_len = 3"))
    r = CliRunner().invoke(app, ["train", str(f), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert r.exit_code == 2
    assert r.output.strip().startswith("error: task[0].seq_len:") and len(r.output.strip().splitlines()) == 1


def test_missing_peer_is_recorded_as_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "fla.layers", None)  # as on a machine with fla-core alone
    spec = parse_train_spec(
        {
            "seeds": [0],
            "train": {"steps": 1, "batch_size": 2},
            "model": [{"kind": "fla_deltanet", "hidden_size": 16, "num_heads": 1}],
            "task": [{"name": "mqar", "vocab_size": 16, "num_kv_pairs": 2, "seq_len": 8}],
        }
    )
    (rec,) = train_batch([spec.runs[0].to_dict()], device="cpu")
    assert rec["status"] == "skipped" and "fla.layers" in rec["error"]


@pytest.mark.gpu
def test_gpu_training_run_is_repeatable():
    """A few kernel-path steps on the GPU finish, and the same run twice gives the same record (what makes a
    committed GPU result reproducible from its training file and seeds)."""
    spec = parse_train_spec(
        {
            "seeds": [0],
            "train": {"steps": 5, "batch_size": 8, "eval_every": 0, "log_every": 1},
            "metrics": {"eval_examples": 16},
            "model": [
                {
                    "mode": "chunk",
                    "hidden_size": 32,
                    "num_heads": 2,
                    "grid": {"d_mode": ["none", "rule", "learned"]},
                }
            ],
            "task": [{"name": "mqar", "vocab_size": 64, "num_kv_pairs": 4, "seq_len": 40}],
        }
    )
    runs = [r.to_dict() for r in spec.runs]
    first, second = train_batch(runs, device="cuda"), train_batch(runs, device="cuda")
    for a, b in zip(first, second, strict=True):
        assert a["status"] == "ok", a.get("traceback")
        assert a["metrics"]["device"].startswith("cuda")
        assert a["series"]["loss"] == b["series"]["loss"]
        assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]


@pytest.mark.gpu
def test_gpu_peer_training_runs():
    """fla's DeltaNet and GatedDeltaNet layers train in the same grid as ours (a few steps on the GPU, loss
    finite, accuracy measured): the path of ``sweeps/recall_mqar_gpu_peers.toml``."""
    spec = parse_train_spec(
        {
            "seeds": [0],
            "train": {"steps": 5, "batch_size": 8, "eval_every": 0, "log_every": 1},
            "metrics": {"eval_examples": 16},
            "model": [
                {"hidden_size": 32, "num_heads": 2, "grid": {"kind": ["fla_deltanet", "fla_gated_deltanet"]}}
            ],
            "task": [{"name": "mqar", "vocab_size": 64, "num_kv_pairs": 4, "seq_len": 40}],
        }
    )
    for rec in train_batch([r.to_dict() for r in spec.runs], device="cuda"):
        assert rec["status"] == "ok", rec.get("traceback") or rec.get("error")
        assert all(math.isfinite(x) for x in rec["series"]["loss"]) and 0 <= rec["metrics"]["accuracy"] <= 1


@pytest.mark.interpreter
def test_kernel_path_trains_like_the_reference():
    """Two optimiser steps with the Triton kernel (interpreter on a CPU) give the reference recurrence's losses
    and held-out metrics, for every d_mode: the GPU experiment's code path, checked here."""

    def records(mode):
        spec = parse_train_spec(
            {
                "seeds": [0],
                "train": {"steps": 2, "batch_size": 4, "eval_every": 0, "log_every": 1},
                "metrics": {"eval_examples": 8},
                "model": [
                    {
                        "mode": mode,
                        "hidden_size": 16,
                        "num_heads": 1,
                        "num_layers": 1,
                        "chunk_size": 16,
                        "grid": {"d_mode": ["none", "rule", "learned"]},
                    }
                ],
                "task": [{"name": "mqar", "vocab_size": 16, "num_kv_pairs": 2, "seq_len": 8}],
            }
        )
        return train_batch([r.to_dict() for r in spec.runs], device="cpu")

    for ref, ker in zip(records("reference"), records("chunk"), strict=True):
        assert ref["status"] == ker["status"] == "ok", ker.get("traceback")
        assert ker["series"]["loss"] == pytest.approx(ref["series"]["loss"], rel=1e-5)
        assert ker["metrics"]["eval_loss"] == pytest.approx(ref["metrics"]["eval_loss"], rel=1e-5)
        assert ker["metrics"]["accuracy"] == ref["metrics"]["accuracy"]


def test_layer_r1_matches_an_independent_deltanet_memory():
    """layer_r1 of a one-layer DeltaNet model = R1 of the memory that delta_rule_recurrent writes from the
    layer's own keys and values on the context."""
    from osdn_theory.layers import RecallLM
    from osdn_theory.recurrences import delta_rule_recurrent
    from osdn_theory.tasks import MQAR
    from osdn_theory.train.run import layer_r1

    torch.manual_seed(0)
    model = RecallLM(
        32, {"mode": "reference", "d_mode": "none", "hidden_size": 16, "num_heads": 2, "num_layers": 1}
    )
    data = MQAR(vocab_size=32, num_kv_pairs=3, seq_len=16, num_examples=3).build(0)
    (r1,) = layer_r1(model, data.inputs, data.context_len)
    with torch.no_grad():
        q, k, v, beta, _ = model.blocks[0].mixer.features(model.blocks[0].norm1(model.embed(data.inputs)))
    c = data.context_len
    k, v = k[:, :c].double(), v[:, :c].double()
    _, S = delta_rule_recurrent(q[:, :c], k, v, beta[:, :c].double(), output_final_state=True)
    res = torch.einsum("bhkv,bthk->bthv", S, k) - v
    expect = (res.square().sum((1, 3)) / v.square().sum((1, 3))).mean()
    assert r1 == pytest.approx(float(expect), rel=1e-10)
    assert 0.0 < r1 < 1.0


def _tiny_run():
    spec = parse_train_spec(
        {
            "seeds": [0],
            "train": {"steps": 4, "batch_size": 2, "eval_every": 0, "log_every": 1},
            "metrics": {"eval_examples": 2},
            "model": [{"mode": "reference", "hidden_size": 16, "num_layers": 1, "num_heads": 1}],
            "task": [{"name": "mqar", "vocab_size": 16, "num_kv_pairs": 2, "seq_len": 8}],
            "optim": [{"lr": 1e-2, "warmup_steps": 1}],
        }
    )
    return spec.runs[0].to_dict()


def test_value_check_error_in_a_step_is_a_divergence_with_its_reason(monkeypatch):
    """The kernel's value check finding non-finite activations (weights gone NaN) stops the run as diverged,
    with the check's message as ``diverged_reason``, not as a failed run."""
    from osdn_theory._validate import ValueCheckError
    from osdn_theory.layers import RecallLM

    calls = {"n": 0}
    forward = RecallLM.forward

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueCheckError("q: expected finite values, got values outside that range (test)")
        return forward(self, *a, **kw)

    monkeypatch.setattr(RecallLM, "forward", flaky)
    (rec,) = train_batch([_tiny_run()], device="cpu")
    assert rec["status"] == "diverged", rec.get("error")
    assert rec["metrics"]["steps"] == 2 and rec["metrics"]["diverged_reason"].startswith("q: expected finite")


def test_a_run_does_not_inherit_an_earlier_runs_value_flag(monkeypatch):
    """A value flag left by an earlier (diverged) run in the same process is cleared when a run starts: on a
    GPU it would otherwise fail the next run's first kernel call (seen on an H200: runs 'failed' after 1 s with
    'q: expected finite values' of the previous run). Stand-in device entry as in the kernel tests."""
    from osdn_theory.kernels import _checks, stages

    dev = torch.device("cpu")
    q_bit = torch.tensor([stages.BAD_Q.value], dtype=torch.int32)
    monkeypatch.setitem(_checks._STICKY, dev, [q_bit.clone(), q_bit.clone()])
    (rec,) = train_batch([_tiny_run()], device="cpu")
    assert rec["status"] == "ok", rec.get("error")
    assert int(_checks._STICKY[dev][0]) == 0 and int(_checks._STICKY[dev][1]) == 0
    _checks.poll()  # nothing left for the next call to raise


def test_layer_write_strength_by_hand_and_in_the_record():
    """``layer_write_strength``: DeltaNet's ``s`` is its ``β`` (unit keys), so the median is β's and nothing
    exceeds 2; the ratio rule's ``s`` equals ``β kᵀ(d ⊙ k)`` with the rule's ``d``; a clip caps it. A training
    record carries the per-evaluation series and the final per-layer values."""
    from osdn_theory.layers import RecallLM, ratio_rule_d
    from osdn_theory.tasks import MQAR
    from osdn_theory.train.run import layer_write_strength

    data = MQAR(vocab_size=32, num_kv_pairs=3, seq_len=16, num_examples=3).build(0)

    def model(**kw):
        torch.manual_seed(0)
        cfg = {"mode": "reference", "hidden_size": 16, "num_heads": 2, "num_layers": 1, **kw}
        return RecallLM(32, cfg)

    def features(m):
        with torch.no_grad():
            f = m.blocks[0].mixer.features(m.blocks[0].norm1(m.embed(data.inputs)))
        return [t if t is None else t.double() for t in f]

    m = model(d_mode="none")
    (w,) = layer_write_strength(m, data.inputs)
    _, k, _, beta, _ = features(m)
    assert w["median"] == pytest.approx(float(beta.median()), rel=1e-6) and w["over2"] == 0.0
    m = model(d_mode="rule")
    (w,) = layer_write_strength(m, data.inputs)
    _, k, _, beta, _ = features(m)
    s = beta * (k * k * ratio_rule_d(k, beta, 0.5, 1.0, 1e-4)).sum(-1)
    assert w["median"] == pytest.approx(float(s.median()), rel=1e-10)
    (w,) = layer_write_strength(model(d_mode="rule", s_max=0.3), data.inputs)
    assert w["median"] <= 0.3
    (rec,) = train_batch([_tiny_run()], device="cpu")
    assert len(rec["series"]["eval_s_over2"]) == len(rec["series"]["eval_step"]) >= 1
    assert "s_median_layer0" in rec["metrics"] and "s_over2_layer0" in rec["metrics"]


def test_evaluation_on_answer_logits_equals_the_full_logits_count():
    """``evaluate_model`` (answer positions only) against a count from the full logits, on the forgetting task
    (so the split into re-bound and kept keys is checked too), float64."""
    from osdn_theory.layers import RecallLM
    from osdn_theory.tasks import IGNORE, ForgettingMQAR
    from osdn_theory.train import evaluate_model

    torch.manual_seed(3)
    model = RecallLM(24, {"mode": "reference", "hidden_size": 16, "num_heads": 2, "num_layers": 1}).double()
    task = ForgettingMQAR(vocab_size=24, num_kv_pairs=4, num_overwrites=2, seq_len=20)
    got = evaluate_model(model, task, seed=5, n=6, batch_size=4, device=torch.device("cpu"))
    import dataclasses

    data = dataclasses.replace(task, num_examples=6).build((5, 1))
    with torch.no_grad():
        logits = model(data.inputs)
    mask = data.labels != IGNORE
    hit = (logits.argmax(-1) == data.labels) & mask
    ow = data.overwritten & mask
    assert got["accuracy"] == pytest.approx(int(hit.sum()) / int(mask.sum()), abs=1e-15)
    assert got["accuracy_overwritten"] == pytest.approx(int((hit & ow).sum()) / int(ow.sum()), abs=1e-15)
    kept = mask & ~ow
    assert got["accuracy_kept"] == pytest.approx(int((hit & kept).sum()) / int(kept.sum()), abs=1e-15)
    loss = torch.nn.functional.cross_entropy(logits[mask], data.labels[mask])
    # the loop takes the loss of float32 logits (as in training), so float32's tolerance
    assert got["eval_loss"] == pytest.approx(float(loss), rel=rtol(torch.float32))


def test_an_interrupted_run_resumes_from_its_checkpoint_and_equals_an_uninterrupted_run(
    tmp_path, monkeypatch
):
    """A run interrupted mid-training resumes from its last checkpoint (not from step 0) and ends with exactly
    what an uninterrupted run computes (CPU: bit for bit); the checkpoint is removed when the run ends, and
    an unreadable checkpoint is set aside and the run starts over."""
    import tomllib

    from osdn_theory.train import run as run_mod

    raw = tomllib.loads(SMOKE.replace("steps = 2", "steps = 6").replace("eval_every = 1", "eval_every = 2"))
    cfg = parse_train_spec(raw).runs[1].to_dict()  # the ratio rule
    want_status, want_metrics, want_series = run_mod.train_run(cfg, "cpu")

    ck = tmp_path / "ck"
    real, calls = run_mod.train_step, []

    def stop_at_step_5(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # Ctrl-C (or the session's time limit) during step 5
        return real(*a, **kw)

    monkeypatch.setattr(run_mod, "train_step", stop_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=0)
    (saved,) = ck.glob("*.pt")
    calls.clear()
    monkeypatch.setattr(run_mod, "train_step", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    status, metrics, series = run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=0)
    assert len(calls) == 2 and metrics["resumed_from_step"] == 4  # steps 5 and 6 only
    assert (status, series) == (want_status, want_series)
    timing = {"train_seconds", "steps_per_s", "resumed_from_step"}
    assert {k: v for k, v in metrics.items() if k not in timing} == {
        k: v for k, v in want_metrics.items() if k not in timing
    }
    assert not saved.exists() and not list(ck.iterdir())

    saved.write_bytes(b"not a checkpoint")  # damaged: set aside, the run starts over
    calls.clear()
    status, metrics, series = run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=1e9)
    assert len(calls) == 6 and "resumed_from_step" not in metrics and series == want_series
    assert saved.with_suffix(".bad").exists()
    # half readable: the model's weights load, the optimizer state does not; the run starts over from its
    # initial weights, not from the checkpoint's
    trained = {
        k: torch.full_like(v, 0.5)
        for k, v in run_mod.RecallLM(16, run_mod.model_from_dict(cfg["model"])).state_dict().items()
    }
    torch.save({"model": trained, "opt": {"bad": 1}, "loop": {}}, saved)
    calls.clear()
    status, metrics, series = run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=1e9)
    assert len(calls) == 6 and series == want_series
    with pytest.raises(ValueError, match="^checkpoint_every: "):
        run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=-1)


def test_a_signal_saves_a_checkpoint_at_the_end_of_the_step_and_nothing_is_lost(tmp_path, monkeypatch):
    """SIGINT during step 3 of a checkpointed run (no periodic save due: ``checkpoint_every`` = 1e9): the step
    finishes, a checkpoint of 3 steps is saved, then ``KeyboardInterrupt``; the resumed run trains steps 4–6
    only and ends with what an uninterrupted run computes. SIGTERM (how a pool worker is stopped) saves too and
    then ends the process by SIGTERM. The handlers are restored afterwards."""
    import signal
    import sys

    import tomllib

    from osdn_theory.train import run as run_mod

    raw = tomllib.loads(SMOKE.replace("steps = 2", "steps = 6").replace("eval_every = 1", "eval_every = 2"))
    cfg = parse_train_spec(raw).runs[1].to_dict()
    want_status, want_metrics, want_series = run_mod.train_run(cfg, "cpu")
    real, calls = run_mod.train_step, []

    def signal_in_step_3(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step
        return real(*a, **kw)

    ck = tmp_path / "ck"
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(run_mod, "train_step", signal_in_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=1e9)
    assert signal.getsignal(signal.SIGINT) is before and len(calls) == 3
    (saved,) = ck.glob("*.pt")
    assert torch.load(saved, weights_only=False)["loop"]["done"] == 3
    calls.clear()
    monkeypatch.setattr(run_mod, "train_step", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    status, metrics, series = run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=1e9)
    assert len(calls) == 3 and metrics["resumed_from_step"] == 3
    assert (status, series) == (want_status, want_series)
    assert metrics["accuracy"] == want_metrics["accuracy"]

    code = (
        "import os, signal, json, sys\n"
        "from osdn_theory.train import run as r\n"
        "cfg = json.loads(sys.argv[1]); real = r.train_step; n = []\n"
        "def step(*a, **kw):\n"
        "    n.append(1)\n"
        "    if len(n) == 2: os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(*a, **kw)\n"
        "r.train_step = step\n"
        "r.train_run(cfg, 'cpu', checkpoint_dir=sys.argv[2], checkpoint_every=1e9)\n"
        "print('not stopped')\n"
    )
    ck2 = tmp_path / "ck2"
    p = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg), str(ck2)], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == -signal.SIGTERM, (p.returncode, p.stdout, p.stderr[-2000:])
    (saved2,) = ck2.glob("*.pt")
    assert torch.load(saved2, weights_only=False)["loop"]["done"] == 2

    # a signal in the last step: the run's whole training is saved (resuming only evaluates), not dropped
    def signal_in_step_6(*a, **kw):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(run_mod, "train_step", signal_in_step_6)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=1e9)
    (last,) = ck.glob("*.pt")
    assert torch.load(last, weights_only=False)["loop"]["done"] == 6
    calls.clear()
    status, metrics, series = run_mod.train_run(cfg, "cpu", checkpoint_dir=ck, checkpoint_every=1e9)
    assert (
        calls == [] and metrics["resumed_from_step"] == 6 and (status, series) == (want_status, want_series)
    )
    assert metrics["accuracy"] == want_metrics["accuracy"]

    # a signal in a step that diverges ends the loop there: it is still acted on, not swallowed
    monkeypatch.setattr(
        run_mod,
        "train_step",
        lambda *a, **kw: (os.kill(os.getpid(), signal.SIGINT), (float("nan"), "bad step"))[1],
    )
    with pytest.raises(KeyboardInterrupt):
        run_mod.train_run(cfg, "cpu", checkpoint_dir=tmp_path / "ck4", checkpoint_every=1e9)
    assert signal.getsignal(signal.SIGINT) is before

    # a process that ignores SIGINT (e.g. started in the background by a shell) keeps ignoring it
    monkeypatch.setattr(run_mod, "train_step", signal_in_step_3)
    calls.clear()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        status, metrics, series = run_mod.train_run(cfg, "cpu", checkpoint_dir=tmp_path / "ck3")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)
    assert len(calls) == 6 and (status, series) == (want_status, want_series)


def test_a_failed_run_leaves_no_checkpoint(tmp_path, monkeypatch):
    """A run that raises is recorded as failed and its checkpoint removed, so a retry after a fix starts over."""
    import tomllib

    from osdn_theory.train import run as run_mod

    cfg = parse_train_spec(tomllib.loads(SMOKE.replace("steps = 2", "steps = 4"))).runs[0].to_dict()
    real, calls = run_mod.train_step, []

    def fail_at_step_3(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a bug")
        return real(*a, **kw)

    monkeypatch.setattr(run_mod, "train_step", fail_at_step_3)
    ck = tmp_path / "ck"
    (rec,) = run_mod.train_batch([cfg], "cpu", checkpoint_dir=ck, checkpoint_every=0)
    assert rec["status"] == "failed" and "a bug" in rec["error"]
    assert not list(ck.glob("*.pt"))


def test_the_step_end_guard_takes_a_second_sigint_at_once_and_ignores_a_second_sigterm():
    """Ctrl-C twice stops a checkpointed run at once; SIGTERM twice does not, because a process pool sends
    it again to every worker once one has exited (``test_every_worker_of_a_stopped_pool_saves_when_one_ends_
    first`` in test_sweeps_runner.py has the pool itself). Before, the second SIGTERM ended the process: here,
    pytest's own."""
    from osdn_theory.train.run import _StopAtStepEnd

    with _StopAtStepEnd(True) as g:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # already stopping: ignored
        assert g.requested == signal.SIGTERM
        g.requested = None  # leave without ending this process
    with pytest.raises(KeyboardInterrupt), _StopAtStepEnd(True) as g:
        os.kill(os.getpid(), signal.SIGINT)
        assert g.requested == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)  # the second: at once
        time.sleep(5)
        pytest.fail("a second SIGINT did not stop the run at once")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
