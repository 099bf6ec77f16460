"""The GPU benchmark scripts on a machine without one: they refuse cleanly, name their results files, and
the tuning sweep's machinery (every stage run under each launch override, outputs compared with the
default's) works, here under the Triton interpreter on a tiny float64 problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from benchmarks import tune_kernels
from benchmarks.bench_kernels import default_out, parse_shapes
from osdn_theory.kernels.config import DEFAULT_LAUNCH, STAGE_NAMES

pytestmark = pytest.mark.interpreter


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    "module",
    [
        "benchmarks.bench_kernels",
        "benchmarks.tune_kernels",
        "benchmarks.bench_ours",
        "benchmarks.bench_train",
        "benchmarks.bench_d_check",
    ],
)
def test_scripts_refuse_without_cuda(module):
    r = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "needs a CUDA device" in r.stderr


def test_the_shapes_option_is_parsed_and_checked():
    assert parse_shapes(None, [(1, 2, 3, 4)]) == [(1, 2, 3, 4)]
    assert parse_shapes("4,4096,16,128;8,2048,16,64", []) == [(4, 4096, 16, 128), (8, 2048, 16, 64)]
    for bad in ("4,4096,16", "4,4096,16,x", "4,4096,0,128", "", "4,4096,16,128;"):
        with pytest.raises(SystemExit, match=r"^--shapes: expected 'B,T,H,D'"):
            parse_shapes(bad, [])


def test_training_step_benchmark_runs_its_cpu_smoke(tmp_path):
    """``bench_train --device cpu --tiny``: every model and the shared-device pool run, and the JSON and the
    table are written (a GPU session runs the same code; a script that crashed there would cost device time)."""
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train", "--device", "cpu", "--tiny", "--steps", "1",
         "--workers", "1", "--out", str(tmp_path / "t.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    res = json.loads((tmp_path / "t.json").read_text())
    assert [row["d_mode"] for row in res["rows"]] == ["none", "rule", "learned"]
    assert all(row["step_ms"] > 0 and row["step_full_logits_ms"] > 0 for row in res["rows"])
    assert res["pool"][0]["workers"] == 1 and res["pool"][0]["pool_steps_per_s"] > 0
    assert "| workers sharing the device |" in (tmp_path / "t.md").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train", "--device", "cpu"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "--tiny" in bad.stderr


def test_d_check_benchmark_variants_flag_bad_values(monkeypatch):
    """Every variant of the ``d`` pass that ``bench_d_check`` times runs under the interpreter, flags nothing on a
    good ``d`` and flags a planted NaN and 0 (a draft of the script cost device time on a bug)."""
    from benchmarks import bench_d_check

    monkeypatch.setattr(bench_d_check, "_bench", lambda fn: (fn(), 0.0)[1])
    row = bench_d_check.bench_shape(1, 40, 2, 16, device="cpu")
    assert {"shipped", "or B8192 w8", "max B4096 w8", "loop P8 B4096", "copy"} <= set(row["ms"])
    assert set(row["flags_bad"]) == set(row["ms"]) - {"copy"} and all(row["flags_bad"].values())
    assert "MISSED" not in bench_d_check._table({}, [row])


def test_checked_stage_times_calls_every_stage_both_ways(monkeypatch):
    """``bench_ours.checked_stage_times`` (timing each forward stage with and without its value checks) runs
    every stage both ways on a tiny float64 problem under the interpreter, with no check raised on good
    inputs (timing replaced by a plain call)."""
    from benchmarks import bench_ours

    monkeypatch.setattr(bench_ours, "_bench", lambda fn: (fn(), 0.0)[1])
    monkeypatch.setattr(bench_ours, "_warm", lambda *fns: [f() for f in fns])
    g = torch.Generator().manual_seed(1)
    B, T, H, D = 1, 70, 2, 16
    x = {n: torch.randn(B, T, H, D, generator=g, dtype=torch.float64) for n in ("q", "v")}
    x["k"] = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1)
    x["beta"] = torch.sigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64))
    x["d"] = torch.exp(0.3 * torch.randn(B, T, H, D, generator=g, dtype=torch.float64))
    out = bench_ours.checked_stage_times(x, device="cpu")
    stages_timed = {
        "gram_solve",
        "gram_solve_rows",
        "check_d_pass",
        "gram_solve_pass",
        "gram_solve_atomic",
        "wy_factors",
        "output",
    }
    assert set(out) == stages_timed  # no "flag_bits": nothing flagged
    assert all(set(v) == {"unchecked", "checked"} for v in out.values())
    x["q"][0, 3, 0, 0] = float("nan")  # the checked output stage must see it (the flag is really passed)
    from osdn_theory.kernels import stages

    assert bench_ours.checked_stage_times(x, device="cpu")["flag_bits"] == stages.BAD_Q.value


def test_rule_stage_times_runs_both_parts(monkeypatch):
    """``bench_ours.rule_stage_times`` runs the d rule's parallel part and its scan at each chunk size on a tiny
    float64 problem under the interpreter (timing replaced by a plain call), and the two parts give the rule's
    ``d`` (the same as ``d_ratio_scan``)."""
    from benchmarks import bench_ours
    from osdn_theory.kernels import d_ratio_scan
    from osdn_theory.kernels.chunk import chunk_tables
    from osdn_theory.kernels.d_scan import rule_factors, scan_chunks

    monkeypatch.setattr(bench_ours, "_bench", lambda fn: (fn(), 0.0)[1])
    monkeypatch.setattr(bench_ours, "_warm", lambda *fns: [f() for f in fns])
    g = torch.Generator().manual_seed(2)
    B, T, H, D = 1, 40, 2, 16
    k = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1)
    beta = torch.sigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64))
    out = bench_ours.rule_stage_times({"k": k, "beta": beta}, device="cpu", chunks=(16, 32))
    assert set(out) == {"C16", "C32"}
    assert all(set(v) == {"factors", "scan", "scan_separate_readout"} for v in out.values())
    tables = chunk_tables(None, B, T, 16, "cpu")
    parts = rule_factors(k.reshape(T, H, D), beta.reshape(T, H), 0.5, 16, tables, None)
    h0 = torch.ones(B, H, D, dtype=torch.float64)
    d = scan_chunks(*parts[:3], h0, 1e-4, 16, tables, False)[0]
    ref = d_ratio_scan(k, beta, c=0.5, d_init=1.0, d_min=1e-4, chunk_size=16, detach=True)
    torch.testing.assert_close(d.reshape(B, T, H, D), ref, rtol=0, atol=0)


def test_default_results_path():
    p = default_out("kernels", {"card": "NVIDIA H200", "date_utc": "2026-11-27 15:48"})
    assert p.name == "kernels_nvidia_h200_2026-11-27_1548.json" and p.parent.name == "results"


def test_sweep_runs_every_stage_under_overrides(monkeypatch):
    """One variant per stage, passed as an explicit launch configuration: the override reaches the launcher (the
    sweep hands the default back after), and
    a variant that changes only the launch configuration reproduces the default's outputs."""
    g = torch.Generator().manual_seed(0)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    B, T, H, D = 1, 40, 2, 32
    x = dict(
        q=r(B, T, H, D), k=F.normalize(r(B, T, H, D), dim=-1), v=r(B, T, H, D),
        beta=torch.sigmoid(r(B, T, H)), d=torch.exp(0.3 * r(B, T, H, D)), do=r(B, T, H, D),
    )  # fmt: skip
    monkeypatch.setattr(tune_kernels, "_bench", lambda fn: (fn(), 0.0)[1])
    variants = {
        "gram_solve": [{"num_warps": 2, "PREC": "ieee", "NEWTON": False}],
        "wy": [{"BK": 16, "BV": 16, "num_warps": 4}],
        # float64 input takes the float32 (FMA) rules: V block 16 in state, output and dh, so these try 32
        "state": [{"KSPLIT": True, "BV": 32, "num_warps": 4, "num_stages": 2}],
        "output": [{"BV": 32, "num_warps": 4}],
        "dv_local": [{"BV": 16, "num_warps": 4}],
        "dh": [{"BV": 32, "num_warps": 4, "num_stages": 2}],
        "bwd_dqk": [{"BV": 16, "num_warps": 4, "num_stages": 1}],
        "bwd_wy": [{"BK": 32, "num_warps": 4, "num_stages": 1}],
    }
    monkeypatch.setattr(tune_kernels, "VARIANTS", variants)
    st = tune_kernels._Stages(x, C=16)
    for name in variants:
        rows = tune_kernels.sweep_stage(st, name)
        assert [row["config"] for row in rows] == ["default", variants[name][0]], name
        assert "error" not in rows[1] and rows[1]["rel_diff"] < 1e-12, (name, rows[1])
        want = {
            k: v for k, v in variants[name][0].items() if k != "num_warps"
        }  # warps: 1 under the interpreter
        assert want.items() <= rows[1]["resolved"].items(), (
            name,
            rows[1],
        )  # the override reached the launcher
        assert not want.items() <= rows[0]["resolved"].items(), (
            name,
            rows[0],
        )  # the default ran the stage's rule
        assert st.launch is DEFAULT_LAUNCH  # the sweep hands the default configuration back


