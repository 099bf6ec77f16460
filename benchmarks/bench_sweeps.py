"""Sweep throughput: batched sweep runner vs a naive per-run loop (runs/s and tokens/s, float64, CPU).

Usage: ``python -m benchmarks.bench_sweeps [--quick] [--workers 2] [--out benchmarks/results]``.

Workload: APF-style runs on a piecewise-stationary stream (``T`` tokens, ``K = V = 16``, 4 segments), five
methods (DeltaNet, OSDN without forgetting, constant forgetting, key-novelty trigger, calibration-spike
trigger), ``seeds`` seeds each; every run computes the full metric set of :mod:`osdn_theory.sweeps.evaluate`.

- **naive**: one run at a time in one process, ``B = 1``, d-scan then the token-by-token reference memory
  (``evaluate_runs([run], memory="recurrent")``); timed on ``naive_per_method`` runs of each method and
  reported as a rate.
- **batched, 1 process**: the runner's evaluation (seeds stacked along B, chunk-form memory), serial executor.
- **batched, pool**: ``osdn sweep`` end to end with the local process pool (``--workers``), including worker
  start-up, the crash-safe results file, the Parquet table and the manifest.

Target (sweep issue): batched pool ≥ 20× the naive loop's runs/s on 2 cores. Prints a table and writes
``sweeps_cpu.json`` (``sweeps_cpu_quick.json`` with ``--quick``) with machine, versions and date.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from osdn_theory.sweeps.evaluate import evaluate_runs
from osdn_theory.sweeps.runner import run_sweep
from osdn_theory.sweeps.spec import parse_spec

from ._env import environment

METHODS = [
    {"name": "deltanet"},
    {"name": "osdn", "step": {"name": "normalized", "c": 0.1}, "s_max": 1.5},
    {
        "name": "osdn",
        "step": {"name": "normalized", "c": 0.1},
        "s_max": 1.5,
        "apf": {
            "prior": {"name": "running_jacobi", "c": 1 / 18, "ema": 0.95},
            "rate": {"name": "constant_forgetting", "lam": 0.03},
        },
    },
    {
        "name": "osdn",
        "step": {"name": "normalized", "c": 0.1},
        "s_max": 1.5,
        "apf": {
            "prior": {"name": "running_jacobi", "c": 1 / 18, "ema": 0.95},
            "rate": {"name": "novelty_trigger", "fast": 0.8, "slow": 0.99, "tau": 0.4, "warmup": 64},
        },
    },
    {
        "name": "osdn",
        "step": {"name": "normalized", "c": 0.1},
        "s_max": 1.5,
        "apf": {
            "prior": {"name": "running_jacobi", "c": 1 / 18, "ema": 0.95},
            "rate": {"name": "spike_trigger", "fast": 0.8, "slow": 0.99, "tau": 3.0, "warmup": 64},
        },
    },
]


def _spec(T: int, seeds: int):
    stream = {"family": "piecewise", "T": T, "K": 16, "V": 16, "segment_len": T // 4, "condition": 100.0}
    return parse_spec(
        {
            "name": "bench",
            "seeds": {"start": 0, "count": seeds},
            "batch_size": seeds,
            "stream": [stream],
            "method": METHODS,
            "metrics": {"profile_after": min(256, T // 4 - 32)},
        }
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small workload (smoke run)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    T, seeds, naive_per_method = (512, 8, 1) if args.quick else (2048, 32, 2)
    torch.set_num_threads(1)
    spec = _spec(T, seeds)
    runs = spec.runs
    n = len(runs)

    # naive per-run loop (timed on a subset, reported as a rate)
    sample = []
    for m in METHODS:
        sample += [r for r in runs if r.method == m][:naive_per_method]
    t0 = time.perf_counter()
    for r in sample:
        evaluate_runs([r.to_dict()], memory="recurrent")
    t_naive = (time.perf_counter() - t0) / len(sample)

    # batched evaluation in one process (no pool): the batching gain alone
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        s1 = run_sweep(spec, tmp, executor="serial", progress=False)
    t_serial = (time.perf_counter() - t0) / n
    # end to end with the local process pool
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        s2 = run_sweep(spec, tmp, executor="local", workers=args.workers, progress=False)
    t_pool = (time.perf_counter() - t0) / n
    if s1.failed or s2.failed:
        raise RuntimeError(f"benchmark runs failed: {s1.failed} (serial), {s2.failed} (pool)")

    rows = [
        {"mode": "naive per-run loop (B=1, recurrent memory)", "runs": len(sample), "s_per_run": t_naive},
        {"mode": "batched, 1 process (seeds stacked, chunk form)", "runs": n, "s_per_run": t_serial},
        {"mode": f"batched, local pool ({args.workers} workers), end to end", "runs": n, "s_per_run": t_pool},
    ]
    for r in rows:
        r["runs_per_s"] = 1.0 / r["s_per_run"]
        r["tokens_per_s"] = T / r["s_per_run"]
        r["speedup_vs_naive"] = t_naive / r["s_per_run"]
    print(
        f"\nworkload: {len(METHODS)} methods x {seeds} seeds = {n} runs, T = {T}, K = V = 16, H = 1, float64\n"
    )
    print("| mode | runs timed | s / run | runs / s | tokens / s | speed-up vs naive |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['runs']} | {r['s_per_run']:.4f} | {r['runs_per_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['speedup_vs_naive']:.1f}x |"
        )
    result = {
        "environment": environment(),
        "workload": {"T": T, "K": 16, "V": 16, "H": 1, "seeds": seeds, "methods": METHODS, "runs": n},
        "workers": args.workers,
        "target": "batched pool >= 20x naive runs/s on 2 cores",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("sweeps_cpu_quick.json" if args.quick else "sweeps_cpu.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