def test_no_module_level_launch_switch():
    """The launch configuration is passed with each call: the kernel package holds no mutable module-level
    configuration or resource dict that a caller could set (``TUNE``/``RESOURCES`` are gone), and a
    ``LaunchConfig`` is frozen."""
    import dataclasses

    from osdn_theory import kernels
    from osdn_theory.kernels import config

    for mod in [
        kernels,
        *(getattr(kernels, n) for n in dir(kernels) if isinstance(getattr(kernels, n), type(kernels))),
    ]:
        for attr in ("TUNE", "RESOURCES"):
            assert not hasattr(mod, attr), (mod.__name__, attr)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.DEFAULT_LAUNCH.state.BV = 16  # type: ignore[misc]
    with pytest.raises(ValueError, match="^BV: "):
        config.LaunchConfig(BV=24)
    with pytest.raises(ValueError, match="^launch: "):
        kernels.chunk_osdn(*(torch.zeros(1, 4, 1, 4, dtype=torch.float64),) * 3, torch.full((1, 4, 1), 0.5,
                           dtype=torch.float64), launch={"state": {}})  # fmt: skip


def _offline_regs(code: str, timeout: int = 900) -> list:
    """Run ``code`` (which prints one JSON value) with :mod:`benchmarks.offline_regs` outside the interpreter,
    in a subprocess (kernels compiled for sm_90a by Triton's bundled ptxas, without a GPU)."""
    from benchmarks import offline_regs

    if not offline_regs._ptxas().exists():
        pytest.skip("Triton's bundled ptxas is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    prelude = "import json, torch\nfrom benchmarks import offline_regs as o\n"
    r = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_value_checks_add_no_spills_to_stage_1():
    """Stage 1 compiled for sm_90a without a GPU (``benchmarks.offline_regs``) spills no more with the value
    checks than without them at K = 128 (they once added 1.9 KB of spills per thread and doubled the default
    call's time on an H200). The kernels are captured from the public call, with its own launch rules. This holds
    with the Triton that CI installs (3.8: 12 bytes checked, 24 unchecked); with Triton 3.6 the check of ``d``
    spills 68 bytes there against none (docs/kernels.md), which this test cannot see."""
    spills = _offline_regs(
        "out = []\n"
        "for validate in (False, True):\n"
        "    calls = o.call_kernels(1, 128, 2, 128, torch.bfloat16, validate=validate)\n"
        "    rows = o.table([c for c in calls if c[0].__name__ == '_gram_solve_kernel'])\n"
        "    out.append(rows[0]['spill_stores'])\n"
        "print(json.dumps(out))\n"
    )
    unchecked, checked = spills
    assert checked <= unchecked, (unchecked, checked)


def test_every_stage_compiles_for_the_gpu():
    """Every kernel of the pipeline (forward with the value checks at each placement of the d check, backward,
    gated, the d rule sequential (read-out fused and separate) and segment-parallel) compiled for sm_90a without a GPU at K = 128, bf16, as the public call launches them:
    each assembles (ptxas reports its registers). The GPU-side check that the interpreter cannot give."""
    rows = _offline_regs(
        "rows = []\n"
        "for kw in (dict(gated=True), dict(d_rule='sequential'), dict(d_rule='segments')):\n"
        "    rows += o.table(o.call_kernels(1, 1024, 2, 128, torch.bfloat16, backward=True, **kw))\n"
        "from osdn_theory.kernels.config import Launch\n"
        "for where in ('tile', 'rows', 'pass', 'atomic'):  # every explicit placement of the d check (forward only)\n"
        "    rows += o.table(o.call_kernels(1, 1024, 2, 128, torch.bfloat16, launch=Launch(d_check=where)))\n"
        "sep = Launch(rule_readout='separate')  # the d rule's scan with its read-out apart\n"
        "rows += o.table(o.call_kernels(1, 1024, 2, 128, torch.bfloat16, backward=True, d_rule='sequential', launch=sep))\n"
        "print(json.dumps(rows))\n"
    )
    names = {r["kernel"] for r in rows}
    # every stage of the launch configuration, the rule's preparation and the d check's own pass
    stages_ = {*STAGE_NAMES, "d_prep", "check_d"}
    assert {f"_{s}_kernel" for s in stages_} <= names, sorted(names)
    assert all(isinstance(r["regs"], int) and r["regs"] > 0 for r in rows), rows


def test_float32_launch_rules_avoid_the_register_fallback():
    """float32 inputs get IEEE dots, which Triton lowers to FMA loops. Under the 16-bit launch rules, ptxas fell
    back to 32 registers with a 4.8–13 KB stack frame per thread in dv_local, output, bwd_dqk and bwd_wy
    at K = 64 (triton 3.6 and 3.8, sm_90a). One such kernel took 1.6 ms a call in the recall lab's float32
    training on an H100. The float32 rules (``fma_dots``) must keep every kernel of a forward+backward under
    1 KB. K = 64 is the recall lab's head dim at width 128; at K = 128 the output stage still spills 5.7 KB
    (docs/kernels.md)."""
    rows = _offline_regs(
        "print(json.dumps(o.table(o.call_kernels(1, 128, 2, 64, torch.float32, backward=True))))\n"
    )
    assert len(rows) >= 9, rows
    worst = max(rows, key=lambda r: r["stack_frame"])
    assert worst["stack_frame"] <= 1024, worst
